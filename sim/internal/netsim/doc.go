// Package netsim is an in-memory network of named hosts for the simulator:
// listeners, dials and buffered connections (with deadlines and half-close)
// whose links can be given latency, jitter and bandwidth caps, be paused
// (stall, blackhole, partition) and have their connections reset.
package netsim

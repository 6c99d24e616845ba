// Package contender starts the things the benchmark compares, each in its
// natural topology against the same target server: the direct baseline,
// tether's full path (tether-proxy, relay and agent, TLS on every hop), and
// the peers (remotedialer, chisel, frp, Konnectivity), built from their Go
// modules at pinned versions in the nested modules under bench/peers.
//
// It also holds the roles (see package node) that run tether's components
// and remotedialer's in child processes.
package contender

// Package tunneltest builds in-memory tunnel sessions for tests of the
// packages above the tunnel (the relay's router, the simulator): a relay
// session and an agent session joined by net.Pipe, with real handshakes.
package tunneltest

// Package pathtest holds the whole data path's tests in one process: a
// stand-in API server, the agent (agent.New), the relay (relay.Start) and the
// caller's proxy (proxy.New), each assembled as its binary assembles it, over
// real TLS on loopback. It spans every side, so it belongs to none: it has no
// code but its tests, and nothing imports it.
//
// What the e2e suite shows with the real kubectl and kube-apiserver, these
// tests show in seconds for the protocol's corners (upgrades, renewal, the
// join race, a tunnel carrying another user's request, oversized tokens).
package pathtest

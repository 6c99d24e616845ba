// Package relayapi is the relay's public HTTP API as its clients see it: the
// paths, the JSON bodies of a join and of a cluster's details, where callers
// log in, and DialTunnel, which opens a caller's tunnel through the relay.
//
// It is a contract package: tether-proxy, the agent and the relay's server
// all speak this API, and it is the only piece of the relay the caller's side
// and the agent import. It depends on nothing of the relay's (no store, no
// router, no access policy), so neither a caller's binary nor the agent links
// the relay's server.
package relayapi

// Command sim runs tether's real core (relay, agents, tunnel, client proxies,
// token authentication and impersonation) in one process over an in-memory
// network, injects faults from a seed, records what every client saw, and
// checks invariants afterwards: no answer from the wrong cluster, no
// request under another identity, no silent stall, streams end with their
// tunnel, agents reconnect within a bound, nothing leaks, every byte
// arrives. Run it with `go run ./sim`; `-list` shows the scenarios and
// faults, `-seed N` replays a run.
package main

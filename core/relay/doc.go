// Package relay owns the relay's routing: which agent sessions serve which
// cluster, and opening a caller's stream on one of them. It never parses the
// bytes it carries; it decides only where they go, and answers every failure
// as a Kubernetes Status that kubectl prints.
//
// The router binds sessions to the cluster their Hello named, which the
// session's Authorize step already matched against the agent's certificate;
// the agent checks again that each stream names its own cluster, so a
// routing mistake here is refused there rather than answered by the wrong
// cluster.
package relay

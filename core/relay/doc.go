// Package relay owns the relay's routing: which agent sessions serve which
// cluster, and opening a caller's stream on one of them. It never parses the
// bytes of a caller's tunnel; it decides only where they go, and answers
// every failure as a Kubernetes Status that kubectl prints.
//
// The one exception is the cluster endpoint (ServerConfig.ClusterEndpoint),
// for kubeconfigs with no local tether-proxy: there the relay terminates the
// caller's TLS, refuses Impersonate-* headers, and reverse-proxies each
// request over TLS to one of the cluster's agents, whose certificate it
// verifies as tether-proxy does (clustercert.AgentClientTLS). The agent still
// authenticates the caller's token itself; the relay sees the requests in
// clear, which is that mode's trade-off.
//
// The router binds sessions to the cluster their Hello named, which the
// session's Authorize step already matched against the agent's certificate;
// the agent checks again that each stream names its own cluster, so a
// routing mistake here is refused there rather than answered by the wrong
// cluster.
package relay

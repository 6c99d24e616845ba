// Package mesh owns what relay replicas that share one etcd know of each
// other, and the streams they forward to each other.
//
// Presence: each replica holds an etcd lease (Config.LeaseTTL, kept alive)
// and publishes under it, below the registry's prefix, mesh/replicas/ID
// (its peer address, version and whether it drains) and, for each cluster
// it holds agent sessions of, mesh/routes/CLUSTER/ID (how many). A replica
// that crashes stops renewing its lease, and etcd removes its keys within
// the TTL. Every replica keeps the whole table in memory from one watch,
// so the request path never reads etcd; with etcd unreachable it keeps
// routing from the table it holds.
//
// Forwarding: the replica a caller lands on authenticates the caller and
// checks the cluster's policy itself. When it holds no session of the
// cluster it opens a stream to a replica that does, over one pooled yamux
// session per peer on mutual TLS 1.3 (peer certificates from the relay's
// CA naming tether://relay/ID, which no agent credential or serving
// certificate carries), sends a Request (the cluster, the authenticated
// caller, its token's audiences and expiry) and, once the owner answers
// OK, the caller's bytes, which stay end-to-end TLS between the caller and
// the agent. The owner only splices onto a session of its own: it makes no
// routing decision, so a stream crosses at most one replica-to-replica hop
// and cannot loop. A route whose owner is gone or no longer holds a
// session is tried once more against another owner after the table
// changes (Config.RetryWait), then refused.
//
// The wire format of the replica-to-replica stream is in docs/protocol.md.
package mesh

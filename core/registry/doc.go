// Package registry owns the relay's record of clusters and what lets an agent
// prove which cluster it is: one-time join tokens and per-cluster client
// certificates signed by the relay's own certificate authority.
//
// The life of a cluster:
//
//  1. An operator creates it (CreateCluster) and receives a join token, once.
//     Only the token's SHA-256 is stored; it expires (Config.JoinTokenTTL) and
//     is consumed by its first use.
//  2. The agent trades the token for a credential (Join): it sends a
//     certificate signing request for a key it generated and never sends; the
//     registry signs a client certificate for the cluster the token was made
//     for. The cluster ID comes from the token, never from the request.
//  3. The relay authenticates agent sessions with that certificate
//     (VerifyPeer), which names exactly one cluster; a certificate the
//     registry no longer lists as current for its cluster is refused.
//  4. The agent renews before expiry (Renew), with a session authenticated by
//     its current certificate; the old certificate stays valid until it
//     expires or Config.MaxCredentials newer ones supersede it, so a renewal
//     never cuts a session off.
//  5. Rotate invalidates every certificate of a cluster and issues a new join
//     token; DeleteCluster forgets the cluster, its tokens and credentials.
//
// Cluster IDs are RFC 1123 DNS labels in lower case (package clusterid): no
// dots, slashes, percent signs, upper case or non-ASCII look-alikes, so an ID
// is safe in a path, a header, a certificate and a log line as it is.
//
// State lives in one go.etcd.io/bbolt file, created with mode 0600.
package registry

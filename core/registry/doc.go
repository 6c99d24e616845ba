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
//     for. The cluster ID comes from the token, never from the request. The
//     join endpoint is unauthenticated, so a token that does not exist costs
//     one read and no write (JoinLimiter bounds the reads).
//  3. The relay authenticates agent sessions with that certificate
//     (VerifyPeer), which names exactly one cluster; a certificate the
//     registry no longer lists as current for its cluster is refused.
//  4. The agent renews before expiry (Renew), with a session authenticated by
//     its current certificate. The new certificate replaces the presenting
//     one, which is accepted for Config.RenewalGrace more and never renews
//     again: a retry with the same new key (a lost answer) gets the same
//     credential again; a second renewal with another key means two parties
//     hold the credential, and the whole chain is revoked
//     (ErrCredentialReused), as refresh-token reuse detection does.
//  5. Rotate invalidates every certificate of a cluster and issues a new join
//     token; DeleteCluster forgets the cluster, its tokens and credentials.
//
// Cluster IDs are RFC 1123 DNS labels in lower case (package clusterid): no
// dots, slashes, percent signs, upper case or non-ASCII look-alikes, so an ID
// is safe in a path, a header, a certificate and a log line as it is.
//
// # Stores
//
// State lives behind a small transactional backend (store.go) with two
// implementations. StoreBbolt is one go.etcd.io/bbolt file, created with
// mode 0600, in the format the registry has always used (buckets meta,
// clusters, joinTokens; records in JSON, additive fields only): one relay.
// StoreEtcd keeps the same records under a key prefix in etcd, for several
// relay replicas: every write is one etcd transaction that compares the
// revision of every key it read, so nothing is half-written and a join
// token presented to several replicas at once is consumed by exactly one.
// etcd does not encrypt what it stores, so there the CA's private key is
// sealed with AES-256-GCM under a key-encryption key (Config.Etcd
// KeyEncryptionKeys, with key IDs so it can be rotated); a key that does not
// open it is an error, never a new CA. Migrate moves a registry between the
// two, verified.
//
// # Reads from memory, and the change feed
//
// Every cluster (its credentials and policy) is held in memory: VerifyPeer,
// Cluster and Clusters never wait for the store. The cache follows this
// replica's own writes at once and, on etcd, every other replica's through a
// watch (one round trip; a reload when etcd compacted what the watch
// missed). Changes publishes each change (created, deleted, policy, revoked
// or superseded, issued) so the relay can re-check what it admitted. While
// etcd does not answer, reads keep being served from memory, writes fail at
// once with ErrStoreUnavailable (StoreStatus says so), and what other
// replicas changed meanwhile is applied when the watch resumes.
package registry

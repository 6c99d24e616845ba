// Package etcdsim is an in-memory etcd for the simulator: one shared store
// with etcd's semantics where tether relies on them (a revision per write
// or transaction, ranges at a past revision, transactions comparing
// revisions, watches that resume from a revision, leases whose keys go when
// their TTL lapses on the clock), and a client per relay replica that plugs
// into a *clientv3.Client through its KV, Lease and Watcher interfaces. It
// runs on whatever clock its goroutines see, so in a testing/synctest bubble
// leases expire on virtual time.
//
// A client can be cut from the store (Store.Cut): its requests wait until
// their context ends or the cut heals, its watches deliver nothing and
// resume where they stopped once it heals, and its keep-alives stop, so that
// its leases lapse on the store after their TTL and its keep-alive channels
// close on the client, as a real etcd client partitioned from its cluster
// sees. It keeps every revision (no compaction) and has no members, auth or
// maintenance API.
package etcdsim

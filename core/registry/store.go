package registry

import (
	"context"
	"errors"
)

// ErrStoreUnavailable is wrapped by every write (and every read that must
// reach the store) while the store does not answer: etcd unreachable or
// without a leader. Reads the relay's request path makes (VerifyPeer,
// Cluster) are served from memory meanwhile. The message names the store
// and says what to do; the relay answers 503.
var ErrStoreUnavailable = errors.New("the registry's store is unavailable")

// ErrNoState is returned by Open with Config.MustExist when the store holds
// no relay: no bbolt file at the path, or no CA under the etcd prefix.
var ErrNoState = errors.New("no relay state there")

// bucket is a namespace of keys in a store: a bbolt bucket, an etcd key
// prefix.
type bucket struct {
	name string
	// binaryKeys says the keys are raw bytes (hashes), hex encoded where
	// the store needs text.
	binaryKeys bool
}

var (
	bucketMeta     = bucket{name: "meta"}
	bucketClusters = bucket{name: "clusters"}
	bucketTokens   = bucket{name: "joinTokens", binaryKeys: true}
	buckets        = []bucket{bucketMeta, bucketClusters, bucketTokens}
)

// Keys of bucketMeta.
var (
	keyCACert = []byte("caCert")
	keyCAKey  = []byte("caKey")
	// keyMigrating is set while Migrate copies into a store, and removed
	// once the copy is verified; Open refuses a store that has it.
	keyMigrating = []byte("migrating")
)

// backend is the storage under a Registry: transactions over buckets of
// keys. A write transaction's function may run more than once (etcd retries
// it when another writer changed what it read): it must do nothing but
// read and write through tx and set its own results.
type backend interface {
	// String names the store for messages: "bbolt file X", "etcd at Y".
	String() string
	// view runs fn on a consistent snapshot.
	view(ctx context.Context, fn func(tx) error) error
	// update runs fn in a transaction that commits all its writes or
	// none, and returns what it wrote, with the store's revision of the
	// commit (increasing).
	update(ctx context.Context, fn func(tx) error) (commit, error)
	// clear deletes everything the registry keeps in the store.
	clear(ctx context.Context) error
	// close releases the store.
	close() error
	// writes counts the write transactions committed, for tests.
	writes() int64
}

// tx reads and writes a store inside a transaction. Values returned by get
// and forEach are the caller's to keep.
type tx interface {
	get(b bucket, key []byte) ([]byte, error)
	forEach(b bucket, fn func(key, val []byte) error) error
	put(b bucket, key, val []byte) error
	delete(b bucket, key []byte) error
}

// write is one key a transaction wrote; a nil val is a deletion.
type write struct {
	bucket bucket
	key    string
	val    []byte
}

// commit is what a write transaction changed.
type commit struct {
	rev    int64
	writes []write
}

// recordingTx records what a transaction writes, for the commit.
type recordingTx struct {
	tx
	writes []write
}

func (r *recordingTx) put(b bucket, key, val []byte) error {
	if err := r.tx.put(b, key, val); err != nil {
		return err
	}
	r.record(b, key, val)
	return nil
}

func (r *recordingTx) delete(b bucket, key []byte) error {
	if err := r.tx.delete(b, key); err != nil {
		return err
	}
	r.record(b, key, nil)
	return nil
}

func (r *recordingTx) record(b bucket, key, val []byte) {
	for i, w := range r.writes {
		if w.bucket == b && w.key == string(key) {
			r.writes = append(r.writes[:i], r.writes[i+1:]...)
			break
		}
	}
	r.writes = append(r.writes, write{bucket: b, key: string(key), val: val})
}

package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bberrors "go.etcd.io/bbolt/errors"
)

// boltStore is the registry in one bbolt file: buckets meta, clusters and
// joinTokens, as the registry has always kept them. bbolt serialises
// writers and its file lock keeps other processes out, so this process is
// the file's only writer.
type boltStore struct {
	path string
	db   *bolt.DB
	// written counts commits, for tests. A commit's revision is bbolt's
	// transaction ID, which increases with each write transaction.
	written atomic.Int64
}

func openBolt(path string) (*boltStore, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		if errors.Is(err, bberrors.ErrTimeout) {
			return nil, fmt.Errorf("registry: open %s: %w: another process holds the file (is a relay using it? then stop it, or run the command where that relay's --admin-socket is)", path, err)
		}
		return nil, fmt.Errorf("registry: open %s: %w", path, err)
	}
	s := &boltStore{path: path, db: db}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range buckets {
			if _, err := tx.CreateBucketIfNotExists([]byte(b.name)); err != nil {
				return fmt.Errorf("registry: create bucket %s: %w", b.name, err)
			}
		}
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	return s, nil
}

func (s *boltStore) String() string { return "bbolt file " + s.path }

func (s *boltStore) view(_ context.Context, fn func(tx) error) error {
	return s.db.View(func(btx *bolt.Tx) error { return fn(boltTx{btx}) })
}

func (s *boltStore) update(_ context.Context, fn func(tx) error) (commit, error) {
	var rt *recordingTx
	var rev int64
	err := s.db.Update(func(btx *bolt.Tx) error {
		rt = &recordingTx{tx: boltTx{btx}}
		rev = int64(btx.ID())
		return fn(rt)
	})
	if err != nil {
		return commit{}, err
	}
	s.written.Add(1)
	return commit{rev: rev, writes: rt.writes}, nil
}

func (s *boltStore) clear(context.Context) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range buckets {
			if err := tx.DeleteBucket([]byte(b.name)); err != nil && !errors.Is(err, bberrors.ErrBucketNotFound) {
				return err
			}
			if _, err := tx.CreateBucket([]byte(b.name)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("registry: clear %s: %w", s, err)
	}
	return nil
}

func (s *boltStore) close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("registry: close %s: %w", s.path, err)
	}
	return nil
}

func (s *boltStore) writes() int64 { return s.written.Load() }

type boltTx struct{ tx *bolt.Tx }

func (t boltTx) bucket(b bucket) (*bolt.Bucket, error) {
	bk := t.tx.Bucket([]byte(b.name))
	if bk == nil {
		return nil, fmt.Errorf("registry: bucket %s missing", b.name)
	}
	return bk, nil
}

func (t boltTx) get(b bucket, key []byte) ([]byte, error) {
	bk, err := t.bucket(b)
	if err != nil {
		return nil, err
	}
	return slices.Clone(bk.Get(key)), nil
}

func (t boltTx) forEach(b bucket, fn func(key, val []byte) error) error {
	bk, err := t.bucket(b)
	if err != nil {
		return err
	}
	return bk.ForEach(func(k, v []byte) error { return fn(slices.Clone(k), slices.Clone(v)) })
}

func (t boltTx) put(b bucket, key, val []byte) error {
	bk, err := t.bucket(b)
	if err != nil {
		return err
	}
	if err := bk.Put(key, val); err != nil {
		return fmt.Errorf("registry: store %s: %w", b.name, err)
	}
	return nil
}

func (t boltTx) delete(b bucket, key []byte) error {
	bk, err := t.bucket(b)
	if err != nil {
		return err
	}
	if err := bk.Delete(key); err != nil {
		return fmt.Errorf("registry: delete from %s: %w", b.name, err)
	}
	return nil
}

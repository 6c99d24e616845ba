package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"time"
)

// ErrStoreNotEmpty is wrapped by Migrate when the target already holds a
// registry and MigrateOptions.Overwrite is not set.
var ErrStoreNotEmpty = errors.New("the target store is not empty")

// MigrateOptions tune Migrate.
type MigrateOptions struct {
	// Overwrite lets Migrate replace what the target holds. Without it a
	// target that holds anything is refused.
	Overwrite bool
	// Logger receives what Migrate does. Nil discards.
	Logger *slog.Logger
}

// MigrateReport says what Migrate copied.
type MigrateReport struct {
	// From and To name the stores.
	From, To string
	// Clusters and JoinTokens are the records copied (the CA besides).
	Clusters, JoinTokens int
}

// Migrate copies the registry in from (a stopped relay's store: bbolt
// holds a file lock while its relay runs) into to, with nothing lost: the
// CA (its key sealed again for the target: with to's first key-encryption
// key on etcd, in the clear in a bbolt file), every cluster with its
// credentials and policy, and every join token, still valid. It refuses a
// target that holds anything unless opts.Overwrite; it marks the target
// while it copies (a relay refuses to open a half-copied store), then reads
// everything back and compares it before it removes the mark. from is only
// read.
func Migrate(ctx context.Context, from, to Config, opts MigrateOptions) (MigrateReport, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for _, c := range []*Config{&from, &to} {
		if err := c.Validate(); err != nil {
			return MigrateReport{}, err
		}
		*c = c.withDefaults()
		c.Logger = log
	}
	if from.Store == to.Store && from.Store == StoreBbolt && from.Path == to.Path {
		return MigrateReport{}, errors.New("registry: migrate: the source and the target are the same file")
	}
	src, err := openBackend(from)
	if err != nil {
		return MigrateReport{}, fmt.Errorf("registry: migrate: source: %w", err)
	}
	defer src.close()
	dst, err := openBackend(to)
	if err != nil {
		return MigrateReport{}, fmt.Errorf("registry: migrate: target: %w", err)
	}
	defer dst.close()
	rep := MigrateReport{From: src.String(), To: dst.String()}
	fromReg := &Registry{cfg: from, store: src}
	toReg := &Registry{cfg: to, store: dst}

	// Everything the source holds, at one snapshot.
	data := map[bucket]map[string][]byte{}
	err = src.view(ctx, func(t tx) error {
		for _, b := range buckets {
			data[b] = map[string][]byte{}
			if err := t.forEach(b, func(k, v []byte) error { data[b][string(k)] = v; return nil }); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return rep, fmt.Errorf("registry: migrate: read %s: %w", src, err)
	}
	meta := data[bucketMeta]
	if meta[string(keyMigrating)] != nil {
		return rep, fmt.Errorf("registry: migrate: %s holds a migration that did not finish: it is no source", src)
	}
	if meta[string(keyCACert)] == nil || meta[string(keyCAKey)] == nil {
		return rep, fmt.Errorf("registry: migrate: %s holds no CA: nothing to migrate (is it the relay's --data?)", src)
	}
	keyDER, _, err := fromReg.openCAKey(meta[string(keyCAKey)])
	if err != nil {
		return rep, fmt.Errorf("registry: migrate: %w", err)
	}
	if _, err := loadAuthority(meta[string(keyCACert)], keyDER); err != nil {
		return rep, fmt.Errorf("registry: migrate: %s: %w", src, err)
	}
	for k := range meta {
		if k != string(keyCACert) && k != string(keyCAKey) {
			return rep, fmt.Errorf("registry: migrate: %s holds an unknown record meta/%s: is this tether-relay older than the store?", src, k)
		}
	}
	rep.Clusters, rep.JoinTokens = len(data[bucketClusters]), len(data[bucketTokens])

	// The target: empty, or emptied with Overwrite.
	var found string
	err = dst.view(ctx, func(t tx) error {
		for _, b := range buckets {
			if err := t.forEach(b, func(k, _ []byte) error {
				if found == "" {
					found = b.name + "/" + string(k)
				}
				return nil
			}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return rep, fmt.Errorf("registry: migrate: read %s: %w", dst, err)
	}
	if found != "" {
		if !opts.Overwrite {
			return rep, fmt.Errorf("registry: migrate: %w: %s holds a registry already (e.g. %s); pass --overwrite to replace it, or another prefix", ErrStoreNotEmpty, dst, printable(found))
		}
		if err := dst.clear(ctx); err != nil {
			return rep, fmt.Errorf("registry: migrate: clear %s: %w", dst, err)
		}
		log.Warn("registry: migrate: cleared the target", "store", dst.String())
	}

	mark := []byte(fmt.Sprintf("from %s at %s", src, time.Now().UTC().Format(time.RFC3339)))
	if _, err := dst.update(ctx, func(t tx) error { return t.put(bucketMeta, keyMigrating, mark) }); err != nil {
		return rep, fmt.Errorf("registry: migrate: %w", err)
	}
	// The records in batches small enough for one etcd transaction each;
	// the CA last, with the key sealed for the target.
	type rec struct {
		b   bucket
		k   string
		val []byte
	}
	var recs []rec
	for _, b := range []bucket{bucketTokens, bucketClusters} {
		for k, v := range data[b] {
			recs = append(recs, rec{b, k, v})
		}
	}
	for len(recs) > 0 {
		n := min(len(recs), maxTxnOps/2)
		batch := recs[:n]
		recs = recs[n:]
		if _, err := dst.update(ctx, func(t tx) error {
			for _, r := range batch {
				if err := t.put(r.b, []byte(r.k), r.val); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return rep, fmt.Errorf("registry: migrate: copy into %s: %w (the target is marked as a migration that did not finish; run again with --overwrite)", dst, err)
		}
	}
	if _, err := dst.update(ctx, func(t tx) error {
		if err := t.put(bucketMeta, keyCACert, meta[string(keyCACert)]); err != nil {
			return err
		}
		return toReg.putCAKey(t, keyDER)
	}); err != nil {
		return rep, fmt.Errorf("registry: migrate: copy the CA into %s: %w", dst, err)
	}

	// Read it all back and compare.
	err = dst.view(ctx, func(t tx) error {
		for _, b := range buckets {
			got := map[string][]byte{}
			if err := t.forEach(b, func(k, v []byte) error { got[string(k)] = v; return nil }); err != nil {
				return err
			}
			want := data[b]
			if b == bucketMeta {
				if !bytes.Equal(got[string(keyMigrating)], mark) {
					return errors.New("the migration mark is gone: another process writes the target")
				}
				delete(got, string(keyMigrating))
				der, _, err := toReg.openCAKey(got[string(keyCAKey)])
				if err != nil || !bytes.Equal(der, keyDER) {
					return fmt.Errorf("the CA key read back differs (%v)", err)
				}
				got[string(keyCAKey)] = meta[string(keyCAKey)]
			}
			if len(got) != len(want) {
				return fmt.Errorf("%s: %d records read back, %d copied", b.name, len(got), len(want))
			}
			for k, v := range want {
				if !bytes.Equal(got[k], v) {
					return fmt.Errorf("%s/%s differs when read back", b.name, printable(k))
				}
			}
		}
		return nil
	})
	if err != nil {
		return rep, fmt.Errorf("registry: migrate: verify %s: %w (the target stays marked as a migration that did not finish)", dst, err)
	}
	if _, err := dst.update(ctx, func(t tx) error {
		m, err := t.get(bucketMeta, keyMigrating)
		if err != nil {
			return err
		}
		if !bytes.Equal(m, mark) {
			return errors.New("registry: migrate: the migration mark changed: another process writes the target")
		}
		return t.delete(bucketMeta, keyMigrating)
	}); err != nil {
		return rep, fmt.Errorf("registry: migrate: %w", err)
	}
	log.Info("registry: migrated", "from", rep.From, "to", rep.To, "clusters", rep.Clusters, "joinTokens", rep.JoinTokens)
	return rep, nil
}

func openBackend(cfg Config) (backend, error) {
	if cfg.Store == StoreEtcd {
		return openEtcd(cfg.Etcd, cfg.Logger)
	}
	if cfg.MustExist {
		if _, err := os.Stat(cfg.Path); errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("registry: %s: %w: check the path (the relay's --data), or create a relay with `tether-relay serve` or `tether-relay cluster create`", cfg.Path, ErrNoState)
		}
	}
	return openBolt(cfg.Path)
}

// printable shows a key for a message: a token's hash as hex.
func printable(k string) string {
	for _, r := range k {
		if r < 0x20 || r > 0x7e {
			return fmt.Sprintf("%x", k)
		}
	}
	return k
}

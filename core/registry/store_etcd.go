package registry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tether-k8s/tether/core/internal/wait"
)

// etcdStore is the registry in etcd, one key per record:
// <prefix><bucket>/<key>, a join token's key as the hex of its hash. A
// write transaction reads at one revision, remembers the revision of every
// key it read, and commits with one etcd Txn that compares them: if another
// writer changed any of them, nothing is written and the transaction runs
// again on fresh data. So a join token is consumed exactly once however
// many replicas receive it at the same instant.
type etcdStore struct {
	cfg EtcdConfig
	cli *clientv3.Client
	log *slog.Logger
	// healthy is false from a failure to reach etcd until the next
	// success; while false, writes fail at once.
	healthy atomic.Bool
	// lastErr is the last failure.
	lastErr atomic.Pointer[error]
	written atomic.Int64
	// status receives availability changes (the registry's cache); set
	// before any background work starts.
	status func(error)
}

// maxTxnAttempts bounds how often a conflicted transaction runs again.
const maxTxnAttempts = 16

// maxTxnOps stays under etcd's default --max-txn-ops (128).
const maxTxnOps = 100

func openEtcd(cfg EtcdConfig, log *slog.Logger) (*etcdStore, error) {
	cli := cfg.Client
	if cli == nil {
		var err error
		if cli, err = dialEtcd(cfg); err != nil {
			return nil, err
		}
	}
	s := &etcdStore{cfg: cfg, cli: cli, log: log, status: func(error) {}}
	s.healthy.Store(true)
	// Fail at Open, clearly, when etcd does not answer.
	ctx, cancel := context.WithTimeout(context.Background(), cfg.DialTimeout)
	defer cancel()
	if _, err := cli.Get(ctx, cfg.Prefix, clientv3.WithCountOnly()); err != nil {
		_ = cli.Close()
		return nil, s.wrap("open", err)
	}
	return s, nil
}

// dialEtcd makes the client of cfg's endpoints.
func dialEtcd(cfg EtcdConfig) (*clientv3.Client, error) {
	var tlsCfg *tls.Config
	if strings.HasPrefix(cfg.Endpoints[0], "https://") {
		tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.CAFile != "" {
			pem, err := os.ReadFile(cfg.CAFile)
			if err != nil {
				return nil, fmt.Errorf("registry: etcd CA: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("registry: etcd CA %s holds no PEM certificate", cfg.CAFile)
			}
			tlsCfg.RootCAs = pool
		}
		if cfg.CertFile != "" {
			cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("registry: etcd client certificate: %w", err)
			}
			tlsCfg.Certificates = []tls.Certificate{cert}
		}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.DialTimeout,
		TLS:         tlsCfg,
		// Notice a dead connection within seconds, and reconnect within
		// seconds once etcd is back (gRPC's default backoff grows to 2
		// minutes): this bounds how late a revocation made while this
		// replica was cut off takes effect.
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		PermitWithoutStream:  true,
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second},
			MinConnectTimeout: cfg.DialTimeout,
		})},
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("registry: etcd at %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	return cli, nil
}

func (s *etcdStore) String() string {
	return "etcd at " + strings.Join(s.cfg.Endpoints, ",") + " (prefix " + s.cfg.Prefix + ")"
}

func (s *etcdStore) close() error {
	if err := s.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("registry: close %s: %w", s, err)
	}
	return nil
}

func (s *etcdStore) clear(ctx context.Context) error {
	if err := s.refuseWhileDown("clear"); err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	if _, err := s.cli.Delete(rctx, s.cfg.Prefix, clientv3.WithPrefix()); err != nil {
		return s.wrap("clear", err)
	}
	return nil
}

func (s *etcdStore) writes() int64 { return s.written.Load() }

// key is the etcd key of key in b.
func (s *etcdStore) key(b bucket, key []byte) string {
	if b.binaryKeys {
		return s.bucketPrefix(b) + hex.EncodeToString(key)
	}
	return s.bucketPrefix(b) + string(key)
}

func (s *etcdStore) bucketPrefix(b bucket) string { return s.cfg.Prefix + b.name + "/" }

// unkey is the inverse of key, for a key of b.
func (s *etcdStore) unkey(b bucket, full string) ([]byte, bool) {
	k, ok := strings.CutPrefix(full, s.bucketPrefix(b))
	if !ok {
		return nil, false
	}
	if b.binaryKeys {
		raw, err := hex.DecodeString(k)
		return raw, err == nil
	}
	return []byte(k), true
}

// unavailable reports whether err means etcd could not be reached or has no
// leader, rather than that it refused the request.
func unavailable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, rpctypes.ErrNoLeader) || errors.Is(err, rpctypes.ErrTimeout) ||
		errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail) || errors.Is(err, rpctypes.ErrTimeoutDueToConnectionLost) || errors.Is(err, rpctypes.ErrLeaderChanged) {
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return false
}

// wrap turns an etcd client error into the registry's, recording that
// etcd is unreachable when it is.
func (s *etcdStore) wrap(op string, err error) error {
	if unavailable(err) {
		s.markDown(err)
		return fmt.Errorf("registry: %s: %w: %s did not answer (%v); check that etcd is up and reachable from this relay. Joins, renewals and admin changes are refused until it answers; agents' sessions and callers keep being served from memory",
			op, ErrStoreUnavailable, s, err)
	}
	return fmt.Errorf("registry: %s: %s: %w", op, s, err)
}

func (s *etcdStore) markDown(err error) {
	s.lastErr.Store(&err)
	if s.healthy.Swap(false) {
		s.status(err)
	}
}

func (s *etcdStore) markUp() {
	if !s.healthy.Swap(true) {
		s.status(nil)
	}
}

// refuseWhileDown fails a write at once while etcd is known unreachable.
func (s *etcdStore) refuseWhileDown(op string) error {
	if s.healthy.Load() {
		return nil
	}
	var last error = errors.New("no answer")
	if p := s.lastErr.Load(); p != nil {
		last = *p
	}
	return fmt.Errorf("registry: %s: %w: %s does not answer (%v); check that etcd is up and reachable from this relay. Joins, renewals and admin changes are refused until it answers; agents' sessions and callers keep being served from memory",
		op, ErrStoreUnavailable, s, last)
}

func (s *etcdStore) view(ctx context.Context, fn func(tx) error) error {
	if err := s.refuseWhileDown("read"); err != nil {
		return err
	}
	t := &etcdTx{s: s, ctx: ctx}
	if err := fn(t); err != nil {
		return err
	}
	return nil
}

func (s *etcdStore) update(ctx context.Context, fn func(tx) error) (commit, error) {
	if err := s.refuseWhileDown("write"); err != nil {
		return commit{}, err
	}
	for attempt := 1; ; attempt++ {
		t := &etcdTx{s: s, ctx: ctx, writing: true}
		if err := fn(t); err != nil {
			return commit{}, err
		}
		if len(t.writes) == 0 {
			return commit{rev: t.rev}, nil
		}
		if len(t.writes) > maxTxnOps || len(t.reads)+len(t.ranges) > maxTxnOps {
			return commit{}, fmt.Errorf("registry: a transaction of %d writes and %d reads is more than etcd takes at once", len(t.writes), len(t.reads)+len(t.ranges))
		}
		var cmps []clientv3.Cmp
		for k, rev := range t.reads {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", rev))
		}
		for p := range t.ranges {
			// Nothing under the prefix written since the snapshot
			// (insertions included; a concurrent deletion is not seen,
			// and the registry only ever deletes what it ranged over).
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(p), "<", t.rev+1).WithPrefix())
		}
		ops := make([]clientv3.Op, 0, len(t.writes))
		var ws []write
		for _, w := range t.writes {
			if w.val == nil {
				ops = append(ops, clientv3.OpDelete(w.full))
			} else {
				ops = append(ops, clientv3.OpPut(w.full, string(w.val)))
			}
			ws = append(ws, write{bucket: w.bucket, key: w.key, val: w.val})
		}
		rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
		resp, err := s.cli.Txn(rctx).If(cmps...).Then(ops...).Commit()
		cancel()
		if err != nil {
			return commit{}, s.wrap("write", err)
		}
		s.markUp()
		if resp.Succeeded {
			s.written.Add(1)
			return commit{rev: resp.Header.Revision, writes: ws}, nil
		}
		if attempt == maxTxnAttempts {
			return commit{}, fmt.Errorf("registry: write: %s: %d attempts, each raced by another writer; try again", s, attempt)
		}
		time.Sleep(time.Duration(rand.Int64N(int64(time.Duration(attempt) * 5 * time.Millisecond))))
	}
}

// etcdTx is one transaction: every read at one revision (the first read's),
// writes buffered until commit.
type etcdTx struct {
	s       *etcdStore
	ctx     context.Context
	writing bool
	rev     int64
	reads   map[string]int64
	ranges  map[string]bool
	writes  []etcdWrite
}

type etcdWrite struct {
	bucket bucket
	key    string // the registry's key
	full   string // the etcd key
	val    []byte
}

func (t *etcdTx) range_(full string, prefix bool) (*clientv3.GetResponse, error) {
	opts := []clientv3.OpOption{}
	if prefix {
		opts = append(opts, clientv3.WithPrefix())
	}
	if t.rev != 0 {
		opts = append(opts, clientv3.WithRev(t.rev))
	}
	ctx, cancel := context.WithTimeout(t.ctx, t.s.cfg.RequestTimeout)
	defer cancel()
	resp, err := t.s.cli.Get(ctx, full, opts...)
	if err != nil {
		return nil, t.s.wrap("read", err)
	}
	t.s.markUp()
	if t.rev == 0 {
		t.rev = resp.Header.Revision
	}
	return resp, nil
}

func (t *etcdTx) written(full string) (etcdWrite, bool) {
	for _, w := range t.writes {
		if w.full == full {
			return w, true
		}
	}
	return etcdWrite{}, false
}

func (t *etcdTx) get(b bucket, key []byte) ([]byte, error) {
	full := t.s.key(b, key)
	if w, ok := t.written(full); ok {
		return w.val, nil
	}
	resp, err := t.range_(full, false)
	if err != nil {
		return nil, err
	}
	var rev int64
	var val []byte
	if len(resp.Kvs) == 1 {
		rev, val = resp.Kvs[0].ModRevision, resp.Kvs[0].Value
	}
	if t.writing {
		if t.reads == nil {
			t.reads = map[string]int64{}
		}
		t.reads[full] = rev
	}
	return val, nil
}

func (t *etcdTx) forEach(b bucket, fn func(key, val []byte) error) error {
	prefix := t.s.bucketPrefix(b)
	resp, err := t.range_(prefix, true)
	if err != nil {
		return err
	}
	if t.writing {
		if t.ranges == nil {
			t.ranges = map[string]bool{}
		}
		t.ranges[prefix] = true
	}
	vals := map[string][]byte{}
	for _, kv := range resp.Kvs {
		vals[string(kv.Key)] = kv.Value
	}
	for _, w := range t.writes {
		if w.bucket == b {
			if w.val == nil {
				delete(vals, w.full)
			} else {
				vals[w.full] = w.val
			}
		}
	}
	keys := make([]string, 0, len(vals))
	for k := range vals {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, full := range keys {
		k, ok := t.s.unkey(b, full)
		if !ok {
			continue
		}
		if err := fn(k, vals[full]); err != nil {
			return err
		}
	}
	return nil
}

func (t *etcdTx) put(b bucket, key, val []byte) error { return t.buffer(b, key, val) }
func (t *etcdTx) delete(b bucket, key []byte) error   { return t.buffer(b, key, nil) }
func (t *etcdTx) buffer(b bucket, key, val []byte) error {
	if !t.writing {
		return errors.New("registry: write in a read-only transaction")
	}
	full := t.s.key(b, key)
	for i, w := range t.writes {
		if w.full == full {
			t.writes = append(t.writes[:i], t.writes[i+1:]...)
			break
		}
	}
	t.writes = append(t.writes, etcdWrite{bucket: b, key: string(key), full: full, val: val})
	return nil
}

// snapshot returns every key of b (as the registry names them) and the
// revision it was read at.
func (s *etcdStore) snapshot(ctx context.Context, b bucket) (map[string][]byte, int64, error) {
	t := &etcdTx{s: s, ctx: ctx}
	all := map[string][]byte{}
	err := t.forEach(b, func(k, v []byte) error { all[string(k)] = v; return nil })
	return all, t.rev, err
}

// follow keeps c up to date with b from revision rev on: a watch that
// resumes where it stopped, and a reload when etcd compacted the revisions
// it missed. The watch requires a leader, so a member cut off from its
// peers ends it rather than leave it silent. It returns when ctx ends.
func (s *etcdStore) follow(ctx context.Context, b bucket, rev int64, c *cache) {
	pause := 100 * time.Millisecond
	for ctx.Err() == nil {
		if rev == 0 {
			all, r, err := s.snapshot(ctx, b)
			if err == nil {
				err = c.reset(r, all)
			}
			if err != nil {
				s.log.Warn("registry: reload from etcd failed; retrying", "error", err, "in", pause)
				if !wait.Sleep(ctx, pause) {
					return
				}
				pause = min(2*pause, 5*time.Second)
				continue
			}
			s.log.Info("registry: reloaded the clusters from etcd", "revision", r)
			rev = r
		}
		var delivered bool
		rev, delivered = s.watch(ctx, b, rev, c)
		if delivered {
			pause = 100 * time.Millisecond
		}
		if !wait.Sleep(ctx, pause) {
			return
		}
		pause = min(2*pause, 5*time.Second)
	}
}

// watch follows b from rev+1 until the watch ends, and returns the
// revision to resume from (0: reload) and whether etcd answered at all.
func (s *etcdStore) watch(ctx context.Context, b bucket, rev int64, c *cache) (int64, bool) {
	delivered := false
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for resp := range s.cli.Watch(wctx, s.bucketPrefix(b), clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithProgressNotify()) {
		if resp.CompactRevision != 0 {
			s.log.Warn("registry: etcd compacted revisions this replica had not seen; reloading", "from", rev+1, "compacted", resp.CompactRevision)
			return 0, true
		}
		if err := resp.Err(); err != nil {
			if ctx.Err() == nil {
				s.log.Warn("registry: the etcd watch ended; resuming", "revision", rev, "error", err)
				if unavailable(err) {
					s.markDown(err)
				}
			}
			return rev, delivered
		}
		delivered = true
		s.markUp()
		if len(resp.Events) == 0 {
			rev = max(rev, resp.Header.Revision)
			continue
		}
		// One response's events in order; a transaction's are in one
		// response with one revision.
		var batch []write
		batchRev := resp.Events[0].Kv.ModRevision
		flush := func() {
			if len(batch) > 0 {
				c.apply(batchRev, batch)
				batch = nil
			}
		}
		for _, ev := range resp.Events {
			k, ok := s.unkey(b, string(ev.Kv.Key))
			if !ok {
				continue
			}
			if ev.Kv.ModRevision != batchRev {
				flush()
				batchRev = ev.Kv.ModRevision
			}
			var val []byte
			if ev.Type == clientv3.EventTypePut {
				val = ev.Kv.Value
				if val == nil {
					val = []byte{}
				}
			}
			batch = append(batch, write{bucket: b, key: string(k), val: val})
			rev = max(rev, ev.Kv.ModRevision)
		}
		flush()
	}
	return rev, delivered
}

// checkHealth asks etcd for a linearizable read every HealthInterval, so
// that writes fail at once while it does not answer and resume as soon as
// it does. It returns when ctx ends.
func (s *etcdStore) checkHealth(ctx context.Context) {
	t := time.NewTicker(s.cfg.HealthInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, min(s.cfg.RequestTimeout, s.cfg.HealthInterval))
		_, err := s.cli.Get(rctx, s.key(bucketMeta, keyCACert), clientv3.WithCountOnly())
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err == nil:
			s.markUp()
		case unavailable(err):
			s.markDown(err)
		default:
			s.log.Warn("registry: etcd health check", "error", err)
		}
	}
}

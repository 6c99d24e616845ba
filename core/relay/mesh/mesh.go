package mesh

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tether-k8s/tether/core/clustercert"
	"github.com/tether-k8s/tether/core/clusterid"
	"github.com/tether-k8s/tether/core/internal/wait"
)

// Defaults of Config.
const (
	// DefaultLeaseTTL is how long a replica's keys outlive it: a crashed
	// replica's routes are gone from every table within it (plus one
	// watch round trip).
	DefaultLeaseTTL = 5 * time.Second
	// DefaultRetryWait bounds how long a forward whose route was stale
	// (the owner gone, or holding no session any more) waits for the
	// table to change before its one retry.
	DefaultRetryWait = 2 * time.Second
	// DefaultDialTimeout bounds dialing a peer and its TLS handshake.
	DefaultDialTimeout = 3 * time.Second
	// DefaultOpenTimeout bounds the owner's answer to a Request.
	DefaultOpenTimeout = 15 * time.Second
	// maxRoutesPerTxn is how many route writes go in one etcd transaction:
	// half etcd's default --max-txn-ops (128), so that a cluster run with a
	// lower one still takes them.
	maxRoutesPerTxn = 64
)

// Replica is a relay replica as it publishes itself.
type Replica struct {
	// ID names the replica (its --relay-id); its peer certificate names it
	// too.
	ID string `json:"id"`
	// PeerAddr is where the other replicas reach its peer endpoint
	// (host:port).
	PeerAddr string `json:"peerAddr"`
	// Software is its version, for logs and tether_relay_replicas.
	Software string `json:"software,omitempty"`
	// Draining is set once it shuts down: peers stop choosing it for new
	// streams while it serves the ones it has.
	Draining bool `json:"draining,omitempty"`
}

// Config configures a Mesh.
type Config struct {
	// Client is the etcd the replicas share (the registry's client).
	// Required.
	Client *clientv3.Client
	// Prefix is the registry's etcd key prefix; the mesh keeps its keys
	// under Prefix + "mesh/".
	Prefix string
	// Self is this replica. ID and PeerAddr are required.
	Self Replica
	// LeaseTTL is the TTL of the replica's lease. Zero means
	// DefaultLeaseTTL; at least 2s.
	LeaseTTL time.Duration
	// RetryWait: see DefaultRetryWait. Zero means that.
	RetryWait time.Duration
	// Certificate returns this replica's peer certificate (presented as a
	// client and served to peers). Required.
	Certificate func() (*tls.Certificate, error)
	// Roots is the relay's CA, which signs every replica's peer
	// certificate. Required.
	Roots *x509.CertPool
	// Local returns how many agent sessions of cluster this replica holds:
	// what it publishes as its route. Required.
	Local func(cluster string) int
	// Handle serves a stream a peer forwarded: it opens a stream on one of
	// this replica's own sessions of req.Cluster, answers with Accept or
	// Refuse, and splices until either side ends. It must not forward
	// again. Required for Serve.
	Handle func(ctx context.Context, req *Request, stream net.Conn)
	// Window is the yamux stream window of replica-to-replica sessions
	// (the relay's stream window). Zero means yamux's default.
	Window uint32
	// Dial makes connections to peers. Nil means a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Shuffle spreads forwarded streams over the owners of a cluster. Nil
	// means math/rand/v2's Shuffle; the simulator draws it from its seed,
	// so that a seed replays.
	Shuffle func(n int, swap func(i, j int))
	// Logger receives presence and forwarding events. Nil discards.
	Logger *slog.Logger
}

// Validate reports the first problem with c, naming the field.
func (c *Config) Validate() error {
	switch {
	case c.Client == nil:
		return errors.New("mesh: Config.Client is nil: replicas find each other in etcd (--store etcd)")
	case c.Self.PeerAddr == "":
		return errors.New("mesh: Config.Self.PeerAddr is empty: name where the other replicas reach this one (--peer-advertise host:port)")
	case c.Certificate == nil || c.Roots == nil || c.Local == nil:
		return errors.New("mesh: Config.Certificate, Roots and Local are required")
	case c.LeaseTTL != 0 && c.LeaseTTL < 2*time.Second:
		return fmt.Errorf("mesh: Config.LeaseTTL %s: want at least 2s (or 0, the default %s)", c.LeaseTTL, DefaultLeaseTTL)
	case c.RetryWait < 0:
		return fmt.Errorf("mesh: Config.RetryWait %s must not be negative", c.RetryWait)
	}
	if err := clustercert.ValidateRelayID(c.Self.ID); err != nil {
		return fmt.Errorf("mesh: Config.Self.ID: %w (--relay-id)", err)
	}
	if _, _, err := net.SplitHostPort(c.Self.PeerAddr); err != nil {
		return fmt.Errorf("mesh: Config.Self.PeerAddr %q: want host:port: %w", c.Self.PeerAddr, err)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.LeaseTTL == 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.RetryWait == 0 {
		c.RetryWait = DefaultRetryWait
	}
	if c.Dial == nil {
		c.Dial = (&net.Dialer{}).DialContext
	}
	if c.Shuffle == nil {
		c.Shuffle = rand.Shuffle
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Mesh is this replica's view of the others and its presence among them.
type Mesh struct {
	cfg    Config
	log    *slog.Logger
	base   string // Prefix + "mesh/"
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	self      Replica
	replicas  map[string]Replica        // live replicas, this one too
	routes    map[string]map[string]int // cluster → replica → sessions
	synced    bool                      // the table was read at least once
	changed   chan struct{}             // closed and replaced on each change
	dirty     map[string]bool           // clusters whose route to publish
	selfDirty bool
	kick      chan struct{}

	lease atomic.Int64 // the lease the keys are under now; 0 while none
	pool  peerPool
}

// Start validates cfg, publishes this replica under a new lease, reads the
// table and starts keeping both up to date, until Close.
func Start(ctx context.Context, cfg Config) (*Mesh, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	m := &Mesh{cfg: cfg, log: cfg.Logger, base: cfg.Prefix + "mesh/", self: cfg.Self,
		replicas: map[string]Replica{}, routes: map[string]map[string]int{}, changed: make(chan struct{}),
		dirty: map[string]bool{}, selfDirty: true, kick: make(chan struct{}, 1)}
	m.pool.m = m
	m.ctx, m.cancel = context.WithCancel(context.WithoutCancel(ctx))
	// The first lease and table before Start returns, so that a replica
	// that cannot reach etcd says so at once.
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	lease, err := m.grant(sctx)
	if err != nil {
		m.cancel()
		return nil, err
	}
	rev, err := m.load(sctx)
	if err != nil {
		m.cancel()
		return nil, err
	}
	m.wg.Add(2)
	go func() { defer m.wg.Done(); m.publish(lease) }()
	go func() { defer m.wg.Done(); m.watch(rev) }()
	m.log.Info("mesh: replica published", "relay", cfg.Self.ID, "peer", cfg.Self.PeerAddr, "leaseTTL", cfg.LeaseTTL, "replicas", len(m.Replicas()))
	return m, nil
}

func (m *Mesh) replicaKey(id string) string { return m.base + "replicas/" + id }
func (m *Mesh) routeKey(cluster, id string) string {
	return m.base + "routes/" + cluster + "/" + id
}

// grant takes a new lease and publishes this replica under it.
func (m *Mesh) grant(ctx context.Context) (clientv3.LeaseID, error) {
	l, err := m.cfg.Client.Grant(ctx, int64(m.cfg.LeaseTTL/time.Second))
	if err != nil {
		return 0, fmt.Errorf("mesh: take a lease in etcd: %w", err)
	}
	if err := m.putSelf(ctx, l.ID); err != nil {
		return 0, err
	}
	m.lease.Store(int64(l.ID))
	return l.ID, nil
}

func (m *Mesh) putSelf(ctx context.Context, lease clientv3.LeaseID) error {
	m.mu.Lock()
	self := m.self
	m.selfDirty = false
	m.mu.Unlock()
	b, _ := json.Marshal(self)
	if _, err := m.cfg.Client.Put(ctx, m.replicaKey(self.ID), string(b), clientv3.WithLease(lease)); err != nil {
		m.mu.Lock()
		m.selfDirty = true
		m.mu.Unlock()
		return fmt.Errorf("mesh: publish replica %s in etcd: %w", self.ID, err)
	}
	return nil
}

// Changed says the sessions this replica holds of cluster changed: its
// route is published again (coalesced, in the background).
func (m *Mesh) Changed(cluster string) {
	m.mu.Lock()
	m.dirty[cluster] = true
	m.mu.Unlock()
	m.poke()
}

func (m *Mesh) poke() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// SetDraining marks this replica draining (or not) in etcd: the others stop
// choosing it for new streams.
func (m *Mesh) SetDraining(d bool) {
	m.mu.Lock()
	m.self.Draining, m.selfDirty = d, true
	m.mu.Unlock()
	m.poke()
}

// publish keeps the lease alive and the replica's keys what they should
// be, until Close: a lost lease (etcd was unreachable for longer than the
// TTL) is replaced, and everything published again under the new one.
func (m *Mesh) publish(lease clientv3.LeaseID) {
	published := map[string]int{}
	var ka <-chan *clientv3.LeaseKeepAliveResponse
	backoff := 250 * time.Millisecond
	retry := time.NewTimer(0)
	defer retry.Stop()
	for m.ctx.Err() == nil {
		if lease == 0 {
			ctx, cancel := context.WithTimeout(m.ctx, m.cfg.LeaseTTL)
			l, err := m.grant(ctx)
			cancel()
			if err != nil {
				m.log.Warn("mesh: cannot publish this replica; routing from the table held, retrying", "error", err, "in", backoff)
				if !wait.Sleep(m.ctx, backoff) {
					return
				}
				backoff = min(2*backoff, 5*time.Second)
				continue
			}
			lease, backoff = l, 250*time.Millisecond
			// Everything published under the old lease is published
			// again: the table alone is not enough, since this
			// replica's own watch (or a reload after etcd came back)
			// may already have removed the routes the lapsed lease
			// took with it.
			m.mu.Lock()
			for c := range published {
				m.dirty[c] = true
			}
			for c := range m.localClusters() {
				m.dirty[c] = true
			}
			m.mu.Unlock()
			published = map[string]int{}
			m.log.Info("mesh: replica published again under a new lease", "relay", m.cfg.Self.ID)
		}
		if ka == nil {
			var err error
			if ka, err = m.cfg.Client.KeepAlive(m.ctx, lease); err != nil {
				m.log.Warn("mesh: keep-alive of the lease", "error", err)
				lease, ka = 0, nil
				continue
			}
		}
		if err := m.flush(lease, published); err != nil {
			m.log.Warn("mesh: publishing routes", "error", err)
			retry.Reset(backoff)
		}
		select {
		case <-m.ctx.Done():
		case <-m.kick:
		case <-retry.C:
		case _, ok := <-ka:
			if !ok {
				m.log.Warn("mesh: the lease lapsed (etcd unreachable for longer than its TTL); taking a new one", "relay", m.cfg.Self.ID, "ttl", m.cfg.LeaseTTL)
				lease, ka = 0, nil
				m.lease.Store(0)
			}
		}
	}
}

// localClusters returns the clusters this replica published or marked.
// m.mu is held.
func (m *Mesh) localClusters() map[string]bool {
	out := map[string]bool{}
	for c, rs := range m.routes {
		if _, ok := rs[m.cfg.Self.ID]; ok {
			out[c] = true
		}
	}
	for c := range m.dirty {
		out[c] = true
	}
	return out
}

// flush writes the routes marked dirty and, if it changed, this replica's
// own key.
func (m *Mesh) flush(lease clientv3.LeaseID, published map[string]int) error {
	m.mu.Lock()
	dirty, selfDirty := m.dirty, m.selfDirty
	m.dirty = map[string]bool{}
	m.mu.Unlock()
	var errs []error
	requeue := func(c string) {
		m.mu.Lock()
		m.dirty[c] = true
		m.mu.Unlock()
	}
	if selfDirty {
		ctx, cancel := context.WithTimeout(m.ctx, m.cfg.LeaseTTL)
		errs = append(errs, m.putSelf(ctx, lease))
		cancel()
	}
	// The routes that changed, written maxRoutesPerTxn to a transaction:
	// a replica that takes a new lease (or thousands of agents joining)
	// republishes thousands of routes, and one round trip each would leave
	// them missing from the other replicas' tables for seconds.
	type change struct {
		cluster string
		n       int
	}
	var changes []change
	for c := range dirty {
		n := m.cfg.Local(c)
		if old, ok := published[c]; ok && old == n || !ok && n == 0 {
			continue
		}
		changes = append(changes, change{c, n})
	}
	for len(changes) > 0 {
		batch := changes[:min(len(changes), maxRoutesPerTxn)]
		changes = changes[len(batch):]
		ops := make([]clientv3.Op, len(batch))
		for i, ch := range batch {
			if ch.n > 0 {
				ops[i] = clientv3.OpPut(m.routeKey(ch.cluster, m.cfg.Self.ID), strconv.Itoa(ch.n), clientv3.WithLease(lease))
			} else {
				ops[i] = clientv3.OpDelete(m.routeKey(ch.cluster, m.cfg.Self.ID))
			}
		}
		ctx, cancel := context.WithTimeout(m.ctx, m.cfg.LeaseTTL)
		_, err := m.cfg.Client.Txn(ctx).Then(ops...).Commit()
		cancel()
		for _, ch := range batch {
			switch {
			case err != nil:
				requeue(ch.cluster)
			case ch.n > 0:
				published[ch.cluster] = ch.n
			default:
				delete(published, ch.cluster)
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("mesh: routes of %d clusters (%s first): %w", len(batch), batch[0].cluster, err))
		}
	}
	return errors.Join(errs...)
}

// load reads the whole table and returns its revision.
func (m *Mesh) load(ctx context.Context) (int64, error) {
	resp, err := m.cfg.Client.Get(ctx, m.base, clientv3.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("mesh: read the replicas and routes from etcd: %w", err)
	}
	m.mu.Lock()
	m.replicas, m.routes = map[string]Replica{}, map[string]map[string]int{}
	for _, kv := range resp.Kvs {
		m.applyLocked(string(kv.Key), kv.Value, false)
	}
	m.synced = true
	m.signalLocked()
	m.mu.Unlock()
	return resp.Header.Revision, nil
}

// watch keeps the table up to date from etcd's changes, reading it whole
// again after the watch failed (etcd unreachable, compaction). Meanwhile
// the table held keeps serving.
func (m *Mesh) watch(rev int64) {
	backoff := 250 * time.Millisecond
	for m.ctx.Err() == nil {
		if rev == 0 {
			ctx, cancel := context.WithTimeout(m.ctx, 5*time.Second)
			r, err := m.load(ctx)
			cancel()
			if err != nil {
				m.log.Warn("mesh: cannot read the route table; routing from the one held", "error", err, "in", backoff)
				if !wait.Sleep(m.ctx, backoff) {
					return
				}
				backoff = min(2*backoff, 5*time.Second)
				continue
			}
			rev, backoff = r, 250*time.Millisecond
		}
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(m.ctx))
		for wr := range m.cfg.Client.Watch(wctx, m.base, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
			if err := wr.Err(); err != nil {
				if m.ctx.Err() == nil {
					m.log.Warn("mesh: route table watch ended; reading the table again", "error", err)
				}
				break
			}
			m.mu.Lock()
			for _, ev := range wr.Events {
				m.applyLocked(string(ev.Kv.Key), ev.Kv.Value, ev.Type == clientv3.EventTypeDelete)
			}
			m.signalLocked()
			m.mu.Unlock()
		}
		cancel()
		// Read the whole table again: what changed while no watch ran
		// (deleted keys included) is in no event.
		rev = 0
	}
}

// applyLocked applies one key of the table.
func (m *Mesh) applyLocked(key string, val []byte, deleted bool) {
	rest, ok := strings.CutPrefix(key, m.base)
	if !ok {
		return
	}
	if id, ok := strings.CutPrefix(rest, "replicas/"); ok {
		if deleted {
			delete(m.replicas, id)
			return
		}
		var r Replica
		if err := json.Unmarshal(val, &r); err != nil || r.ID != id {
			m.log.Warn("mesh: ignoring a malformed replica key", "key", key)
			return
		}
		m.replicas[id] = r
		return
	}
	if route, ok := strings.CutPrefix(rest, "routes/"); ok {
		cluster, id, ok := strings.Cut(route, "/")
		if !ok || clusterid.Validate(cluster) != nil {
			return
		}
		if deleted {
			if rs := m.routes[cluster]; rs != nil {
				delete(rs, id)
				if len(rs) == 0 {
					delete(m.routes, cluster)
				}
			}
			return
		}
		n, err := strconv.Atoi(string(val))
		if err != nil || n <= 0 {
			return
		}
		if m.routes[cluster] == nil {
			m.routes[cluster] = map[string]int{}
		}
		m.routes[cluster][id] = n
	}
}

func (m *Mesh) signalLocked() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// Replicas returns the live replicas (this one too), sorted by ID.
func (m *Mesh) Replicas() []Replica {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Replica, 0, len(m.replicas))
	for _, r := range m.replicas {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b Replica) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Others returns how many other live replicas do not drain: where an
// agent's second session may go.
func (m *Mesh) Others() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for id, r := range m.replicas {
		if id != m.cfg.Self.ID && !r.Draining {
			n++
		}
	}
	return n
}

// Sessions returns how many sessions of cluster the other live replicas
// hold, as they published them.
func (m *Mesh) Sessions(cluster string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for id, s := range m.routes[cluster] {
		if _, live := m.replicas[id]; live && id != m.cfg.Self.ID {
			n += s
		}
	}
	return n
}

// owners returns the other live replicas holding sessions of cluster,
// except those in skip: those not draining first, each group shuffled so
// that streams spread over them. It also returns the channel closed at the
// table's next change.
func (m *Mesh) owners(cluster string, skip []string) ([]Replica, <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var ready, draining []Replica
	for id := range m.routes[cluster] {
		r, live := m.replicas[id]
		if !live || id == m.cfg.Self.ID || slices.Contains(skip, id) {
			continue
		}
		if r.Draining {
			draining = append(draining, r)
		} else {
			ready = append(ready, r)
		}
	}
	// In ID order first, so that a seeded Shuffle draws the same order.
	byID := func(a, b Replica) int { return strings.Compare(a.ID, b.ID) }
	slices.SortFunc(ready, byID)
	slices.SortFunc(draining, byID)
	m.cfg.Shuffle(len(ready), func(i, j int) { ready[i], ready[j] = ready[j], ready[i] })
	m.cfg.Shuffle(len(draining), func(i, j int) { draining[i], draining[j] = draining[j], draining[i] })
	return append(ready, draining...), m.changed
}

// Close deletes this replica's keys, revokes its lease, ends its peer
// sessions and waits for its goroutines.
func (m *Mesh) Close() error {
	m.cancel()
	m.wg.Wait()
	m.pool.close()
	// Revoking the lease deletes every key published under it at once.
	if l := clientv3.LeaseID(m.lease.Load()); l != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		if _, err := m.cfg.Client.Revoke(ctx, l); err != nil {
			m.log.Warn("mesh: lease not revoked; this replica's keys go when it lapses", "ttl", m.cfg.LeaseTTL, "error", err)
		}
	}
	m.log.Info("mesh: replica withdrawn", "relay", m.cfg.Self.ID)
	return nil
}

package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/tether-k8s/tether/core/policy"
)

// ChangeKind says what changed in a cluster.
type ChangeKind string

// The kinds of Change.
const (
	// ChangeCreated: a cluster was created.
	ChangeCreated ChangeKind = "created"
	// ChangeDeleted: a cluster was deleted; every credential of it is
	// refused from now on.
	ChangeDeleted ChangeKind = "deleted"
	// ChangePolicy: the cluster's access policy changed; re-check the
	// callers of its open tunnels.
	ChangePolicy ChangeKind = "policy"
	// ChangeRevoked: certificates VerifyPeer accepted are revoked (rotate,
	// a stolen credential's chain, dropped by a newer join) or superseded
	// by a renewal (accepted for Config.RenewalGrace more); Change.Serials
	// names them. Re-check the sessions of the cluster with VerifyPeerUntil.
	ChangeRevoked ChangeKind = "revoked"
	// ChangeIssued: a credential was issued (a join or a renewal).
	ChangeIssued ChangeKind = "issued"
	// ChangeResync: the subscriber fell too far behind and changes were
	// merged; re-check every cluster.
	ChangeResync ChangeKind = "resync"
)

// Change is one change to the registry, as a replica learns it: from its
// own write at once, from another replica's within one watch round trip.
type Change struct {
	// Cluster is the cluster that changed (empty for ChangeResync).
	Cluster string
	// Kind says what changed.
	Kind ChangeKind
	// Serials are the certificates revoked or superseded (ChangeRevoked)
	// or issued (ChangeIssued).
	Serials []string
	// Revision is the store's revision of the change.
	Revision int64
	// At is when this replica learnt of it.
	At time.Time
}

// maxPending bounds the changes a subscriber may leave unread; beyond it
// they are replaced by one ChangeResync.
const maxPending = 4096

// cache holds every cluster in memory, with the store revision of each
// key (deleted ones included), and fans changes out to subscribers.
type cache struct {
	log *slog.Logger

	mu       sync.RWMutex
	clusters map[string]Cluster
	revs     map[string]int64
	subs     map[*subscriber]struct{}
	// rev is the newest revision applied.
	rev     int64
	closed  bool
	closing chan struct{}
	// status is the store's state as the watch and health checks see it.
	status StoreStatus
}

func newCache(log *slog.Logger) *cache {
	return &cache{log: log, clusters: map[string]Cluster{}, revs: map[string]int64{}, subs: map[*subscriber]struct{}{},
		closing: make(chan struct{}), status: StoreStatus{Available: true}}
}

// get returns a copy of cluster id.
func (c *cache) get(id string) (Cluster, bool) {
	c.mu.RLock()
	cl, ok := c.clusters[id]
	c.mu.RUnlock()
	return cloneCluster(cl), ok
}

// all returns a copy of every cluster, by ID.
func (c *cache) all() []Cluster {
	c.mu.RLock()
	out := make([]Cluster, 0, len(c.clusters))
	for _, cl := range c.clusters {
		out = append(out, cloneCluster(cl))
	}
	c.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func cloneCluster(c Cluster) Cluster {
	c.Credentials = slices.Clone(c.Credentials)
	c.Policy = policy.Policy{Users: slices.Clone(c.Policy.Users), Groups: slices.Clone(c.Policy.Groups),
		Rules: slices.Clone(c.Policy.Rules), Audiences: slices.Clone(c.Policy.Audiences)}
	return c
}

// reset replaces the cache with all (every cluster, as stored, at rev) and
// announces what differs from before: after a reload the watch could not
// resume.
func (c *cache) reset(rev int64, all map[string][]byte) error {
	decoded := make(map[string]Cluster, len(all))
	for id, raw := range all {
		var cl Cluster
		if err := json.Unmarshal(raw, &cl); err != nil {
			return fmt.Errorf("registry: decode cluster %s: %w", id, err)
		}
		decoded[id] = cl
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var changes []Change
	for id, old := range c.clusters {
		if _, ok := decoded[id]; !ok {
			changes = append(changes, diff(id, &old, nil, rev)...)
		}
	}
	for id, cl := range decoded {
		var old *Cluster
		if o, ok := c.clusters[id]; ok {
			old = &o
		}
		changes = append(changes, diff(id, old, &cl, rev)...)
	}
	c.clusters = decoded
	c.revs = make(map[string]int64, len(decoded))
	for id := range decoded {
		c.revs[id] = rev
	}
	c.rev = max(c.rev, rev)
	c.publishLocked(changes)
	return nil
}

// commit applies a write transaction's writes to the clusters bucket.
func (c *cache) commit(cm commit) {
	var ws []write
	for _, w := range cm.writes {
		if w.bucket == bucketClusters {
			ws = append(ws, w)
		}
	}
	c.apply(cm.rev, ws)
}

// apply applies writes at rev (keys of the clusters bucket), each only if
// it is newer than what the cache holds for its key, and announces the
// changes.
func (c *cache) apply(rev int64, ws []write) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var changes []Change
	for _, w := range ws {
		if rev <= c.revs[w.key] {
			continue
		}
		var next *Cluster
		if w.val != nil {
			var cl Cluster
			if err := json.Unmarshal(w.val, &cl); err != nil {
				// Keep what is known rather than forget the cluster:
				// fail closed would drop a cluster, fail open would keep a
				// revoked credential; log it loudly.
				c.log.Error("registry: a cluster record in the store does not decode; keeping the previous one", "cluster", w.key, "error", err)
				continue
			}
			next = &cl
		}
		var old *Cluster
		if o, ok := c.clusters[w.key]; ok {
			old = &o
		}
		changes = append(changes, diff(w.key, old, next, rev)...)
		c.revs[w.key] = rev
		c.rev = max(c.rev, rev)
		if next == nil {
			delete(c.clusters, w.key)
		} else {
			c.clusters[w.key] = *next
		}
	}
	c.publishLocked(changes)
}

// diff says what changed from old to next (nil: absent).
func diff(id string, old, next *Cluster, rev int64) []Change {
	now := time.Now()
	ch := func(k ChangeKind, serials []string) Change {
		return Change{Cluster: id, Kind: k, Serials: serials, Revision: rev, At: now}
	}
	switch {
	case old == nil && next == nil:
		return nil
	case next == nil:
		return []Change{ch(ChangeDeleted, nil)}
	}
	var out []Change
	var before []CredentialInfo
	if old == nil {
		out = append(out, ch(ChangeCreated, nil))
	} else {
		before = old.Credentials
		if !policyEqual(old.Policy, next.Policy) {
			out = append(out, ch(ChangePolicy, nil))
		}
	}
	var revoked, issued []string
	for _, b := range before {
		i := slices.IndexFunc(next.Credentials, func(n CredentialInfo) bool { return n.Serial == b.Serial })
		if i < 0 || (b.Current() && !next.Credentials[i].Current()) {
			revoked = append(revoked, b.Serial)
		}
	}
	for _, n := range next.Credentials {
		if !slices.ContainsFunc(before, func(b CredentialInfo) bool { return b.Serial == n.Serial }) {
			issued = append(issued, n.Serial)
		}
	}
	if len(revoked) > 0 {
		out = append(out, ch(ChangeRevoked, revoked))
	}
	if len(issued) > 0 {
		out = append(out, ch(ChangeIssued, issued))
	}
	return out
}

func policyEqual(a, b policy.Policy) bool {
	return slices.Equal(a.Users, b.Users) && slices.Equal(a.Groups, b.Groups) && slices.Equal(a.Rules, b.Rules) && slices.Equal(a.Audiences, b.Audiences)
}

// subscriber is one Changes channel, fed by its own goroutine from a
// queue, so a slow reader never blocks the registry.
type subscriber struct {
	mu      sync.Mutex
	pending []Change
	// gen counts the times pending was replaced by a ChangeResync.
	gen  uint64
	wake chan struct{}
}

func (c *cache) publishLocked(changes []Change) {
	if len(changes) == 0 {
		return
	}
	for _, ch := range changes {
		c.log.Debug("registry: change", "cluster", ch.Cluster, "kind", ch.Kind, "serials", ch.Serials, "revision", ch.Revision)
	}
	for s := range c.subs {
		s.mu.Lock()
		s.pending = append(s.pending, changes...)
		if len(s.pending) > maxPending {
			s.pending = []Change{{Kind: ChangeResync, Revision: changes[len(changes)-1].Revision, At: time.Now()}}
			s.gen++
		}
		s.mu.Unlock()
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// Changes returns a channel of every change to the registry from now on,
// in order: this replica's own writes at once, other replicas' (on etcd)
// as the watch delivers them, and, after the watch had to reload the
// registry (etcd compacted the revisions it missed), what the reload
// found different. The channel closes when ctx ends or the registry
// closes. A subscriber that falls more than 4096 changes behind gets one
// ChangeResync in their place.
func (r *Registry) Changes(ctx context.Context) <-chan Change {
	out := make(chan Change)
	s := &subscriber{wake: make(chan struct{}, 1)}
	c := r.cache
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		close(out)
		return out
	}
	c.subs[s] = struct{}{}
	// Under the lock: Close marks the cache closed under it before it
	// waits for the group.
	r.wg.Add(1)
	c.mu.Unlock()
	go func() {
		defer r.wg.Done()
		defer close(out)
		defer func() { c.mu.Lock(); delete(c.subs, s); c.mu.Unlock() }()
		for {
			s.mu.Lock()
			next, ok, gen := Change{}, len(s.pending) > 0, s.gen
			if ok {
				next = s.pending[0]
			}
			s.mu.Unlock()
			if !ok {
				select {
				case <-s.wake:
					continue
				case <-ctx.Done():
					return
				case <-c.closing:
					return
				}
			}
			select {
			case out <- next:
				s.mu.Lock()
				if s.gen == gen && len(s.pending) > 0 {
					s.pending = s.pending[1:]
				}
				s.mu.Unlock()
			case <-s.wake:
			case <-ctx.Done():
				return
			case <-c.closing:
				return
			}
		}
	}()
	return out
}

func (c *cache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.closed = true
	close(c.closing)
}

// StoreStatus is the registry's store as this replica sees it.
type StoreStatus struct {
	// Store names the store ("etcd at ...").
	Store string
	// Available is false while the store does not answer: writes fail
	// with ErrStoreUnavailable, reads are served from memory.
	Available bool
	// Since is when Available last changed.
	Since time.Time
	// Err is the last failure, while unavailable.
	Err error
	// Revision is the newest store revision this replica has applied.
	Revision int64
}

// setStatus records the store's availability, logging each change.
func (c *cache) setStatus(store string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	avail := err == nil
	if avail != c.status.Available || c.status.Since.IsZero() {
		if avail {
			c.log.Info("registry: the store answers again; writes resume", "store", store)
		} else {
			c.log.Error("registry: the store does not answer; serving reads from memory, refusing writes", "store", store, "error", err)
		}
		c.status.Since = time.Now()
	}
	c.status.Store, c.status.Available, c.status.Err = store, avail, err
}

// StoreStatus returns the store's state as this replica sees it: for logs,
// metrics and readiness detail.
func (r *Registry) StoreStatus() StoreStatus {
	c := r.cache
	c.mu.RLock()
	st := c.status
	st.Revision = c.rev
	c.mu.RUnlock()
	st.Store = r.store.String()
	return st
}

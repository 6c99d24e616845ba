package relay

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tether-k8s/tether/core/identity"
	"github.com/tether-k8s/tether/core/kstatus"
	"github.com/tether-k8s/tether/core/tunnel"
)

// Defaults of RouterConfig's limits.
const (
	// DefaultMaxStreamsPerCluster bounds the streams open to one cluster.
	DefaultMaxStreamsPerCluster = 1024
	// DefaultStreamMemory bounds what the relay may have to hold in its
	// streams' receive buffers: with the default stream window (4 MiB) it
	// allows 1,024 streams in all.
	DefaultStreamMemory = 4 << 30
	// DefaultMaxStreamsPerCaller bounds the streams one caller (one
	// authenticated user name) holds open through the relay, to all
	// clusters together. It is half of what the relay opens in all with
	// the defaults (DefaultStreamMemory / tunnel.DefaultStreamWindow =
	// 1,024), so that no one caller can take every stream and leave the
	// others 429s. And it is well above what one kubectl user holds:
	// tether-proxy keeps at most 256 idle tunnels per token
	// (--max-idle-tunnels), each holding a stream, and its pool only grows
	// to the caller's peak of concurrent requests; 512 leaves 256 more for
	// the watches, logs -f and exec sessions in use at that peak.
	DefaultMaxStreamsPerCaller = 512
	// DefaultMaxSessionsPerCredential bounds the sessions one agent
	// credential holds: an agent keeps 2 (at most tunnel.MaxSessions), and
	// agent replicas that share a credential Secret share the cap.
	DefaultMaxSessionsPerCredential = 16
	// DefaultMaxSessionsPerCluster bounds the sessions one cluster holds.
	DefaultMaxSessionsPerCluster = 64
	// DefaultSupersededGrace is how long a session whose credential is no
	// longer current (renewed away) keeps serving after the relay told it
	// to move: long enough for the agent to open its replacement.
	DefaultSupersededGrace = 30 * time.Second
)

// ErrTooManyStreams is returned by Open when the caller, the cluster, or
// the relay has its maximum of open streams.
var ErrTooManyStreams = errors.New("relay: too many open streams")

// ErrTooManySessions is returned by Add and CanAdd when the session's
// credential or cluster holds its maximum of sessions.
var ErrTooManySessions = errors.New("relay: too many agent sessions")

// NotConnectedError is returned by Open when no agent of the cluster holds a
// session.
type NotConnectedError struct {
	Cluster string
	// LastSeen is when the cluster's last session ended; zero if no agent of
	// it ever connected to this relay.
	LastSeen time.Time
	// Why, when set, says why the other replicas could not serve it
	// either (their routes were stale).
	Why error
	// Replicas is set when the relay is one replica of several: then no
	// replica holds a session of the cluster.
	Replicas bool
}

func (e *NotConnectedError) Error() string {
	var msg string
	switch {
	case e.Replicas && e.LastSeen.IsZero():
		msg = fmt.Sprintf("relay: cluster %s is not connected: no relay replica holds a session of its agent", e.Cluster)
	case e.LastSeen.IsZero():
		msg = fmt.Sprintf("relay: cluster %s is not connected: no agent of it has connected to this relay", e.Cluster)
	case e.Replicas:
		msg = fmt.Sprintf("relay: cluster %s is not connected: no relay replica holds a session of its agent, last seen on this one %s (%s ago)", e.Cluster,
			e.LastSeen.UTC().Format(time.RFC3339), time.Since(e.LastSeen).Round(time.Second))
	default:
		msg = fmt.Sprintf("relay: cluster %s is not connected: its agent was last seen %s (%s ago)", e.Cluster,
			e.LastSeen.UTC().Format(time.RFC3339), time.Since(e.LastSeen).Round(time.Second))
	}
	if e.Why != nil {
		msg += fmt.Sprintf(" (%v)", e.Why)
	}
	return msg
}

// RouterConfig configures a Router.
type RouterConfig struct {
	// MaxStreamsPerCluster bounds the streams open to one cluster at once.
	// Zero means DefaultMaxStreamsPerCluster.
	MaxStreamsPerCluster int
	// MaxStreamsPerCaller bounds the streams one caller holds open at once,
	// to all clusters together. A caller is the Open.User the relay
	// authenticated (never its token, so a refreshed token shares the
	// budget of the one before). Zero means DefaultMaxStreamsPerCaller.
	MaxStreamsPerCaller int
	// StreamWindow is the yamux stream window of the relay's agent
	// sessions (the Server uses it): the most an agent may send on a
	// stream before the relay read it, so the most the relay holds for a
	// stream whose caller reads slowly. Zero means
	// tunnel.DefaultStreamWindow; tunnel.ValidateStreamWindow says what is
	// accepted.
	StreamWindow uint32
	// StreamMemory bounds what all streams together may make the relay
	// hold: the router opens at most StreamMemory / StreamWindow streams
	// in all. Zero means DefaultStreamMemory.
	StreamMemory int64
	// MaxSessionsPerCredential bounds the sessions one agent credential
	// (one certificate) holds at once. Zero means
	// DefaultMaxSessionsPerCredential.
	MaxSessionsPerCredential int
	// MaxSessionsPerCluster bounds the sessions one cluster's agents hold
	// at once. Zero means DefaultMaxSessionsPerCluster.
	MaxSessionsPerCluster int
	// SupersededGrace is how long, at most, a session whose credential a
	// renewal superseded serves after GoAway, before the relay ends it (and
	// never past the end of the credential's own grace). Zero means
	// DefaultSupersededGrace.
	SupersededGrace time.Duration
	// Verify checks a session's credential against the relay's registry:
	// until when it holds if nothing changes (its expiry, or the end of its
	// grace once a renewal superseded it), or why it no longer does
	// (registry.VerifyPeerUntil). Nil: a credential holds until its
	// NotAfter (routers without a registry, in tests).
	Verify func(*x509.Certificate) (until time.Time, err error)
	// Remote reaches the agents whose sessions other replicas hold (the
	// replicas' mesh). Nil: this relay alone.
	Remote Remote
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
	// Logger receives session arrivals and departures, and the streams
	// refused at a caller's cap (user and cluster, never a token). Nil
	// discards.
	Logger *slog.Logger
}

// Validate reports the first problem with c, naming the field.
func (c *RouterConfig) Validate() error {
	switch {
	case c.MaxStreamsPerCluster < 0:
		return fmt.Errorf("relay: RouterConfig.MaxStreamsPerCluster %d: want 0 (the default, %d) or more", c.MaxStreamsPerCluster, DefaultMaxStreamsPerCluster)
	case c.MaxStreamsPerCaller < 0:
		return fmt.Errorf("relay: RouterConfig.MaxStreamsPerCaller %d: want 0 (the default, %d) or more", c.MaxStreamsPerCaller, DefaultMaxStreamsPerCaller)
	case tunnel.ValidateStreamWindow(uint64(c.StreamWindow)) != nil:
		return fmt.Errorf("relay: RouterConfig.StreamWindow: %w", tunnel.ValidateStreamWindow(uint64(c.StreamWindow)))
	case c.MaxSessionsPerCredential < 0 || c.MaxSessionsPerCluster < 0:
		return fmt.Errorf("relay: RouterConfig.MaxSessionsPerCredential (%d) and MaxSessionsPerCluster (%d): want 0 (the defaults, %d and %d) or more",
			c.MaxSessionsPerCredential, c.MaxSessionsPerCluster, DefaultMaxSessionsPerCredential, DefaultMaxSessionsPerCluster)
	case c.SupersededGrace < 0:
		return fmt.Errorf("relay: RouterConfig.SupersededGrace %s must not be negative", c.SupersededGrace)
	case c.StreamMemory < 0:
		return fmt.Errorf("relay: RouterConfig.StreamMemory %d: want 0 (the default) or more", c.StreamMemory)
	}
	d := c.withDefaults()
	if d.StreamMemory < int64(d.StreamWindow) {
		return fmt.Errorf("relay: RouterConfig.StreamMemory %d is less than one stream window (%d): no stream could open", d.StreamMemory, d.StreamWindow)
	}
	return nil
}

// withDefaults returns c with its zero fields set to their defaults.
func (c RouterConfig) withDefaults() RouterConfig {
	if c.MaxStreamsPerCluster == 0 {
		c.MaxStreamsPerCluster = DefaultMaxStreamsPerCluster
	}
	if c.MaxStreamsPerCaller == 0 {
		c.MaxStreamsPerCaller = DefaultMaxStreamsPerCaller
	}
	if c.StreamWindow == 0 {
		c.StreamWindow = tunnel.DefaultStreamWindow
	}
	if c.StreamMemory == 0 {
		c.StreamMemory = DefaultStreamMemory
	}
	if c.MaxSessionsPerCredential == 0 {
		c.MaxSessionsPerCredential = DefaultMaxSessionsPerCredential
	}
	if c.MaxSessionsPerCluster == 0 {
		c.MaxSessionsPerCluster = DefaultMaxSessionsPerCluster
	}
	if c.SupersededGrace == 0 {
		c.SupersededGrace = DefaultSupersededGrace
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Remote is what a Router needs of the other replicas: to forward a stream
// to one that holds a session of a cluster, how many sessions they hold,
// and to hear when this replica's sessions of a cluster changed (so that it
// publishes its route).
type Remote interface {
	// Forward opens a stream for o on another replica's session of
	// o.Cluster. With none it returns an error wrapping
	// ErrNoRemoteSession; a refusal there comes back as a
	// *ForwardRefusedError.
	Forward(ctx context.Context, o *tunnel.Open, owner StreamOwner) (net.Conn, error)
	// Sessions returns how many sessions of cluster the other replicas
	// hold.
	Sessions(cluster string) int
	// Changed says this replica's sessions of cluster changed.
	Changed(cluster string)
}

// ErrNoRemoteSession is wrapped by Remote.Forward when no other replica
// holds a session of the cluster.
var ErrNoRemoteSession = errors.New("relay: no other replica holds a session of the cluster")

// ForwardRefusedError is another replica's refusal of a forwarded stream,
// as that replica would have answered the caller.
type ForwardRefusedError struct {
	Replica string
	Code    int
	Reason  string
	Message string
}

func (e *ForwardRefusedError) Error() string { return e.Message }

// Router maps clusters to their agents' live sessions.
type Router struct {
	cfg        RouterConfig
	maxStreams int // StreamMemory / StreamWindow
	log        *slog.Logger
	mu         sync.Mutex
	streams    int // open in all
	clusters   map[string]*cluster
	// callers counts the streams open per Open.User; a caller's entry
	// goes when its count is back to zero.
	callers map[string]int
	// creds are the credentials sessions presented, and perCred counts
	// the sessions per credential (cluster and serial).
	creds   map[*tunnel.RelaySession]*sessionCred
	perCred map[string]int
	// reserved counts the sessions admitted (Reserve) and not yet routed,
	// per cluster and per credential: they count against the caps.
	reservedCluster map[string]int
	reservedCred    map[string]int
	closed          bool
	// moving owns the goroutines that tell sessions on a superseded
	// credential to move, then end them; Close waits for them.
	moving sync.WaitGroup
	// metrics, once NewMetrics set it, times stream opens and lives.
	metrics atomic.Pointer[Metrics]
}

// StreamOwner is whom a stream is for: the caller the relay authenticated
// and admitted. The router ends the stream when the caller is no longer
// admitted (Recheck) or when the token that opened it expires.
type StreamOwner struct {
	// Identity is the caller, as the relay's authenticator mapped it.
	Identity identity.Identity
	// Audiences are the audiences of the caller's token.
	Audiences []string
	// Expires is when the token that opened the stream expires. Zero:
	// never (a test's stand-in authenticator).
	Expires time.Time
}

// openStream is what the router keeps of an open stream.
type openStream struct {
	owner  StreamOwner
	expiry *time.Timer // nil without Expires
}

// Cut is a stream Recheck ended, and why.
type Cut struct {
	Owner StreamOwner
	Why   error
}

// sessionCred is what the router keeps of a session's credential.
type sessionCred struct {
	cert   *x509.Certificate
	key    string      // cluster and serial: perCred's key
	expiry *time.Timer // checks the credential again when it stops holding
	moving bool        // the session was told to move (GoAway)
}

func credKey(cluster string, cert *x509.Certificate) string {
	return cluster + "/" + cert.SerialNumber.Text(16)
}

type cluster struct {
	// open are the streams open to the cluster, with whom each is for.
	open     map[*countedConn]*openStream
	sessions []*tunnel.RelaySession
	next     int
	streams  int
	lastSeen time.Time
}

// NewRouter validates cfg and returns an empty Router.
func NewRouter(cfg RouterConfig) (*Router, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	return &Router{cfg: cfg, maxStreams: max(1, int(cfg.StreamMemory/int64(cfg.StreamWindow))), log: cfg.Logger,
		clusters: map[string]*cluster{}, callers: map[string]int{}, creds: map[*tunnel.RelaySession]*sessionCred{}, perCred: map[string]int{},
		reservedCluster: map[string]int{}, reservedCred: map[string]int{}}, nil
}

// StreamWindow returns the yamux stream window the relay's agent sessions
// use (RouterConfig.StreamWindow).
func (r *Router) StreamWindow() uint32 { return r.cfg.StreamWindow }

// MaxStreams returns how many streams the router opens in all:
// StreamMemory / StreamWindow.
func (r *Router) MaxStreams() int { return r.maxStreams }

// Reservation is a session slot Reserve admitted: Add it with its session,
// or Cancel it if the session did not come (its handshake failed).
type Reservation struct {
	r       *Router
	cluster string
	cred    *x509.Certificate
	once    sync.Once
}

// Reserve admits a session of cluster presenting cred within the caps, or
// returns the ErrTooManySessions it is refused with. The relay's agent
// endpoint reserves before it welcomes an agent, so that an agent over a
// cap is always told why, even when many connect at once.
func (r *Router) Reserve(cluster string, cred *x509.Certificate) (*Reservation, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.admitLocked(cluster, cred); err != nil {
		return nil, err
	}
	r.reservedCluster[cluster]++
	if cred != nil {
		r.reservedCred[credKey(cluster, cred)]++
	}
	return &Reservation{r: r, cluster: cluster, cred: cred}, nil
}

// Cancel gives the reservation's slot back; it does nothing once the
// reservation was added or cancelled.
func (v *Reservation) Cancel() { v.once.Do(func() { v.r.unreserve(v.cluster, v.cred) }) }

// Add routes s in the reserved slot (see Router.Add), which the
// reservation admitted: it is not refused for the caps.
func (v *Reservation) Add(s *tunnel.RelaySession) error {
	err := errors.New("relay: the session reservation was already used or cancelled")
	v.once.Do(func() {
		v.r.unreserve(v.cluster, v.cred)
		err = v.r.add(s, v.cred, false)
	})
	return err
}

func (r *Router) unreserve(cluster string, cred *x509.Certificate) {
	r.mu.Lock()
	defer r.mu.Unlock()
	decr(r.reservedCluster, cluster)
	if cred != nil {
		decr(r.reservedCred, credKey(cluster, cred))
	}
}

// decr decrements m[k], dropping it at zero.
func decr(m map[string]int, k string) {
	if m[k] <= 1 {
		delete(m, k)
		return
	}
	m[k]--
}

func (r *Router) admitLocked(cluster string, cred *x509.Certificate) error {
	held := r.reservedCluster[cluster]
	if c := r.clusters[cluster]; c != nil {
		held += len(c.sessions)
	}
	if held >= r.cfg.MaxSessionsPerCluster {
		return fmt.Errorf("%w: cluster %s holds %d, the relay's --max-sessions-per-cluster: stop the extra agents, or ask the relay's operator to raise it",
			ErrTooManySessions, cluster, r.cfg.MaxSessionsPerCluster)
	}
	if cred != nil {
		key := credKey(cluster, cred)
		if r.perCred[key]+r.reservedCred[key] >= r.cfg.MaxSessionsPerCredential {
			return fmt.Errorf("%w: this credential of cluster %s holds %d, the relay's --max-sessions-per-credential: an agent keeps 2 (--sessions); agents sharing one credential share the cap",
				ErrTooManySessions, cluster, r.cfg.MaxSessionsPerCredential)
		}
	}
	return nil
}

// Add routes the session's cluster to it until the session ends. cred is
// the certificate the agent presented: the session counts against its
// MaxSessionsPerCredential, and ends when it expires. Nil (a session
// without TLS, in tests) counts only against the cluster.
func (r *Router) Add(s *tunnel.RelaySession, cred *x509.Certificate) error {
	return r.add(s, cred, true)
}

func (r *Router) add(s *tunnel.RelaySession, cred *x509.Certificate, check bool) error {
	id := s.Hello.Cluster
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return errors.New("relay: router closed")
	}
	if check {
		if err := r.admitLocked(id, cred); err != nil {
			r.mu.Unlock()
			return err
		}
	}
	c := r.clusters[id]
	if c == nil {
		c = &cluster{}
		r.clusters[id] = c
	}
	c.sessions = append(c.sessions, s)
	n := len(c.sessions)
	if cred != nil {
		sc := &sessionCred{cert: cred, key: credKey(id, cred)}
		r.perCred[sc.key]++
		// The credential was verified at the handshake; check it again
		// when it stops holding (its expiry, or the end of a renewal's
		// grace), so that it never outlives that in a session.
		sc.expiry = time.AfterFunc(r.until(cred).Sub(r.cfg.Now()), func() { r.revalidate(id, s) })
		r.creds[s] = sc
	}
	r.mu.Unlock()
	r.changed(id)
	r.log.Info("relay: agent session added", "cluster", id, "agent", s.Hello.Agent, "slot", s.Hello.Slot, "software", s.Hello.Software, "sessions", n)
	// Unrouted when it ends, by the session's own goroutine: no watcher
	// goroutine per idle session.
	s.AfterClose(func() { r.remove(s) })
	return nil
}

func (r *Router) remove(s *tunnel.RelaySession) {
	id := s.Hello.Cluster
	defer r.changed(id) // after the unlock
	r.mu.Lock()
	defer r.mu.Unlock()
	if sc := r.creds[s]; sc != nil {
		sc.expiry.Stop()
		delete(r.creds, s)
		if r.perCred[sc.key] <= 1 {
			delete(r.perCred, sc.key)
		} else {
			r.perCred[sc.key]--
		}
	}
	c := r.clusters[id]
	if c == nil {
		return
	}
	for i, x := range c.sessions {
		if x == s {
			c.sessions = append(c.sessions[:i], c.sessions[i+1:]...)
			break
		}
	}
	c.lastSeen = r.cfg.Now()
	r.log.Info("relay: agent session removed", "cluster", id, "agent", s.Hello.Agent, "slot", s.Hello.Slot, "sessions", len(c.sessions))
}

// changed tells the other replicas, if any, that this one's sessions of
// cluster changed.
func (r *Router) changed(cluster string) {
	if r.cfg.Remote != nil {
		r.cfg.Remote.Changed(cluster)
	}
}

// AllSessions returns how many live sessions serve the cluster on this
// replica and, as they published them, on the others.
func (r *Router) AllSessions(clusterID string) int {
	n := r.Sessions(clusterID)
	if r.cfg.Remote != nil {
		n += r.cfg.Remote.Sessions(clusterID)
	}
	return n
}

// until is when cred stops holding, if nothing changes.
func (r *Router) until(cred *x509.Certificate) time.Time {
	if r.cfg.Verify == nil {
		return cred.NotAfter
	}
	u, err := r.cfg.Verify(cred)
	if err != nil {
		return r.cfg.Now()
	}
	return u
}

// Revalidate checks the credential of each of cluster's sessions with
// RouterConfig.Verify (the registry changed: a rotate, a renewal, a
// revocation) and returns how many sessions it ended or moved: a session
// whose credential no longer holds ends at once; one whose credential a
// renewal superseded (it holds only for the renewal's grace) is told to
// move (GoAway), so its agent opens a replacement with its current
// credential, and ends after SupersededGrace or at the end of that grace,
// whichever is first.
func (r *Router) Revalidate(cluster string) int {
	r.mu.Lock()
	var ss []*tunnel.RelaySession
	if c := r.clusters[cluster]; c != nil {
		ss = append(ss, c.sessions...)
	}
	r.mu.Unlock()
	n := 0
	for _, s := range ss {
		if r.revalidate(cluster, s) {
			n++
		}
	}
	return n
}

// RevalidateAll is Revalidate for every cluster (the registry's change
// feed fell behind and merged its changes).
func (r *Router) RevalidateAll() int {
	r.mu.Lock()
	ids := make([]string, 0, len(r.clusters))
	for id := range r.clusters {
		ids = append(ids, id)
	}
	r.mu.Unlock()
	n := 0
	for _, id := range ids {
		n += r.Revalidate(id)
	}
	return n
}

// revalidate checks s's credential, ends or moves s when it no longer
// holds fully, and reschedules the check otherwise. It reports whether it
// ended or moved s.
func (r *Router) revalidate(cluster string, s *tunnel.RelaySession) bool {
	r.mu.Lock()
	sc := r.creds[s]
	r.mu.Unlock()
	if sc == nil || r.cfg.Verify == nil && sc.cert.NotAfter.After(r.cfg.Now()) {
		return false
	}
	now := r.cfg.Now()
	until, err := sc.cert.NotAfter, error(nil)
	if r.cfg.Verify != nil {
		until, err = r.cfg.Verify(sc.cert)
	}
	if err == nil && !until.After(now) {
		err = errors.New("the credential's grace is over")
	}
	if err == nil && !sc.cert.NotAfter.After(now) {
		err = errors.New("the credential expired")
	}
	if err != nil {
		r.log.Warn("relay: agent session ended: its credential no longer holds", "cluster", cluster, "agent", s.Hello.Agent, "slot", s.Hello.Slot, "why", err)
		_ = s.Close()
		return true
	}
	r.mu.Lock()
	sc.expiry.Reset(until.Sub(now))
	superseded := until.Before(sc.cert.NotAfter) && !sc.moving
	if superseded {
		sc.moving = true
	}
	r.mu.Unlock()
	if !superseded {
		return false
	}
	grace := min(r.cfg.SupersededGrace, until.Sub(now))
	r.log.Info("relay: agent session's credential was renewed; telling the session to move", "cluster", cluster, "agent", s.Hello.Agent,
		"slot", s.Hello.Slot, "grace", grace)
	r.moving.Add(1)
	go func() {
		defer r.moving.Done()
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		if err := s.GoAway(ctx, grace, "this session's credential was renewed: reconnect with the current one"); err != nil {
			_ = s.Close()
			return
		}
		select {
		case <-ctx.Done():
		case <-s.CloseChan():
		}
		_ = s.Close()
	}()
	return true
}

// counts returns the number of live sessions and of clusters with at least
// one.
func (r *Router) counts() (sessions, clusters int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.clusters {
		sessions += len(c.sessions)
		if len(c.sessions) > 0 {
			clusters++
		}
	}
	return sessions, clusters
}

// perCluster returns the number of sessions of each cluster that has any.
func (r *Router) perCluster() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]int, len(r.clusters))
	for id, c := range r.clusters {
		if len(c.sessions) > 0 {
			out[id] = len(c.sessions)
		}
	}
	return out
}

// Sessions returns how many live sessions serve the cluster.
func (r *Router) Sessions(clusterID string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.clusters[clusterID]; c != nil {
		return len(c.sessions)
	}
	return 0
}

// HoldsAgent reports whether the router holds a session of agent (its
// Hello.Agent) of clusterID in another slot than slot.
func (r *Router) HoldsAgent(clusterID, agent string, slot int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.clusters[clusterID]; c != nil {
		for _, s := range c.sessions {
			if s.Hello.Agent == agent && s.Hello.Slot != slot {
				return true
			}
		}
	}
	return false
}

// Agents returns the software versions the agents of clusterID reported
// in their Hellos, each once, sorted, for the sessions the router holds.
func (r *Router) Agents(clusterID string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.clusters[clusterID]
	if c == nil {
		return nil
	}
	var out []string
	for _, s := range c.sessions {
		if v := s.Hello.Software; v != "" && !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	slices.Sort(out)
	return out
}

// LastSeen returns when clusterID's last session on this relay ended:
// zero if none has.
func (r *Router) LastSeen(clusterID string) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.clusters[clusterID]; c != nil {
		return c.lastSeen
	}
	return time.Time{}
}

// Open opens a stream for o to one of o.Cluster's sessions, taking them in
// turn and skipping any that fails. A refusal by the agent is returned as
// it is (a *tunnel.RefusedError), never retried elsewhere.
//
// The stream counts against o.User's MaxStreamsPerCaller, o.Cluster's
// MaxStreamsPerCluster and the relay's StreamMemory / StreamWindow until
// the returned conn is closed; beyond any of them Open returns
// ErrTooManyStreams. o.User must be the name the relay's authenticator
// produced for the caller, never anything the caller states itself: it is
// whose budget the stream takes.
//
// When no session of the cluster is here and RouterConfig.Remote is set,
// the stream is forwarded to a replica that holds one, within the same
// caps; a cluster no replica holds is a *NotConnectedError.
//
// With Metrics, the open is timed (tunnel_open_duration_seconds) and so is
// the stream's life (tunnel_duration_seconds).
func (r *Router) Open(ctx context.Context, o *tunnel.Open, owner StreamOwner) (net.Conn, error) {
	return r.timedOpen(ctx, o, owner, r.cfg.Remote)
}

// OpenLocal is Open on this replica's own sessions only: what serves a
// stream another replica forwarded, so that no stream is forwarded twice.
func (r *Router) OpenLocal(ctx context.Context, o *tunnel.Open, owner StreamOwner) (net.Conn, error) {
	return r.timedOpen(ctx, o, owner, nil)
}

func (r *Router) timedOpen(ctx context.Context, o *tunnel.Open, owner StreamOwner, remote Remote) (net.Conn, error) {
	start := time.Now()
	conn, err := r.open(ctx, o, owner, remote)
	r.metrics.Load().streamOpen(time.Since(start), err)
	return conn, err
}

func (r *Router) open(ctx context.Context, o *tunnel.Open, owner StreamOwner, remote Remote) (net.Conn, error) {
	user, clusterID := o.User, o.Cluster
	r.mu.Lock()
	c := r.clusters[o.Cluster]
	local := c != nil && len(c.sessions) > 0
	if !local && (remote == nil || remote.Sessions(o.Cluster) == 0) {
		var last time.Time
		if c != nil {
			last = c.lastSeen
		}
		r.mu.Unlock()
		return nil, &NotConnectedError{Cluster: o.Cluster, LastSeen: last, Replicas: r.cfg.Remote != nil}
	}
	if c == nil {
		c = &cluster{}
		r.clusters[o.Cluster] = c
	}
	if n := r.callers[user]; n >= r.cfg.MaxStreamsPerCaller {
		r.mu.Unlock()
		r.log.Warn("relay: stream refused: the caller holds its maximum of open streams (--max-streams-per-caller)",
			"user", user, "cluster", clusterID, "open", n, "max", r.cfg.MaxStreamsPerCaller)
		return nil, fmt.Errorf("%w for user %q: %d through this relay, the relay's --max-streams-per-caller; "+
			"close some of yours (each idle tunnel tether-proxy keeps holds one: its --max-idle-tunnels), or ask the relay's operator to raise --max-streams-per-caller",
			ErrTooManyStreams, user, r.cfg.MaxStreamsPerCaller)
	}
	if c.streams >= r.cfg.MaxStreamsPerCluster {
		r.mu.Unlock()
		return nil, fmt.Errorf("%w to cluster %s: %d, the relay's --max-streams-per-cluster", ErrTooManyStreams, o.Cluster, r.cfg.MaxStreamsPerCluster)
	}
	if r.streams >= r.maxStreams {
		r.mu.Unlock()
		return nil, fmt.Errorf("%w through this relay: %d, its --stream-memory / --stream-window", ErrTooManyStreams, r.maxStreams)
	}
	c.streams++
	r.streams++
	r.callers[user]++
	// Sessions in turn, those the relay is draining last: they still
	// carry a stream when nothing else can.
	order := make([]*tunnel.RelaySession, 0, len(c.sessions))
	var draining []*tunnel.RelaySession
	for i := range c.sessions {
		s := c.sessions[(c.next+i)%len(c.sessions)]
		if s.Draining() {
			draining = append(draining, s)
			continue
		}
		order = append(order, s)
	}
	order = append(order, draining...)
	c.next++
	r.mu.Unlock()

	// From here every return gives the slots back exactly once: at once
	// on failure, or when the returned conn is first closed.
	counted := func(st net.Conn) net.Conn {
		cc, opened := &countedConn{Conn: st}, time.Now()
		cc.release = func() { r.untrack(clusterID, cc); r.release(clusterID, user); r.metrics.Load().streamClosed(opened) }
		r.track(clusterID, cc, owner)
		return cc
	}
	if !local {
		st, err := remote.Forward(ctx, o, owner)
		if err != nil {
			r.release(clusterID, user)
			if errors.Is(err, ErrNoRemoteSession) {
				r.mu.Lock()
				last := c.lastSeen
				r.mu.Unlock()
				nc := &NotConnectedError{Cluster: o.Cluster, LastSeen: last, Replicas: true}
				if err != ErrNoRemoteSession {
					nc.Why = err
				}
				return nil, nc
			}
			return nil, err
		}
		return counted(st), nil
	}
	var errs []error
	for _, s := range order {
		st, err := s.Open(ctx, o)
		if err == nil {
			return counted(st), nil
		}
		var ref *tunnel.RefusedError
		if errors.As(err, &ref) || ctx.Err() != nil {
			r.release(clusterID, user)
			return nil, err
		}
		errs = append(errs, err)
	}
	r.release(clusterID, user)
	return nil, fmt.Errorf("relay: no session of cluster %s could open a stream: %w", clusterID, errors.Join(errs...))
}

// track records an open stream and, when its token expires, ends it then.
func (r *Router) track(clusterID string, cc *countedConn, owner StreamOwner) {
	ost := &openStream{owner: owner}
	if !owner.Expires.IsZero() {
		ost.expiry = time.AfterFunc(owner.Expires.Sub(r.cfg.Now()), func() {
			r.log.Info("relay: stream ended: the token that opened it expired", "cluster", clusterID, "user", owner.Identity.User, "expired", owner.Expires)
			_ = cc.Close()
		})
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.clusters[clusterID]
	if c.open == nil {
		c.open = map[*countedConn]*openStream{}
	}
	c.open[cc] = ost
}

func (r *Router) untrack(clusterID string, cc *countedConn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.clusters[clusterID]; c != nil {
		if ost := c.open[cc]; ost != nil {
			if ost.expiry != nil {
				ost.expiry.Stop()
			}
			delete(c.open, cc)
		}
	}
}

// Recheck ends every stream open to cluster whose owner admit refuses (the
// cluster's access policy changed), and returns them with why. A revoked
// caller keeps no tunnel: a refreshed token of theirs finds none open, and
// a new one is refused.
func (r *Router) Recheck(cluster string, admit func(StreamOwner) error) []Cut {
	r.mu.Lock()
	var cuts []Cut
	var conns []*countedConn
	if c := r.clusters[cluster]; c != nil {
		for cc, ost := range c.open {
			if err := admit(ost.owner); err != nil {
				cuts, conns = append(cuts, Cut{Owner: ost.owner, Why: err}), append(conns, cc)
			}
		}
	}
	r.mu.Unlock()
	for _, cc := range conns {
		_ = cc.Close()
	}
	return cuts
}

func (r *Router) release(clusterID, user string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.clusters[clusterID]; c != nil && c.streams > 0 {
		c.streams--
		r.streams--
	}
	switch n := r.callers[user]; {
	case n > 1:
		r.callers[user] = n - 1
	case n == 1:
		delete(r.callers, user)
	}
}

// Streams returns how many streams are open through the router.
func (r *Router) Streams() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.streams
}

// GoAway sends GoAway (see tunnel.GoAway) on every session, in parallel,
// and returns how many sessions it reached.
func (r *Router) GoAway(ctx context.Context, grace time.Duration, message string) int {
	r.mu.Lock()
	var all []*tunnel.RelaySession
	for _, c := range r.clusters {
		all = append(all, c.sessions...)
	}
	r.mu.Unlock()
	var wg sync.WaitGroup
	var mu sync.Mutex
	reached := 0
	for _, s := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.GoAway(ctx, grace, message); err != nil {
				r.log.Warn("relay: GoAway not delivered", "cluster", s.Hello.Cluster, "agent", s.Hello.Agent, "error", err)
				return
			}
			mu.Lock()
			reached++
			mu.Unlock()
		}()
	}
	wg.Wait()
	return reached
}

// CloseCluster ends every session of the cluster (it was rotated or
// deleted) and returns how many there were.
func (r *Router) CloseCluster(id string) int {
	r.mu.Lock()
	var ss []*tunnel.RelaySession
	if c := r.clusters[id]; c != nil {
		// Unrouted at once, not when each session's watcher notices.
		ss, c.sessions = c.sessions, nil
		c.lastSeen = r.cfg.Now()
	}
	r.mu.Unlock()
	r.changed(id)
	for _, s := range ss {
		_ = s.Close()
	}
	return len(ss)
}

// Close ends every session and waits for the router's goroutines.
func (r *Router) Close() error {
	r.mu.Lock()
	r.closed = true
	var all []*tunnel.RelaySession
	for _, c := range r.clusters {
		all = append(all, c.sessions...)
	}
	r.mu.Unlock()
	var errs []error
	for _, s := range all {
		if err := s.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	r.moving.Wait()
	return errors.Join(errs...)
}

// countedConn gives its stream slot back once, on Close.
type countedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

// WriteError answers a caller with the Status for an error of Open (or of
// the registry's cluster lookup).
func WriteError(w http.ResponseWriter, err error) {
	code, reason := StatusOf(err)
	kstatus.Write(w, code, reason, "tether relay: "+err.Error())
}

// StatusOf is the HTTP status and Kubernetes Status reason a caller gets
// for an error of Open.
func StatusOf(err error) (code int, reason string) {
	var nc *NotConnectedError
	var fr *ForwardRefusedError
	switch {
	case errors.As(err, &nc):
		return http.StatusServiceUnavailable, kstatus.ReasonServiceUnavailable
	case errors.Is(err, ErrTooManyStreams):
		return http.StatusTooManyRequests, kstatus.ReasonTooManyRequests
	case errors.As(err, &fr) && fr.Code != 0:
		return fr.Code, fr.Reason
	}
	return http.StatusBadGateway, kstatus.ReasonBadGateway
}

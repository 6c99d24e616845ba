package sim

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// Scenario is a named run: which faults, how often, for how long, on how
// big a world. A Script replaces the random timeline with a fixed one (a
// regression).
type Scenario struct {
	Name string
	Doc  string
	// Faults the random timeline draws from; empty means every fault.
	Faults []string
	// Rate is the chance that a fault starts in each second of the run.
	Rate float64
	// Script, if set, is the timeline (At and For; details from the seed).
	Script                    []FaultEvent
	Duration                  time.Duration
	Clusters, Agents, Clients int
	// Replicas, when more than 1, runs the scenario on that many relay
	// replicas sharing one store (WorldConfig.Replicas).
	Replicas int
}

// Options override a scenario's size and timing (the command's flags).
type Options struct {
	Seed                      uint64
	Duration                  time.Duration
	Clusters, Agents, Clients int
	// Faults, if set, limits the faults the random timeline draws from.
	Faults []string
	Logger *slog.Logger
	// Progress, if set, receives a line per fault and phase.
	Progress io.Writer
	// RecoverWithin bounds the recovery check. Zero means ReconnectBound.
	RecoverWithin time.Duration
	// Interrupted, if set, is polled by Replay; once it reports true the
	// run ends early (Ctrl-C in the command).
	Interrupted func() bool
}

// Reconnect is one cluster's return after a relay restart.
type Reconnect struct {
	Cluster string
	Restart time.Time
	// Took is how long after the restart it had a session again; -1 if it
	// did not before the next relay fault or the end of the run.
	Took time.Duration
}

// Result is one run's record and verdict.
type Result struct {
	Scenario string
	Seed     uint64
	Start    time.Time
	Timeline []FaultEvent
	Obs      []Obs
	Seen     []Seen
	// Reconnects after each relay restart, per cluster.
	Reconnects []Reconnect
	// Violations per invariant name; Held lists the invariants that held.
	Violations                        map[string][]string
	Held                              []string
	GoroutinesBefore, GoroutinesAfter int
	HeapBefore, HeapAfter             uint64

	// Open lists the network's connections and listeners still open once
	// the world was closed (netsim.Network.Open): each a leak.
	Open []string

	// With several replicas: the route tables sampled every 100 ms, each
	// tunnel's hops between replicas, and the drains.
	Tables []TableSample
	Hops   []Hop
	Drains []DrainEvent
	Stops  []StopEvent

	clientCluster []string
	unrecovered   []string
	leakDump      string
}

func (r *Result) at(t time.Time) string { return "+" + t.Sub(r.Start).Round(time.Millisecond).String() }

// Failed reports whether any invariant was violated.
func (r *Result) Failed() bool { return len(r.Violations) > 0 }

// Faults counts the faults injected.
func (r *Result) Faults() int {
	n := 0
	for _, e := range r.Timeline {
		if !e.Skipped {
			n++
		}
	}
	return n
}

// ReconnectPercentile returns the p-th percentile of reconnect times.
func (r *Result) ReconnectPercentile(p float64) time.Duration {
	var ds []time.Duration
	for _, rc := range r.Reconnects {
		if rc.Took >= 0 {
			ds = append(ds, rc.Took)
		}
	}
	return percentile(ds, p)
}

// Timeline draws a scenario's fault timeline from seed.
func (sc *Scenario) Timeline(seed uint64, o Options) []FaultEvent {
	if sc.Script != nil {
		return append([]FaultEvent(nil), sc.Script...)
	}
	names := sc.Faults
	if len(o.Faults) > 0 {
		names = o.Faults
	}
	if len(names) == 0 {
		for n, f := range Faults {
			// A world of one relay never draws a replica fault (and
			// its seeds keep the timelines they had before there were
			// any).
			if _, ok := f.(interface{ replicaFault() }); ok && sc.Replicas <= 1 {
				continue
			}
			names = append(names, n)
		}
	}
	names = slices.Clone(names)
	sort.Strings(names)
	rnd := rand.New(rand.NewPCG(seed, 1))
	dur := sc.duration(o)
	var tl []FaultEvent
	for at := time.Second; at < dur-3*time.Second; at += time.Second {
		if rnd.Float64() >= sc.Rate {
			continue
		}
		f := names[rnd.IntN(len(names))]
		length := time.Duration(300+rnd.IntN(3700)) * time.Millisecond
		tl = append(tl, FaultEvent{Fault: f, At: at, For: length})
	}
	return tl
}

func (sc *Scenario) duration(o Options) time.Duration {
	if o.Duration > 0 {
		return o.Duration
	}
	if sc.Duration > 0 {
		return sc.Duration
	}
	return 20 * time.Second
}

func pick(o, s, def int) int {
	switch {
	case o > 0:
		return o
	case s > 0:
		return s
	}
	return def
}

// Run runs sc with o and checks every invariant.
func Run(ctx context.Context, sc *Scenario, o Options) (*Result, error) {
	progress := o.Progress
	if progress == nil {
		progress = io.Discard
	}
	dir, err := os.MkdirTemp("", "tether-sim-")
	if err != nil {
		return nil, fmt.Errorf("sim: work directory: %w", err)
	}
	defer os.RemoveAll(dir)
	r := &Result{Scenario: sc.Name, Seed: o.Seed, Violations: map[string][]string{}, GoroutinesBefore: runtime.NumGoroutine(), HeapBefore: heapInUse()}
	r.Timeline = sc.Timeline(o.Seed, o)
	for _, e := range r.Timeline {
		if _, ok := Faults[e.Fault]; !ok {
			return nil, fmt.Errorf("sim: scenario %s: unknown fault %q (have %s)", sc.Name, e.Fault, strings.Join(FaultNames(), ", "))
		}
	}
	cfg := WorldConfig{Seed: o.Seed, Clusters: pick(o.Clusters, sc.Clusters, 4), AgentsPerCluster: pick(o.Agents, sc.Agents, 1),
		Clients: pick(o.Clients, sc.Clients, 8), Replicas: sc.Replicas, Dir: dir, Logger: o.Logger}
	fmt.Fprintf(progress, "%s seed %d: %d clusters × %d agents × 2 sessions, %d clients, %d relay replicas, %s, %d faults\n", sc.Name, o.Seed,
		cfg.Clusters, cfg.AgentsPerCluster, cfg.Clients, max(1, cfg.Replicas), sc.duration(o), len(r.Timeline))
	w, err := NewWorld(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("sim: build the world: %w", err)
	}
	for _, c := range w.Clients {
		r.clientCluster = append(r.clientCluster, c.Cluster.ID)
	}
	if err := w.waitLive(ctx, ReconnectBound); err != nil {
		_ = w.Close()
		return nil, err
	}
	r.Start = time.Now()
	rec := &Recorder{}
	tctx, stopTraffic := context.WithCancel(ctx)
	var traffic sync.WaitGroup
	for _, c := range w.Clients {
		traffic.Add(1)
		go func() {
			defer traffic.Done()
			Drive(tctx, c, rand.New(rand.NewPCG(o.Seed, uint64(c.ID)+100)), rec)
		}()
	}
	mon := w.monitorReconnects()
	stopTables, tables := make(chan struct{}), make(chan []TableSample, 1)
	if w.multi() {
		go func() { tables <- w.sampleTables(stopTables) }()
	}
	w.play(ctx, r, o.Seed, max(r.Timeline0End(), sc.duration(o)), progress)
	fmt.Fprintf(progress, "  faults done at %s; checking recovery\n", r.at(time.Now()))
	r.unrecovered = w.recovery(ctx, cmp.Or(o.RecoverWithin, ReconnectBound))
	if w.multi() {
		var healed time.Time
		for _, e := range r.Timeline {
			if e.Undone.After(healed) {
				healed = e.Undone
			}
		}
		w.awaitTables(ctx, healed.Add(ConvergeBound))
		close(stopTables)
		r.Tables = <-tables
		r.Hops = w.hops.all()
		w.mu.Lock()
		r.Drains = slices.Clone(w.drains)
		r.Stops = slices.Clone(w.stops)
		w.mu.Unlock()
	}
	stopTraffic()
	traffic.Wait()
	r.Reconnects = mon()
	w.bg.Wait()
	r.Obs = rec.All()
	if w.multi() {
		fwd, disagree := 0, 0
		for _, h := range r.Hops {
			if h.Forwarded {
				fwd++
			}
		}
		for _, t := range r.Tables {
			if t.Disagree != "" {
				disagree++
			}
		}
		inDrain := 0
		for _, d := range r.Drains {
			for _, o := range r.Obs {
				if o.Op == "get" && !o.Start.After(d.Stopped.Add(DrainAfter)) && !o.End.Before(d.Start) {
					inDrain++
				}
			}
		}
		fmt.Fprintf(progress, "  replicas: %d tunnels opened, %d of them forwarded to another replica; %d of %d table samples disagreed; %d drains, %d gets during them\n",
			len(r.Hops)-fwd, fwd, disagree, len(r.Tables), len(r.Drains), inDrain)
	}
	for _, c := range w.Clusters {
		r.Seen = append(r.Seen, c.API.History()...)
	}
	r.sort()
	if err := w.Close(); err != nil {
		fmt.Fprintf(progress, "  closing the world: %v\n", err)
	}
	r.GoroutinesAfter, r.leakDump = settle(r.GoroutinesBefore + goroutineSlack)
	r.Open = w.Net.Open()
	r.HeapAfter = heapInUse()
	for _, inv := range Invariants {
		if v := inv.Check(r); len(v) > 0 {
			r.Violations[inv.Name] = v
		} else {
			r.Held = append(r.Held, inv.Name)
		}
	}
	return r, nil
}

// sort puts the record in an order that does not depend on which of two
// goroutines recorded first: observations by client and start, what the
// API servers saw by cluster, time and client, reconnects by restart and
// cluster.
func (r *Result) sort() {
	slices.SortStableFunc(r.Obs, func(a, b Obs) int {
		return cmp.Or(cmp.Compare(a.Client, b.Client), a.Start.Compare(b.Start), cmp.Compare(a.Op, b.Op))
	})
	slices.SortStableFunc(r.Seen, func(a, b Seen) int {
		return cmp.Or(cmp.Compare(a.Cluster, b.Cluster), a.At.Compare(b.At), cmp.Compare(a.Client, b.Client), cmp.Compare(a.Path, b.Path))
	})
	slices.SortStableFunc(r.Reconnects, func(a, b Reconnect) int {
		return cmp.Or(a.Restart.Compare(b.Restart), cmp.Compare(a.Cluster, b.Cluster))
	})
}

// play injects the timeline's faults at their times and undoes them, and
// returns once every fault is undone and dur has passed.
func (w *World) play(ctx context.Context, r *Result, seed uint64, dur time.Duration, progress io.Writer) {
	var wg sync.WaitGroup
	var relayMu sync.Mutex // relay faults do not overlap
	var mu sync.Mutex
	for i := range r.Timeline {
		ev := &r.Timeline[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(r.Start.Add(ev.At))):
			}
			f := Faults[ev.Fault]
			relayFault := ev.Fault == "relay-kill" || ev.Fault == "relay-drain" || ev.Fault == "revoke"
			if relayFault && !relayMu.TryLock() {
				mu.Lock()
				ev.Skipped = true
				mu.Unlock()
				return
			}
			if relayFault {
				defer relayMu.Unlock()
			}
			if !f.Applies(w) {
				mu.Lock()
				ev.Skipped = true
				mu.Unlock()
				return
			}
			desc, undo := f.Inject(w, rand.New(rand.NewPCG(seed, uint64(i)+1000)))
			mu.Lock()
			ev.Desc, ev.Injected, ev.Skipped = desc, time.Now(), undo == nil
			mu.Unlock()
			if undo == nil {
				return
			}
			fmt.Fprintf(progress, "  %s %s %s for %s\n", r.at(ev.Injected), ev.Fault, desc, ev.For)
			select {
			case <-ctx.Done():
			case <-time.After(ev.For):
			}
			undo()
			mu.Lock()
			ev.Undone = time.Now()
			mu.Unlock()
		}()
	}
	end := r.Start.Add(dur)
	wg.Wait()
	if d := time.Until(end); d > 0 {
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
	}
}

// Timeline0End is when the last fault ends, at least.
func (r *Result) Timeline0End() time.Duration {
	var end time.Duration
	for _, e := range r.Timeline {
		end = max(end, e.At+e.For)
	}
	return end
}

// waitLive waits until every cluster has a session.
func (w *World) waitLive(ctx context.Context, bound time.Duration) error {
	deadline := time.Now().Add(bound)
	for _, c := range w.Clusters {
		for w.Live(c) == 0 {
			if time.Now().After(deadline) || ctx.Err() != nil {
				return fmt.Errorf("sim: cluster %s has no session %s after start", c.ID, bound)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

// monitorReconnects measures, after each relay restart, when each cluster
// has a session again. The returned function stops it and returns what it
// measured.
func (w *World) monitorReconnects() func() []Reconnect {
	stop := make(chan struct{})
	done := make(chan []Reconnect)
	go func() {
		var out []Reconnect
		seen := 0
		pending := map[string]time.Time{}
		// flush closes the clusters still waiting: past the bound they
		// failed; within it, a newer restart leaves the question open.
		flush := func() {
			for id, at := range pending {
				if time.Since(at) > ReconnectBound {
					out = append(out, Reconnect{Cluster: id, Restart: at, Took: -1})
				}
			}
			clear(pending)
		}
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				flush()
				done <- out
				return
			case <-t.C:
			}
			if rs := w.Restarts(); len(rs) > seen {
				flush() // a new restart: who had not come back never did in time
				seen = len(rs)
				for _, c := range w.Clusters {
					pending[c.ID] = rs[len(rs)-1]
				}
			}
			w.mu.Lock()
			revoked := maps(w.revokedC)
			w.mu.Unlock()
			for _, c := range w.Clusters {
				at, ok := pending[c.ID]
				if !ok {
					continue
				}
				if revoked[c.ID] {
					delete(pending, c.ID)
					continue
				}
				if w.Live(c) > 0 {
					out = append(out, Reconnect{Cluster: c.ID, Restart: at, Took: time.Since(at)})
					delete(pending, c.ID)
				}
			}
		}
	}()
	return func() []Reconnect { close(stop); return <-done }
}

func maps(m map[string]bool) map[string]bool {
	out := make(map[string]bool, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// recovery checks, once every fault is undone, that every client gets a
// list through within ReconnectBound; it returns who did not.
func (w *World) recovery(ctx context.Context, bound time.Duration) []string {
	var mu sync.Mutex
	var out []string
	var wg sync.WaitGroup
	for _, c := range w.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			deadline := time.Now().Add(bound)
			var last string
			for time.Now().Before(deadline) && ctx.Err() == nil {
				o := Obs{}
				rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				opGet(rctx, c, nil, &o)
				cancel()
				if o.Err == "" && o.WrongCluster == "" {
					return
				}
				last = o.Err
				time.Sleep(200 * time.Millisecond)
			}
			mu.Lock()
			out = append(out, fmt.Sprintf("client %d (%s) still failing %s after every fault was undone: %s", c.ID, c.Cluster.ID, bound, last))
			mu.Unlock()
		}()
	}
	wg.Wait()
	sort.Strings(out)
	return out
}

// settle waits up to 15 s for the goroutine count to drop to want, and
// returns it, with a dump of the goroutines if it did not.
func settle(want int) (int, string) {
	deadline := time.Now().Add(15 * time.Second)
	for {
		http.DefaultClient.CloseIdleConnections()
		runtime.GC()
		n := runtime.NumGoroutine()
		if n <= want {
			return n, ""
		}
		if time.Now().After(deadline) {
			var b bytes.Buffer
			_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
			return n, b.String()
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// heapInUse returns the heap in use after two collections: the second
// frees what sync.Pools held through the first. (The heap is the real
// allocator's: it is the one number of a run that virtual time does not
// fix, hence heapSlack.)
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// FaultNames lists the faults, sorted.
func FaultNames() []string {
	var out []string
	for n := range Faults {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

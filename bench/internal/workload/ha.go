package workload

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/tether-k8s/tether/bench/internal/contender"
	"github.com/tether-k8s/tether/bench/internal/load"
	"github.com/tether-k8s/tether/bench/internal/report"
	"github.com/tether-k8s/tether/bench/internal/target"
)

// haSetup is what every HA workload's introduction says about the set-up.
const haSetup = "tether only (the peers have no equivalent: none of them runs its server as replicas sharing a store). " +
	"Three relay replicas, each assembled by relay.Start as `tether-relay serve --store etcd --peer-listen` assembles it (every " +
	"request-path check on), on a real 3-member etcd (fixtures/etcd, the etcd binary of `make fixtures`), behind HAProxy (Debian's " +
	"package; TCP mode, round robin, each replica's `/readyz` checked every 100 ms, out after two failed checks, `option redispatch`) for both the agents and the callers; " +
	"the agent (2 sessions, core/agent's default) and tether-proxy reach the replicas only through HAProxy."

// sample is one request of a steady load: when it started and ended, and
// how.
type sample struct {
	start, end time.Time
	err        error
}

// steadyLoad is C workers sending small GETs back to back, each over its
// own kept-alive connection (W2's load), recording every request.
type steadyLoad struct {
	mu      sync.Mutex
	samples []sample
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// startSteady starts workers through dial; stop ends them.
func startSteady(ctx context.Context, dial load.Dial, workers int) *steadyLoad {
	ctx, cancel := context.WithCancel(ctx)
	l := &steadyLoad{cancel: cancel}
	for range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			client := load.NewClient(dial, 1)
			defer client.CloseIdleConnections()
			for ctx.Err() == nil {
				start := time.Now()
				rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
				_, err := load.Get(rctx, client, target.SmallPath, target.SmallBodySize)
				rcancel()
				if ctx.Err() != nil {
					return // the end of the run cut it
				}
				l.mu.Lock()
				l.samples = append(l.samples, sample{start: start, end: time.Now(), err: err})
				l.mu.Unlock()
				if err != nil {
					time.Sleep(10 * time.Millisecond) // no spin on a refusal
				}
			}
		}()
	}
	return l
}

// stop ends the workers and returns every request, by end time.
func (l *steadyLoad) stop() []sample {
	l.cancel()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	out := slices.Clone(l.samples)
	slices.SortFunc(out, func(a, b sample) int { return a.end.Compare(b.end) })
	return out
}

// window is the requests that started in [from, to).
type window struct {
	n, failed int
	first     error
	lat       load.Latencies
}

func windowOf(ss []sample, from, to time.Time) window {
	var w window
	for _, s := range ss {
		if s.start.Before(from) || !s.start.Before(to) {
			continue
		}
		w.n++
		if s.err != nil {
			w.failed++
			if w.first == nil {
				w.first = s.err
			}
			continue
		}
		w.lat = append(w.lat, s.end.Sub(s.start))
	}
	w.lat = w.lat.Sorted()
	return w
}

// longestGap is the longest time in [from, to] with no request succeeding.
func longestGap(ss []sample, from, to time.Time) time.Duration {
	last, gap := from, time.Duration(0)
	for _, s := range ss {
		if s.err != nil || s.end.Before(from) || s.end.After(to) {
			continue
		}
		gap = max(gap, s.end.Sub(last))
		last = s.end
	}
	return max(gap, to.Sub(last))
}

// haRunnable reports whether tether is among the contenders of this run;
// otherwise the HA workloads are skipped, with a note.
func (r *Run) haRunnable(sec *Section) bool {
	for _, c := range r.Contestants {
		if c.Name() == "tether" {
			return true
		}
	}
	sec.Notes = append(sec.Notes, "not run: tether is not among this run's contenders")
	return false
}

// W7RResult is the figures of a replica's kill -9 (W7R).
type W7RResult struct {
	// Requests and Failed count the requests from the kill to the end.
	Requests, Failed int
	// First is the first failure.
	First error
	// Gap is the longest time after the kill with no request succeeding.
	Gap time.Duration
	// BackOnTwo is from the kill until the agent holds sessions on two
	// (live) replicas again.
	BackOnTwo time.Duration
	// P99Before and P99After are the short requests' p99 before the kill
	// and from the kill on.
	P99Before, P99After time.Duration
}

// W7R kills with SIGKILL, under a steady load of short requests, the
// replica holding one of the agent's two sessions, and measures what the
// callers saw and how long until the agent is back on two replicas.
func (r *Run) W7R(ctx context.Context) (*Section, *W7RResult) {
	s := r.Sizes
	sec := &Section{ID: "W7R", Title: "kill -9 of one of three relay replicas, under load",
		Intro: haSetup + fmt.Sprintf(" %d workers send small GETs back to back through tether-proxy (W2's load; a request fails on an error, "+
			"a status other than 200 or a short body, and after 10 s; W2's warm-up, %s, not counted); after %s one of the two replicas holding one of the agent's sessions is killed "+
			"with SIGKILL (and not restarted): the agent's session there dies, its other session keeps serving, and its keeper opens a replacement "+
			"through HAProxy on the third replica. Callers' tunnels that HAProxy had sent to the killed replica die too. The load goes on for %s "+
			"after the agent is back on two replicas.", s.W7RWorkers, s.W2Warmup, s.W7RBefore, s.W7RAfter)}
	if !r.haRunnable(sec) {
		return sec, nil
	}
	res, err := r.w7r(ctx)
	if err != nil {
		r.Failf("W7R: %v", err)
		sec.Notes = append(sec.Notes, "**failed**: "+oneLine(err))
	}
	if res != nil {
		first := ""
		if res.First != nil {
			first = oneLine(res.First)
		}
		sec.Tables = []report.Table{{Header: []string{"requests after the kill", "failed", "longest gap with no request succeeding",
			"agent back on two replicas", "p99 before (ms)", "p99 from the kill (ms)", "first failure"},
			Rows: [][]string{{fmt.Sprint(res.Requests), fmt.Sprint(res.Failed), ms(res.Gap) + " ms", sec2(res.BackOnTwo), ms(res.P99Before), ms(res.P99After), first}}}}
	}
	return sec, res
}

// haUnderLoad starts the HA path and workers steady short requests through
// it, past their warm-up (each worker's tunnel open, not measured). stop
// closes the path (the caller stops the load first); a failure to close is
// the workload's, named.
func (r *Run) haUnderLoad(ctx context.Context, workload string, workers int) (_ *contender.HA, _ *steadyLoad, stop func(), err error) {
	h, inst, err := contender.StartHAPath(ctx, r.Env)
	if err != nil {
		return nil, nil, nil, err
	}
	stop = func() {
		if err := errors.Join(inst.Close(), h.Close()); err != nil {
			r.Failf("%s: stop: %v", workload, err)
		}
	}
	if err := r.warmDial(ctx, inst.Dial, 30*time.Second); err != nil {
		stop()
		return nil, nil, nil, err
	}
	l := startSteady(ctx, inst.Dial, workers)
	time.Sleep(r.Sizes.W2Warmup)
	return h, l, stop, nil
}

func (r *Run) w7r(ctx context.Context) (*W7RResult, error) {
	s := r.Sizes
	h, l, stop, err := r.haUnderLoad(ctx, "W7R", s.W7RWorkers)
	if err != nil {
		return nil, err
	}
	defer stop()
	began := time.Now()
	time.Sleep(s.W7RBefore)
	_, on := h.Spread()
	if len(on) < 2 {
		l.stop()
		return nil, fmt.Errorf("the agent holds sessions on %v only, want two replicas", on)
	}
	victim := on[0]
	killed, err := h.KillReplica(victim)
	if err != nil {
		l.stop()
		return nil, err
	}
	_, err = h.WaitSpread(2, s.W7RLimit)
	back := time.Since(killed)
	if err == nil {
		time.Sleep(s.W7RAfter)
	}
	end := time.Now()
	ss := l.stop()
	if err != nil {
		return nil, err
	}
	before, after := windowOf(ss, began, killed), windowOf(ss, killed, end)
	res := &W7RResult{Requests: after.n, Failed: after.failed, First: after.first, Gap: longestGap(ss, killed, end), BackOnTwo: back,
		P99Before: before.lat.Quantile(0.99), P99After: after.lat.Quantile(0.99)}
	r.logf("W7R: replica %d killed: %d requests after, %d failed, longest gap %s, agent on two replicas after %s", victim, res.Requests, res.Failed,
		res.Gap.Round(time.Millisecond), sec2(res.BackOnTwo))
	if after.n-after.failed == 0 {
		return res, fmt.Errorf("no request succeeded after the kill (%d failed; first: %v)", after.failed, after.first)
	}
	return res, nil
}

// W9Result is the rolling restart's figures.
type W9Result struct {
	// Before and During are the requests before the first drain and from
	// it to the last replica's return.
	Before, During window
	// Took is how long the whole restart took; Drains how long each
	// replica's drain took.
	Took   time.Duration
	Drains []time.Duration
}

// W9 restarts the three replicas one after the other (drain, stop, start
// again, wait until it is back and the agent holds two sessions) under W2's
// load: no request may fail.
func (r *Run) W9(ctx context.Context) (*Section, *W9Result) {
	s := r.Sizes
	sec := &Section{ID: "W9", Title: "rolling restart of three relay replicas, under load",
		Intro: haSetup + fmt.Sprintf(" %d workers send small GETs back to back through tether-proxy, each over its own kept-alive connection (W2's load; its warm-up, %s, not counted). "+
			"After %s the replicas are restarted one after the other as a rolling update does: each is drained as `tether-relay serve` drains on "+
			"SIGTERM (`/readyz` turns 503, so HAProxy sends it no new connection; it marks itself draining in etcd; GoAway to its agent sessions, "+
			"which the agent replaces on another replica; open tunnels served for up to --drain-timeout %s), then stopped (its keys deleted, its "+
			"lease revoked) and started again on the same ports with the same name; the next one goes once it is back in every replica's table and "+
			"the agent holds sessions on two replicas again. **A single failed request fails the workload.**", s.W9Workers, s.W2Warmup, s.W9Before, s.W9Drain)}
	if !r.haRunnable(sec) {
		return sec, nil
	}
	res, err := r.w9(ctx)
	if err != nil {
		r.Failf("W9: %v", err)
		sec.Notes = append(sec.Notes, "**failed**: "+oneLine(err))
	}
	if res != nil {
		var drains []string
		for _, d := range res.Drains {
			drains = append(drains, sec2(d))
		}
		first := ""
		if res.During.first != nil {
			first = oneLine(res.During.first)
		}
		row := func(name string, w window) []string {
			return []string{name, fmt.Sprint(w.n), fmt.Sprint(w.failed), ms(w.lat.Quantile(0.5)), ms(w.lat.Quantile(0.99)), ms(w.lat.Quantile(1))}
		}
		sec.Tables = []report.Table{{Header: []string{"window", "requests", "failed", "p50 (ms)", "p99 (ms)", "max (ms)"},
			Rows: [][]string{row("before the restart", res.Before), row("during the restart", res.During)}},
			{Header: []string{"whole restart", "each replica's drain", "first failure"}, Rows: [][]string{{sec2(res.Took), fmt.Sprint(drains), first}}}}
	}
	return sec, res
}

func (r *Run) w9(ctx context.Context) (*W9Result, error) {
	s := r.Sizes
	h, l, stop, err := r.haUnderLoad(ctx, "W9", s.W9Workers)
	if err != nil {
		return nil, err
	}
	defer stop()
	began := time.Now()
	time.Sleep(s.W9Before)
	restart := time.Now()
	res := &W9Result{}
	var rerr error
	for i := range h.Replicas() {
		t0 := time.Now()
		if rerr = h.DrainReplica(i, s.W9Drain); rerr != nil {
			break
		}
		res.Drains = append(res.Drains, time.Since(t0))
		if rerr = h.StartReplica(ctx, i); rerr != nil {
			break
		}
		if rerr = h.WaitReplicas(len(h.Replicas()), 30*time.Second); rerr != nil {
			break
		}
		if _, rerr = h.WaitSpread(2, 30*time.Second); rerr != nil {
			break
		}
		// HAProxy's check (every 100 ms) sees it ready again.
		time.Sleep(300 * time.Millisecond)
		r.logf("W9: replica %d restarted in %s (drain %s)", i, time.Since(t0).Round(time.Millisecond), res.Drains[i].Round(time.Millisecond))
	}
	end := time.Now()
	ss := l.stop()
	res.Took = end.Sub(restart)
	res.Before, res.During = windowOf(ss, began, restart), windowOf(ss, restart, end)
	if rerr != nil {
		return res, rerr
	}
	r.logf("W9: %d requests during the restart, %d failed; p99 %s before, %s during", res.During.n, res.During.failed,
		res.Before.lat.Quantile(0.99).Round(time.Microsecond), res.During.lat.Quantile(0.99).Round(time.Microsecond))
	if res.During.failed > 0 || res.Before.failed > 0 {
		return res, fmt.Errorf("%d of %d requests failed during the rolling restart (%d before it); first: %v", res.During.failed, res.During.n,
			res.Before.failed, errors.Join(res.During.first, res.Before.first))
	}
	if res.During.n == 0 {
		return res, errors.New("no request was sent during the rolling restart")
	}
	return res, nil
}

// W6RResult is the figures of many idle agents over three replicas.
type W6RResult struct {
	// Agents ran, Sessions each, in Processes swarm processes behind
	// Balancers HAProxy processes.
	Agents, Sessions, Processes, Balancers int
	// PerReplica are each replica's sessions; Spread how many agents hold
	// their sessions on different replicas.
	PerReplica []int
	Spread     int
	// ReplicaRSS is each replica's resident memory; PerAgent the replicas'
	// growth over them with no agent, summed, per agent.
	ReplicaRSS []int64
	PerAgent   float64
	// AgentSidePerAgent is the swarm processes' memory per agent.
	AgentSidePerAgent float64
	// Connect is how long the agents took to join and hold every session.
	Connect time.Duration
}

// W6R runs W6RAgents idle agents, 2 sessions each, over three replicas
// behind HAProxy, and measures how the sessions spread and the replicas'
// memory per agent.
func (r *Run) W6R(ctx context.Context) (*Section, *W6RResult) {
	s := r.Sizes
	sec := &Section{ID: "W6R", Title: "idle agents over three relay replicas",
		Intro: haSetup + " Swarm processes in the cluster's place run N tether agents (as W6: core/agent, each of its own cluster, joined with its own " +
			"token through HAProxy), 2 sessions each, all idle. Each swarm process dials an HAProxy process of its own (HAProxy holds two descriptors " +
			"per session). Per-agent memory is the replicas' resident memory growth over the replicas with every cluster created and no agent, summed " +
			"over the three, after 2 s idle; \"agents spread\" counts the agents whose two sessions are on two different replicas."}
	if !r.haRunnable(sec) {
		return sec, nil
	}
	limit := fileLimit()
	n, sessions := s.W6RAgents, 2
	// Each swarm process holds a descriptor per session, its HAProxy two.
	perProcess := (limit - descriptorMargin) / (2 * sessions)
	if s.W6RPerProcess > 0 {
		perProcess = min(perProcess, s.W6RPerProcess)
	}
	// Each replica about a third of the sessions, with room for imbalance.
	if fits := (limit - descriptorMargin) * 3 * 2 / 3 / sessions; n > fits {
		sec.Notes = append(sec.Notes, fmt.Sprintf("**%s agents scaled down to %s**: the replicas would hold more descriptors than this machine's "+
			"hard limit of %s (RLIMIT_NOFILE) allows.", thousands(n), thousands(fits), thousands(limit)))
		n = fits
	}
	res, err := r.w6r(ctx, n, sessions, perProcess)
	if err != nil {
		r.Failf("W6R: %v", err)
		sec.Notes = append(sec.Notes, "**failed**: "+oneLine(err))
	}
	if res != nil {
		var rss []string
		for _, b := range res.ReplicaRSS {
			rss = append(rss, fmt.Sprintf("%.0f", float64(b)/(1<<20)))
		}
		sec.Tables = []report.Table{{Header: []string{"agents", "sessions per agent", "swarm processes", "HAProxy processes", "sessions per replica",
			"agents spread over two replicas", "replica RSS MiB", "replicas' KiB per agent (sum)", "agent process KiB per agent", "time to join and connect"},
			Rows: [][]string{{thousands(res.Agents), fmt.Sprint(res.Sessions), fmt.Sprint(res.Processes), fmt.Sprint(res.Balancers),
				fmt.Sprint(res.PerReplica), thousands(res.Spread), fmt.Sprint(rss), fmt.Sprintf("%.1f", res.PerAgent/1024),
				fmt.Sprintf("%.1f", res.AgentSidePerAgent/1024), res.Connect.Round(time.Millisecond).String()}}}}
	}
	return sec, res
}

func (r *Run) w6r(ctx context.Context, n, sessions, perProcess int) (*W6RResult, error) {
	t0 := time.Now()
	sw, err := contender.StartHASwarm(ctx, r.Env, contender.SwarmConfig{Agents: n, Sessions: sessions, PerProcess: perProcess}, 3)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := sw.Close(); err != nil {
			r.Failf("W6R: stop: %v", err)
		}
	}()
	h := sw.HA()
	r.logf("W6R: 3 replicas with %d clusters, %d HAProxy and %d swarm process(es) up in %s", n, h.Balancers(), len(sw.Agents()), time.Since(t0).Round(time.Millisecond))
	time.Sleep(time.Second)
	base, err := sumUsage(h.Replicas())
	if err != nil {
		return nil, err
	}
	baseAgents, err := sumUsage(sw.Agents())
	if err != nil {
		return nil, err
	}
	start := time.Now()
	if err := sw.Grow(n, r.Sizes.W6RLimit); err != nil {
		return nil, fmt.Errorf("%d agents: %w", n, err)
	}
	res := &W6RResult{Agents: n, Sessions: sessions, Processes: len(sw.Agents()), Balancers: h.Balancers(), Connect: time.Since(start)}
	time.Sleep(2 * time.Second) // idle
	connected := 0
	for _, st := range h.ReplicaStats() {
		res.PerReplica = append(res.PerReplica, st.Sessions)
		connected += st.Connected
	}
	// An agent counts once per replica it has a session on.
	res.Spread = connected - n
	var sum int64
	for _, p := range h.Replicas() {
		u, err := p.Usage()
		if err != nil {
			return nil, err
		}
		res.ReplicaRSS = append(res.ReplicaRSS, u.RSS)
		sum += u.RSS
	}
	res.PerAgent = float64(sum-base.RSS) / float64(n)
	a, err := sumUsage(sw.Agents())
	if err != nil {
		return nil, err
	}
	res.AgentSidePerAgent = float64(a.RSS-baseAgents.RSS) / float64(n)
	r.logf("W6R: %d agents: sessions per replica %v, %d spread over two replicas, %.1f KiB per agent over the replicas", n, res.PerReplica, res.Spread, res.PerAgent/1024)
	return res, nil
}

package workload

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"github.com/tether-k8s/tether/bench/internal/contender"
	"github.com/tether-k8s/tether/bench/internal/node"
	"github.com/tether-k8s/tether/bench/internal/report"
)

// W6Level is the relay's cost at one number of idle agents.
type W6Level struct {
	// Agents is how many idle agents run, Sessions how many sessions each
	// holds, Processes in how many swarm processes.
	Agents, Sessions, Processes int
	// RelayRSS is the relay's resident memory; RelayPerAgent and
	// GoroutinesPerAgent its growth over the relay without agents, per
	// agent.
	RelayRSS                          int64
	RelayPerAgent, GoroutinesPerAgent float64
	// AgentSidePerAgent is the swarm processes' memory per agent.
	AgentSidePerAgent float64
	// Connect is how long the agents of this step took to join and hold
	// their sessions.
	Connect time.Duration
}

// W7Result is the relay-restart figures.
type W7Result struct {
	// Agents is how many agents had to come back, with Sessions each.
	Agents, Sessions int
	// To50, To99 and To100 are from the kill to that share of the agents
	// holding a session with the new relay; AllSessions to every session.
	To50, To99, To100, AllSessions time.Duration
	// PeakCPU is the new relay's highest CPU use over a 200 ms window, in
	// cores.
	PeakCPU float64
	// Err is why it did not finish, if so.
	Err error
}

// W6 measures idle agents on one relay (W6), then kills that relay with
// SIGKILL and times the agents' return to a new one (W7), once for each of
// W6Sessions sessions per agent, with a swarm of its own. tether only: the
// peers' agents are one process each (remotedialer's could share one, but
// the harness does not do it yet).
func (r *Run) W6(ctx context.Context) (*Section, []W6Level, []*W7Result) {
	s := r.Sizes
	sec := &Section{ID: "W6/W7", Title: "idle agents on one relay, and the relay's kill -9"}
	limit := fileLimit()
	var levels []W6Level
	var w7s []*W7Result
	for _, sessions := range s.W6Sessions {
		// Each agent costs the relay and its swarm process one descriptor
		// per session (core/agent closes its join connection).
		fits := (limit - descriptorMargin) / sessions
		var counts []int
		for _, n := range s.W6Agents {
			if n <= fits {
				counts = append(counts, n)
				continue
			}
			sec.Notes = append(sec.Notes, fmt.Sprintf("**%s agents with %d sessions each not measured**: the relay would hold about %s open "+
				"descriptors (one per session), above this machine's hard limit of %s (RLIMIT_NOFILE, which the harness cannot raise here).",
				thousands(n), sessions, thousands(sessions*n), thousands(limit)))
		}
		if len(counts) == 0 {
			r.Failf("W6: no agent count fits the descriptor limit %d with %d sessions per agent", limit, sessions)
			continue
		}
		perProcess := fits
		if s.W6AgentsPerProcess > 0 {
			perProcess = min(perProcess, s.W6AgentsPerProcess)
		}
		ls, w7, err := r.swarmLevels(ctx, counts, sessions, perProcess)
		levels = append(levels, ls...)
		if w7 != nil {
			w7s = append(w7s, w7)
		}
		if err != nil {
			r.Failf("W6, %d sessions per agent: %v", sessions, err)
			sec.Notes = append(sec.Notes, fmt.Sprintf("**%d sessions per agent failed**: %s", sessions, oneLine(err)))
		}
	}

	t := report.Table{Header: []string{"sessions per agent", "agents", "swarm processes", "relay RSS MiB", "relay KiB per agent", "relay KiB per session",
		"relay goroutines per agent", "agent process KiB per agent", "time to join and connect this step"}}
	plot := report.Plot{Name: "w6-memory-agents", Title: "W6: relay memory against idle agents", XLabel: "idle agents", YLabel: "relay RSS (MiB)"}
	series := map[int]*report.Series{}
	var order []int
	for _, l := range levels {
		t.Rows = append(t.Rows, []string{fmt.Sprint(l.Sessions), fmt.Sprint(l.Agents), fmt.Sprint(l.Processes), fmt.Sprintf("%.0f", float64(l.RelayRSS)/(1<<20)),
			fmt.Sprintf("%.1f", l.RelayPerAgent/1024), fmt.Sprintf("%.1f", l.RelayPerAgent/1024/float64(l.Sessions)),
			fmt.Sprintf("%.1f", l.GoroutinesPerAgent), fmt.Sprintf("%.1f", l.AgentSidePerAgent/1024), l.Connect.Round(time.Millisecond).String()})
		sr, ok := series[l.Sessions]
		if !ok {
			sr = &report.Series{Name: fmt.Sprintf("tether relay, %d session(s) per agent", l.Sessions)}
			series[l.Sessions] = sr
			order = append(order, l.Sessions)
		}
		sr.Points = append(sr.Points, report.Point{X: float64(l.Agents), Y: float64(l.RelayRSS) / (1 << 20)})
	}
	for _, k := range order {
		plot.Series = append(plot.Series, *series[k])
	}
	t7 := report.Table{Header: []string{"sessions per agent", "agents", "50% back", "99% back", "100% back", "every session back", "new relay's peak CPU (cores)"}}
	for _, w7 := range w7s {
		if w7.Err != nil {
			t7.Rows = append(t7.Rows, []string{fmt.Sprint(w7.Sessions), fmt.Sprint(w7.Agents), "failed: " + oneLine(w7.Err), "", "", "", ""})
			continue
		}
		t7.Rows = append(t7.Rows, []string{fmt.Sprint(w7.Sessions), fmt.Sprint(w7.Agents), sec2(w7.To50), sec2(w7.To99), sec2(w7.To100),
			sec2(w7.AllSessions), fmt.Sprintf("%.2f", w7.PeakCPU)})
	}
	t7.Caption = "**W7: the relay killed with SIGKILL and restarted at once on the same registry and ports, at the most agents measured " +
		"with each number of sessions** (times from the kill; the agents' processes share the machine's 2 cores with the new relay, so both ends " +
		"of every TLS handshake of the reconnection storm run here: slower than with agents on machines of their own)"
	sec.Intro = fmt.Sprintf("tether only. One relay; swarm processes in the cluster's place run N tether agents (core/agent, each agent of "+
		"its own cluster, joined with its own token), all idle: once with %s session(s) per agent, each with a relay and a swarm of its own "+
		"(core/agent's default is 2, `--sessions`; each session is a TLS connection and a yamux session on the relay). Per-agent figures "+
		"are the growth over the relay with no agent, after 2 s idle; per session, that divided by the sessions per agent. The peers are "+
		"not measured here: chisel, frp and Konnectivity run one process per agent (thousands of processes do not fit this machine), and "+
		"remotedialer's agents could share one but the harness does not do it yet.", joinInts(s.W6Sessions))
	sec.Tables = []report.Table{t, t7}
	sec.Plots = []report.Plot{plot}
	return sec, levels, w7s
}

// swarmLevels runs W6 with one swarm of agents holding sessions sessions
// each, at perProcess agents per swarm process at most, growing through
// counts; then W7 at the last count.
func (r *Run) swarmLevels(ctx context.Context, counts []int, sessions, perProcess int) ([]W6Level, *W7Result, error) {
	maxAgents := counts[len(counts)-1]
	t0 := time.Now()
	sw, err := contender.StartSwarm(ctx, r.Env, contender.SwarmConfig{Agents: maxAgents, Sessions: sessions, PerProcess: perProcess})
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if err := sw.Close(); err != nil {
			r.Failf("W6: stop: %v", err)
		}
	}()
	r.logf("W6: relay with %d clusters and %d swarm process(es) up in %s", maxAgents, len(sw.Agents()), time.Since(t0).Round(time.Millisecond))
	time.Sleep(time.Second)
	baseRelay, baseRelayG, err := usageAndGoroutines(sw.Relay())
	if err != nil {
		return nil, nil, err
	}
	baseAgents, err := sumUsage(sw.Agents())
	if err != nil {
		return nil, nil, err
	}
	var levels []W6Level
	for _, n := range counts {
		start := time.Now()
		if err := sw.Grow(n, 10*time.Minute); err != nil {
			return levels, &W7Result{Agents: n, Sessions: sessions, Err: fmt.Errorf("not run: W6 failed at %d agents", n)},
				fmt.Errorf("%d agents: %w", n, err)
		}
		l := W6Level{Agents: n, Sessions: sessions, Processes: (n + perProcess - 1) / perProcess, Connect: time.Since(start)}
		time.Sleep(2 * time.Second) // idle
		u, g, err := usageAndGoroutines(sw.Relay())
		if err != nil {
			return levels, nil, err
		}
		a, err := sumUsage(sw.Agents())
		if err != nil {
			return levels, nil, err
		}
		_ = sw.Relay().Call("heap", nil, nil) // a heap profile, with -profile
		l.RelayRSS = u.RSS
		l.RelayPerAgent = float64(u.RSS-baseRelay.RSS) / float64(n)
		l.GoroutinesPerAgent = float64(g-baseRelayG) / float64(n)
		l.AgentSidePerAgent = float64(a.RSS-baseAgents.RSS) / float64(n)
		levels = append(levels, l)
		r.logf("W6: %d agents, %d session(s) each: relay %.1f KiB and %.1f goroutines per agent", n, sessions, l.RelayPerAgent/1024, l.GoroutinesPerAgent)
	}
	return levels, r.w7(ctx, sw, maxAgents), nil
}

// sumUsage adds up the usage of processes.
func sumUsage(ps []*node.Proc) (node.Usage, error) {
	var sum node.Usage
	for _, p := range ps {
		u, err := p.Usage()
		if err != nil {
			return sum, err
		}
		sum.CPU += u.CPU
		sum.RSS += u.RSS
	}
	return sum, nil
}

// w7 kills the swarm's relay and times the agents' return.
func (r *Run) w7(ctx context.Context, sw *contender.Swarm, n int) *W7Result {
	out := &W7Result{Agents: n, Sessions: sw.Sessions()}
	killed, err := sw.KillRelay(ctx)
	if err != nil {
		out.Err = err
		r.Failf("W7: %v", err)
		return out
	}
	deadline := killed.Add(2 * time.Minute)
	prev, err := sw.Relay().Usage()
	if err != nil {
		out.Err = err
		return out
	}
	prevAt := time.Now()
	for time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(200 * time.Millisecond)
		var st contender.RelayStats
		if err := sw.Relay().Stats(&st); err != nil {
			out.Err = err
			break
		}
		u, err := sw.Relay().Usage()
		if err != nil {
			out.Err = err
			break
		}
		now := time.Now()
		out.PeakCPU = max(out.PeakCPU, (u.CPU-prev.CPU).Seconds()/now.Sub(prevAt).Seconds())
		prev, prevAt = u, now
		since := now.Sub(killed)
		if out.To50 == 0 && st.Connected*2 >= n {
			out.To50 = since
		}
		if out.To99 == 0 && st.Connected*100 >= 99*n {
			out.To99 = since
		}
		if out.To100 == 0 && st.Connected >= n {
			out.To100 = since
		}
		if st.Sessions >= sw.Sessions()*n {
			out.AllSessions = since
			break
		}
	}
	if out.Err == nil && out.AllSessions == 0 {
		out.Err = fmt.Errorf("not every session back after %s", time.Since(killed).Round(time.Second))
	}
	if out.Err != nil {
		r.Failf("W7: %v", out.Err)
	} else {
		r.logf("W7: %d agents, %d session(s) each: 99%% back in %s, 100%% in %s, every session in %s; relay CPU peak %.2f cores", n, out.Sessions, sec2(out.To99), sec2(out.To100), sec2(out.AllSessions), out.PeakCPU)
	}
	return out
}

// fileLimit returns this process's open-file limit (its children's too).
func fileLimit() int {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 1024
	}
	return int(min(l.Cur, 1<<30))
}

// usageAndGoroutines reads a role process's usage and goroutine count.
func usageAndGoroutines(p *node.Proc) (node.Usage, int, error) {
	u, err := p.Usage()
	if err != nil {
		return u, 0, err
	}
	var st struct{ Goroutines int }
	if err := p.Stats(&st); err != nil {
		return u, 0, err
	}
	return u, st.Goroutines, nil
}

// sec2 formats a duration in seconds.
func sec2(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }

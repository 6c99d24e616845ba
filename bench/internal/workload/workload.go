package workload

import (
	"context"
	"fmt"
	"io"
	"math"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tether-k8s/tether/bench/internal/contender"
	"github.com/tether-k8s/tether/bench/internal/load"
	"github.com/tether-k8s/tether/bench/internal/node"
	"github.com/tether-k8s/tether/bench/internal/report"
	"github.com/tether-k8s/tether/bench/internal/target"
)

// Contestant is a contender in this run: running, or with the reason it is
// not.
type Contestant struct {
	// Contender is what runs.
	Contender contender.Contender
	// Inst is the running contender; nil when Err is set.
	Inst *contender.Instance
	// Err says why the contender does not run (it did not build or start).
	Err error
}

// Name returns the contender's name.
func (c *Contestant) Name() string { return c.Contender.Name() }

// Peer reports whether the contender is a peer (not direct, not tether or
// one of tether's A/B variants).
func (c *Contestant) Peer() bool {
	n := c.Name()
	return n != "direct" && !strings.HasPrefix(n, "tether")
}

// Run is one benchmark run: the environment, the running contenders, and
// the failures that make it exit non-zero.
type Run struct {
	// Env is where the contenders run.
	Env *contender.Env
	// Target is the target server's process.
	Target *node.Proc
	// Sizes bounds every workload.
	Sizes Sizes
	// Contestants are the contenders; the first is the direct baseline.
	Contestants []*Contestant
	// Progress receives a line per step.
	Progress io.Writer

	mu       sync.Mutex
	failures []string
}

// Failf records a failure of the harness or of a contender (one that failed
// every request, or tether failing any): the run exits non-zero.
func (r *Run) Failf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failures = append(r.failures, fmt.Sprintf(format, args...))
	r.logf("FAIL: "+format, args...)
}

// Failures returns what Failf recorded.
func (r *Run) Failures() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.failures...)
}

func (r *Run) logf(format string, args ...any) {
	if r.Progress != nil {
		fmt.Fprintf(r.Progress, "bench: "+format+"\n", args...)
	}
}

// running returns the contestants that run.
func (r *Run) running() []*Contestant {
	var out []*Contestant
	for _, c := range r.Contestants {
		if c.Inst != nil {
			out = append(out, c)
		}
	}
	return out
}

// checkErrors fails the run when c failed every request of a workload, or
// when tether failed any.
func (r *Run) checkErrors(w string, c *Contestant, n load.Counter) {
	switch {
	case n.OK == 0:
		r.Failf("%s: %s: no request succeeded (%d failed; first: %v)", w, c.Name(), n.Failed, n.First)
	case n.Failed > 0 && !c.Peer():
		r.Failf("%s: %s: %d of %d requests failed; first: %v", w, c.Name(), n.Failed, n.OK+n.Failed, n.First)
	case n.Failed > 0:
		r.logf("%s: %s: %d of %d requests failed; first: %v", w, c.Name(), n.Failed, n.OK+n.Failed, n.First)
	}
}

// Sizes bounds the workloads: counts, durations and sizes.
type Sizes struct {
	// W1Requests is how many sequential small GETs W1 times (after
	// W1Warmup); W1NewConns how many on a new connection each.
	W1Requests, W1Warmup, W1NewConns int
	// W2Concurrency are W2's levels; W2Duration how long each is measured,
	// after W2Warmup; W2Rounds how many times the contenders take turns.
	W2Concurrency        []int
	W2Duration, W2Warmup time.Duration
	W2Rounds             int
	// W3Bytes is W3's response size; W3Limit caps each download's time;
	// W3RTTs are the added round-trip times (namespaces only, but 0).
	W3Bytes int64
	W3Limit time.Duration
	W3RTTs  []time.Duration
	// W4Streams healthy downloads of W4Chunk bytes each, repeated for
	// W4Duration, without and then with a stalled one.
	W4Streams  int
	W4Chunk    int64
	W4Duration time.Duration
	// W5Watches are the numbers of idle watches W5 holds open at once, one
	// level after the other; W5Events events are sent to all of them.
	W5Watches []int
	W5Events  int
	// W5SharedMax is the most watches a level may hold to run every
	// contender as it started (tether's relay opens 1,024 streams by
	// default); larger levels run only the contenders with a set-up for
	// many watches (contender.WatchScaler), started afresh.
	W5SharedMax int
	// W5WatchesPerProxy is the most watches one caller-side process
	// (tether-proxy) carries at W5's larger levels; more watches run more
	// of them. Each watch holds two of its descriptors.
	W5WatchesPerProxy int
	// W6Agents are the numbers of idle agents W6 measures, growing; W7
	// kills the relay with the last that fits the descriptor limit.
	W6Agents []int
	// W6Sessions are the sessions per agent W6 and W7 measure, one swarm
	// after the other (core/agent's default is 2).
	W6Sessions []int
	// W6AgentsPerProcess is the most agents one swarm process runs. Zero
	// means as many as its descriptor limit allows.
	W6AgentsPerProcess int
	// W8RoundTrips is how many W8RoundTripBytes messages W8 echoes.
	W8RoundTrips, W8RoundTripBytes int
	// W6RAgents is how many idle agents W6R runs over three replicas (2
	// sessions each); W6RPerProcess the most one swarm process (and its
	// HAProxy) carries, zero as many as the descriptor limit allows;
	// W6RLimit bounds their joining.
	W6RAgents, W6RPerProcess int
	W6RLimit                 time.Duration
	// W7RWorkers send short requests through W7R; W7RBefore is the load
	// before the kill, W7RAfter after the agent is back on two replicas,
	// W7RLimit the longest wait for that.
	W7RWorkers                    int
	W7RBefore, W7RAfter, W7RLimit time.Duration
	// W9Workers send short requests through W9; W9Before is the load
	// before the restart; W9Drain each replica's drain timeout
	// (--drain-timeout).
	W9Workers         int
	W9Before, W9Drain time.Duration
}

// FullSizes are the sizes of `make bench`.
func FullSizes() Sizes {
	return Sizes{
		W1Requests: 3000, W1Warmup: 200, W1NewConns: 50,
		W2Concurrency: []int{32, 128}, W2Duration: 8 * time.Second, W2Warmup: time.Second, W2Rounds: 3,
		W3Bytes: 256 << 20, W3Limit: 30 * time.Second, W3RTTs: []time.Duration{0, 10 * time.Millisecond, 50 * time.Millisecond},
		W4Streams: 32, W4Chunk: 16 << 20, W4Duration: 6 * time.Second,
		W5Watches: []int{1000, 10000}, W5Events: 10, W5SharedMax: 1000, W5WatchesPerProxy: 2500,
		W6Agents: []int{1000, 5000, 10000}, W6Sessions: []int{2, 1},
		W8RoundTrips: 2000, W8RoundTripBytes: 64,
		W6RAgents: 10000, W6RLimit: 15 * time.Minute,
		W7RWorkers: 8, W7RBefore: 5 * time.Second, W7RAfter: 3 * time.Second, W7RLimit: time.Minute,
		W9Workers: 32, W9Before: 8 * time.Second, W9Drain: 20 * time.Second,
	}
}

// QuickSizes are the sizes of `make bench-quick`: a few seconds per
// workload, enough to catch a harness that broke.
func QuickSizes() Sizes {
	return Sizes{
		W1Requests: 300, W1Warmup: 30, W1NewConns: 10,
		W2Concurrency: []int{32, 128}, W2Duration: time.Second, W2Warmup: 250 * time.Millisecond, W2Rounds: 1,
		W3Bytes: 32 << 20, W3Limit: 1500 * time.Millisecond, W3RTTs: []time.Duration{0, 50 * time.Millisecond},
		W4Streams: 16, W4Chunk: 1 << 20, W4Duration: 600 * time.Millisecond,
		W5Watches: []int{100, 300}, W5Events: 2, W5SharedMax: 100, W5WatchesPerProxy: 150,
		// Several swarm processes even at this size: the split is tested.
		W6Agents: []int{50, 150}, W6Sessions: []int{2, 1}, W6AgentsPerProcess: 100,
		W8RoundTrips: 300, W8RoundTripBytes: 64,
		// Two swarm processes and two HAProxy processes: the split is
		// tested.
		W6RAgents: 150, W6RPerProcess: 100, W6RLimit: 2 * time.Minute,
		W7RWorkers: 4, W7RBefore: time.Second, W7RAfter: time.Second, W7RLimit: 30 * time.Second,
		W9Workers: 32, W9Before: 2 * time.Second, W9Drain: 2 * time.Second,
	}
}

// Usage is the CPU time of each component of a contender, of the target
// and of this process (the load generator), at one moment.
type Usage struct {
	// Procs are by component name (Proc.Component), summed over the
	// processes of one component.
	Procs map[string]node.Usage
	// Target is the target server's; Self this process's CPU time.
	Target node.Usage
	Self   time.Duration
}

// usage reads the CPU time of c's components, the target's and this
// process's.
func (r *Run) usage(c *Contestant) (Usage, error) {
	u := Usage{Procs: map[string]node.Usage{}}
	for _, p := range c.Inst.Procs {
		pu, err := p.Usage()
		if err != nil {
			return u, err
		}
		sum := u.Procs[p.Component]
		sum.CPU += pu.CPU
		sum.RSS += pu.RSS
		if _, seen := u.Procs[p.Component]; seen && sum.Syscalls < 0 || pu.Syscalls < 0 {
			sum.Syscalls = -1
		} else {
			sum.Syscalls += pu.Syscalls
		}
		u.Procs[p.Component] = sum
	}
	var err error
	if u.Target, err = r.Target.Usage(); err != nil {
		return u, err
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return u, fmt.Errorf("workload: getrusage: %w", err)
	}
	u.Self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return u, nil
}

// ComponentOrder is the order of the per-component columns: the caller's
// side, the relay, the cluster's side.
var ComponentOrder = []string{"proxy", "relay", "agent"}

// Warm sends small GETs through every contestant until one succeeds (or
// limit passes): the contestant's path works end to end. A contestant whose
// path does not work is stopped and marked.
func (r *Run) Warm(ctx context.Context, limit time.Duration) {
	for _, c := range r.running() {
		if err := r.warmOne(ctx, c, limit); err != nil {
			c.Err = err
			_ = c.Inst.Close()
			c.Inst = nil
			r.Failf("%s: %v", c.Name(), c.Err)
			continue
		}
		r.logf("%s: path works", c.Name())
	}
}

// warmOne sends small GETs through c until one succeeds or limit passes.
func (r *Run) warmOne(ctx context.Context, c *Contestant, limit time.Duration) error {
	return r.warmDial(ctx, c.Inst.Dial, limit)
}

// warmDial sends small GETs through dial until one succeeds or limit
// passes.
func (r *Run) warmDial(ctx context.Context, dial load.Dial, limit time.Duration) error {
	client := load.NewClient(dial, 1)
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(limit)
	for {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := load.Get(rctx, client, target.SmallPath, target.SmallBodySize)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("no request got through in %s: %w", limit, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// addedRatio formats a/b for added latencies: "-" when the best peer added
// nothing measurable (b ≤ 0, noise), where a ratio means nothing.
func addedRatio(a, b float64) string {
	if b <= 0 {
		return "-"
	}
	return ratio(a, b)
}

// ratio formats a/b, or "-" when it means nothing.
func ratio(a, b float64) string {
	if b == 0 || math.IsNaN(a) || math.IsNaN(b) || math.IsInf(a/b, 0) {
		return "-"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

// us formats a duration in microseconds.
func us(d time.Duration) string { return fmt.Sprintf("%d", d.Microseconds()) }

// ms formats a duration in milliseconds.
func ms(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond)) }

// notRunning returns rows for the contestants that do not run, saying why.
func (r *Run) notRunning(cols int) [][]string {
	var rows [][]string
	for _, c := range r.Contestants {
		if c.Inst != nil {
			continue
		}
		row := make([]string, cols)
		row[0] = c.Name()
		row[1] = "not run: " + oneLine(c.Err)
		for i := 2; i < cols; i++ {
			row[i] = ""
		}
		rows = append(rows, row)
	}
	return rows
}

// oneLine shortens an error to one line for a table cell.
func oneLine(err error) string {
	if err == nil {
		return ""
	}
	s := strings.Join(strings.Fields(err.Error()), " ")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

// bestPeer returns the index of the peer with the best value (better says
// which of two values is better), or -1 when no peer has one.
func bestPeer(cs []*Contestant, vals []float64, better func(a, b float64) bool) int {
	best := -1
	for i, c := range cs {
		if !c.Peer() || math.IsNaN(vals[i]) {
			continue
		}
		if best < 0 || better(vals[i], vals[best]) {
			best = i
		}
	}
	return best
}

// Section is a workload's outcome for the report.
type Section = report.Section

package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/tether-k8s/tether/bench/internal/contender"
	"github.com/tether-k8s/tether/bench/internal/node"
	"github.com/tether-k8s/tether/bench/internal/report"
	"github.com/tether-k8s/tether/bench/internal/target"
	"github.com/tether-k8s/tether/bench/internal/workload"
	"github.com/tether-k8s/tether/fixtures/netns"
)

// Workloads are the workloads the harness runs, in the report's order.
var Workloads = []string{"W1", "W2", "W3", "W4", "W5", "W6", "W6R", "W7R", "W8", "W9"}

// runOrder is the order the harness runs the workloads in: W5, whose
// figures are resident-memory growth, before the bulk transfers of W3 and
// W4, whose buffers the contenders' runtimes return to the system lazily
// (measured after them, a baseline could include them, and the growth
// come out negative).
var runOrder = []string{"W1", "W2", "W5", "W3", "W4", "W6", "W8", "W7R", "W9", "W6R"}

// inRunOrder returns ws sorted by runOrder; a name runOrder lacks keeps
// its place after the known ones.
func inRunOrder(ws []string) []string {
	out := slices.Clone(ws)
	rank := func(w string) int {
		if i := slices.Index(runOrder, w); i >= 0 {
			return i
		}
		return len(runOrder)
	}
	slices.SortStableFunc(out, func(a, b string) int { return rank(a) - rank(b) })
	return out
}

// inReportOrder returns the index of w in Workloads, or len(Workloads).
func inReportOrder(w string) int {
	if i := slices.Index(Workloads, w); i >= 0 {
		return i
	}
	return len(Workloads)
}

// Options configures a run.
type Options struct {
	// Quick runs every workload for a few seconds (QuickSizes) instead of
	// the full sizes.
	Quick bool
	// Out is where the markdown report goes (plots beside it). Empty
	// writes none.
	Out string
	// Contenders names the contenders to run; nil means all. "direct" is
	// always run: every figure is a ratio to it.
	Contenders []string
	// Workloads names the workloads to run; nil means all.
	Workloads []string
	// Namespaces is "on" (network namespaces, or fail), "off" (loopback)
	// or "auto" (namespaces when this process can make them). Zero means
	// "auto".
	Namespaces string
	// AB adds tether's A/B variants of its defaults (docs/performance.md):
	// yamux stream windows of 16 MiB (with a 16 GiB stream memory, so the
	// relay still opens 1,024 streams, W5's 1,000 watches) and 256 KiB (against
	// tunnel.DefaultStreamWindow, 4 MiB), a proxy that keeps 16 idle
	// tunnels (against proxy.DefaultMaxIdleTunnels, 256), response bodies
	// flushed after every write (against streaming ones only), and yamux frames
	// written to TLS in one write instead of two.
	AB bool
	// PeersDir holds the peers' nested modules. Zero means "peers".
	PeersDir string
	// CacheDir keeps the peers' binaries between runs. Zero means ".cache".
	CacheDir string
	// W2Concurrency replaces W2's concurrency levels when not empty.
	W2Concurrency []int
	// W5Watches replaces W5's levels (idle watches) when not empty.
	W5Watches []int
	// W6Agents replaces W6's levels (idle agents) when not empty.
	W6Agents []int
	// W6RAgents replaces W6R's idle agents (over three replicas) when not
	// zero.
	W6RAgents int
	// Keep keeps the run's directory (logs, state) instead of removing it.
	Keep bool
	// Progress receives a line per step. Nil discards.
	Progress io.Writer
}

// Result is what a run measured.
type Result struct {
	// W1 and W2 are the results of those workloads, by contender (and
	// concurrency), when they ran.
	W1 map[string]*workload.W1Result
	// W2 is by concurrency, then contender.
	W2 map[int]map[string]*workload.W2Result
	// Failures are why the run failed; empty when it passed.
	Failures []string
	// Report is the document written to Options.Out.
	Report *report.Report
	// Dir is the run's directory (removed unless Options.Keep).
	Dir string
}

// Run runs the benchmark.
func Run(ctx context.Context, opts Options) (_ *Result, err error) {
	start := time.Now()
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	if opts.PeersDir == "" {
		opts.PeersDir = "peers"
	}
	if opts.CacheDir == "" {
		opts.CacheDir = ".cache"
	}
	if opts.Workloads == nil {
		opts.Workloads = Workloads
	}
	raiseFileLimit()
	namespaces := false
	switch opts.Namespaces {
	case "on":
		namespaces = true
	case "off":
	case "", "auto":
		namespaces = netns.Check() == nil
	default:
		return nil, fmt.Errorf("harness: Options.Namespaces %q: want on, off or auto", opts.Namespaces)
	}
	topo, err := node.NewTopology(ctx, namespaces)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, topo.Close()) }()
	dir, err := os.MkdirTemp("", "tether-bench-")
	if err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	if !opts.Keep {
		defer os.RemoveAll(dir)
	}
	fmt.Fprintf(opts.Progress, "bench: run directory %s; %s\n", dir, topo.Describe())

	contenders := selectContenders(opts)
	bins, buildErrs := contender.Build(ctx, contenders, opts.PeersDir, opts.CacheDir, opts.Progress)
	env := &contender.Env{Topo: topo, Dir: dir, Bins: bins}
	targetProc, err := node.Start(ctx, topo, dir, node.Spec{Name: "target", Place: node.Cluster, Role: "target",
		Args: target.Args{Listen: topo.Bind(node.Cluster) + ":0"}})
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, targetProc.Stop()) }()
	var tr target.Ready
	if err := jsonUnmarshal(targetProc.Ready, &tr); err != nil {
		return nil, err
	}
	env.TargetPort = tr.Port

	sizes := workload.FullSizes()
	if opts.Quick {
		sizes = workload.QuickSizes()
	}
	if len(opts.W2Concurrency) > 0 {
		sizes.W2Concurrency = opts.W2Concurrency
	}
	if len(opts.W5Watches) > 0 {
		sizes.W5Watches = opts.W5Watches
	}
	if len(opts.W6Agents) > 0 {
		sizes.W6Agents = opts.W6Agents
	}
	if opts.W6RAgents > 0 {
		sizes.W6RAgents = opts.W6RAgents
	}
	run := &workload.Run{Env: env, Target: targetProc, Sizes: sizes, Progress: opts.Progress}
	for _, c := range contenders {
		cs := &workload.Contestant{Contender: c}
		run.Contestants = append(run.Contestants, cs)
		if err := buildErrs[c.Name()]; err != nil {
			cs.Err = err
			run.Failf("%s: %v", c.Name(), err)
			continue
		}
		t0 := time.Now()
		inst, err := c.Start(ctx, env)
		if err != nil {
			cs.Err = err
			run.Failf("%s: start: %v", c.Name(), err)
			continue
		}
		cs.Inst = inst
		fmt.Fprintf(opts.Progress, "bench: %s started in %s\n", c.Name(), time.Since(t0).Round(time.Millisecond))
	}
	defer func() {
		for _, c := range run.Contestants {
			if c.Inst != nil {
				err = errors.Join(err, c.Inst.Close())
			}
		}
	}()
	run.Warm(ctx, 30*time.Second)

	res := &Result{Dir: dir}
	rep := &report.Report{Title: "tether benchmarks"}
	type ran struct {
		w   string
		sec *report.Section
	}
	var done []ran
	for _, w := range inRunOrder(opts.Workloads) {
		if ctx.Err() != nil {
			break
		}
		t0 := time.Now()
		var sec *report.Section
		switch w {
		case "W1":
			sec, res.W1 = run.W1(ctx)
		case "W2":
			sec, res.W2 = run.W2(ctx)
		case "W3":
			sec, _ = run.W3(ctx)
		case "W4":
			sec, _ = run.W4(ctx)
		case "W5":
			sec, _ = run.W5(ctx)
		case "W6":
			sec, _, _ = run.W6(ctx)
		case "W8":
			sec, _ = run.W8(ctx)
		case "W6R":
			sec, _ = run.W6R(ctx)
		case "W7R":
			sec, _ = run.W7R(ctx)
		case "W9":
			sec, _ = run.W9(ctx)
		default:
			run.Failf("no workload %s", w)
			continue
		}
		fmt.Fprintf(opts.Progress, "bench: %s took %s\n", w, time.Since(t0).Round(time.Millisecond))
		done = append(done, ran{w, sec})
	}
	slices.SortStableFunc(done, func(a, b ran) int { return inReportOrder(a.w) - inReportOrder(b.w) })
	for _, d := range done {
		rep.Sections = append(rep.Sections, d.sec)
	}
	if err := ctx.Err(); err != nil {
		run.Failf("interrupted: %v", err)
	}
	res.Failures = run.Failures()
	rep.Preamble = preamble(opts, topo, run, time.Since(start))
	res.Report = rep
	if opts.Out != "" {
		if err := rep.Write(opts.Out); err != nil {
			return res, err
		}
		fmt.Fprintf(opts.Progress, "bench: wrote %s\n", opts.Out)
	}
	return res, nil
}

// selectContenders returns the contenders opts asks for, direct first.
func selectContenders(opts Options) []contender.Contender {
	all := []contender.Contender{contender.Direct{}, contender.Tether{}}
	if opts.AB {
		all = append(all, contender.Tether{YamuxWindow: 16 << 20, StreamMemory: 16 << 30, Label: "tether-window16M"},
			contender.Tether{YamuxWindow: 256 << 10, Label: "tether-window256K"},
			contender.Tether{IdleTunnels: 16, Label: "tether-idle16"},
			contender.Tether{FlushEvery: true, Label: "tether-flushall"},
			contender.Tether{Coalesce: true, Label: "tether-coalesce"})
	}
	all = append(all, contender.Peers()...)
	var out []contender.Contender
	for _, c := range all {
		if c.Name() == "direct" || opts.Contenders == nil || slices.Contains(opts.Contenders, c.Name()) ||
			(strings.HasPrefix(c.Name(), "tether-") && slices.Contains(opts.Contenders, "tether")) {
			out = append(out, c)
		}
	}
	return out
}

// raiseFileLimit lifts the open-file limit to its hard maximum: W5 holds
// thousands of connections, several descriptors each. Children inherit it.
// Where the hard limit cannot be raised (a container's), W5 and W6 fit their
// levels to it.
func raiseFileLimit() {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return
	}
	if os.Geteuid() == 0 && l.Max < 1<<20 {
		l.Max = 1 << 20
	}
	l.Cur = l.Max
	_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
}

// preamble describes the machine, the versions and the setup.
func preamble(opts Options, topo *node.Topology, run *workload.Run, took time.Duration) []string {
	mode := "full (`make bench`)"
	if opts.Quick {
		mode = "quick (`make bench-quick`): figures from a few seconds per workload, for catching breakage, not for quoting"
	}
	var uts syscall.Utsname
	_ = syscall.Uname(&uts)
	machine := fmt.Sprintf("%s, %d CPUs, %s memory, Linux %s", cpuModel(), runtime.NumCPU(), memTotal(), cstr(uts.Release[:]))
	p := []string{
		"Generated by `bench/` (`make bench`); do not edit by hand. Every figure is measured in the same run as the direct baseline " +
			"and the peers, and given as a ratio to them: the machine is small and noisy, so absolute numbers move from run to run.",
		fmt.Sprintf("- Date: %s\n- Mode: %s\n- Machine: %s\n- Go: %s (every component, but remotedialer: see below)\n- Network: %s\n- Run took %s",
			time.Now().UTC().Format("2006-01-02 15:04 MST"), mode, machine, runtime.Version(), topo.Describe(), took.Round(time.Second)),
	}
	t := report.Table{Header: []string{"contender", "version", "setup"}}
	for _, c := range run.Contestants {
		setup := c.Contender.Describe()
		if c.Err != nil {
			setup = "**not run**: " + strings.Join(strings.Fields(c.Err.Error()), " ")
		}
		t.Rows = append(t.Rows, []string{c.Name(), c.Contender.Version(), setup})
	}
	var b strings.Builder
	b.WriteString("### Contenders\n\n")
	writeTable(&b, t)
	if f := run.Failures(); len(f) > 0 {
		b.WriteString("\n**This run failed:**\n\n")
		for _, x := range f {
			fmt.Fprintf(&b, "- %s\n", strings.Join(strings.Fields(x), " "))
		}
	}
	return append(p, b.String())
}

// writeTable renders t as markdown into b (report.Table renders inside a
// report; the preamble is plain text).
func writeTable(b *strings.Builder, t report.Table) {
	fmt.Fprintf(b, "| %s |\n|%s\n", strings.Join(t.Header, " | "), strings.Repeat(" --- |", len(t.Header)))
	for _, r := range t.Rows {
		fmt.Fprintf(b, "| %s |\n", strings.Join(r, " | "))
	}
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

func memTotal() string {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return "unknown"
	}
	var kb int64
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "MemTotal:") {
			_, _ = fmt.Sscanf(strings.TrimPrefix(l, "MemTotal:"), "%d", &kb)
		}
	}
	return fmt.Sprintf("%.0f GiB", float64(kb)/(1<<20))
}

func cstr(b []int8) string {
	var s []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}

func jsonUnmarshal(raw []byte, v any) error {
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("harness: %w", err)
	}
	return nil
}

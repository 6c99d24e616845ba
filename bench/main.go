package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tether-k8s/tether/bench/internal/contender"
	"github.com/tether-k8s/tether/bench/internal/harness"
	"github.com/tether-k8s/tether/bench/internal/node"
)

func main() {
	if node.IsChild() {
		os.Exit(node.ChildMain(contender.Roles()))
	}
	os.Exit(run())
}

func run() int {
	var opts harness.Options
	var contenders, workloads string
	flag.BoolVar(&opts.Quick, "quick", false, "run every workload for a few seconds (make bench-quick)")
	flag.StringVar(&opts.Out, "out", "out/benchmarks.md", "where to write the markdown report (SVG plots go beside it); empty writes none")
	flag.StringVar(&contenders, "contenders", "", "comma-separated contenders to run (direct always runs); empty runs all")
	flag.StringVar(&workloads, "workloads", "", "comma-separated workloads to run ("+strings.Join(harness.Workloads, ",")+"); empty runs all")
	flag.StringVar(&opts.Namespaces, "netns", "auto", "network namespaces: on, off (loopback, no added RTT) or auto (on when root)")
	flag.BoolVar(&opts.AB, "ab", true, "also run tether's A/B variants: stream windows of 16 MiB and 256 KiB, 16 idle tunnels, coalesced yamux writes (docs/performance.md)")
	flag.StringVar(&opts.PeersDir, "peers", "peers", "directory of the peers' nested modules")
	flag.StringVar(&opts.CacheDir, "cache", ".cache", "directory for the peers' binaries")
	flag.BoolVar(&opts.Keep, "keep", false, "keep the run directory (logs of every component)")
	conc := flag.String("w2-concurrency", "", "comma-separated W2 concurrency levels instead of 32,128")
	w5 := flag.String("w5-watches", "", "comma-separated W5 levels (idle watches) instead of 1000,10000 (quick: 100,300); above 1000 (quick: 100) only direct and tether, in its set-up for many watches")
	w6 := flag.String("w6-agents", "", "comma-separated W6 levels (idle agents), growing, instead of 1000,5000,10000 (quick: 50,150)")
	w6r := flag.Int("w6r-agents", 0, "W6R's idle agents over three replicas instead of 10000 (quick: 150)")
	profile := flag.String("profile", "", "write a CPU profile of every component that is a role (tether's, the target) into this directory")
	timeout := flag.Duration("timeout", 90*time.Minute, "stop the run after this long")
	flag.Parse()
	if contenders != "" {
		opts.Contenders = strings.Split(contenders, ",")
	}
	for _, l := range []struct {
		flag, value string
		into        *[]int
	}{{"w2-concurrency", *conc, &opts.W2Concurrency}, {"w5-watches", *w5, &opts.W5Watches}, {"w6-agents", *w6, &opts.W6Agents}} {
		ns, err := positiveInts(l.value)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: -%s: %v\n", l.flag, err)
			return 2
		}
		*l.into = ns
	}
	if *w6r < 0 {
		fmt.Fprintln(os.Stderr, "bench: -w6r-agents: want a positive count")
		return 2
	}
	opts.W6RAgents = *w6r
	if workloads != "" {
		opts.Workloads = strings.Split(workloads, ",")
	}
	opts.Progress = os.Stderr
	if *profile != "" {
		if err := os.MkdirAll(*profile, 0o755); err != nil {
			fmt.Fprintf(os.Stderr, "bench: -profile: %v\n", err)
			return 2
		}
		// Children inherit it.
		_ = os.Setenv(node.EnvProfileDir, *profile)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	start := time.Now()
	res, err := harness.Run(ctx, opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	if len(res.Failures) > 0 {
		fmt.Fprintf(os.Stderr, "bench: FAILED after %s:\n", time.Since(start).Round(time.Second))
		for _, f := range res.Failures {
			fmt.Fprintf(os.Stderr, "  - %s\n", f)
		}
		return 1
	}
	fmt.Fprintf(os.Stderr, "bench: passed in %s\n", time.Since(start).Round(time.Second))
	return 0
}

// positiveInts parses comma-separated positive integers; empty gives nil.
func positiveInts(s string) ([]int, error) {
	if s == "" {
		return nil, nil
	}
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q: want positive integers", s)
		}
		out = append(out, n)
	}
	return out, nil
}

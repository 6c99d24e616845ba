package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/tether-k8s/tether/sim/internal/sim"
)

// main runs the suite as the one test of a testing.Main: sim.Replay runs
// each scenario in a testing/synctest bubble, which belongs to a
// *testing.T, and only the testing package makes one. The test ends the
// process itself with the suite's exit code (testing.Main would print PASS
// or FAIL after the summary). The command's flags are parsed first, so
// -h shows only them; testing's own (-test.*) are registered after and
// keep their defaults.
func main() {
	suite := parse()
	testing.Main(func(string, string) (bool, error) { return true, nil },
		[]testing.InternalTest{{Name: "sim", F: func(t *testing.T) { os.Exit(suite(t)) }}}, nil, nil)
}

// parse parses the flags and returns the run they ask for, or exits.
func parse() func(t *testing.T) int {
	var (
		list     = flag.Bool("list", false, "list the scenarios and faults, then exit")
		scenario = flag.String("scenario", "", "run only this scenario (default: the default suite)")
		seed     = flag.Uint64("seed", 0, "the seed (default: from the clock); a run's seed replays it")
		duration = flag.Duration("duration", 0, "override each scenario's duration")
		clusters = flag.Int("clusters", 0, "override the number of clusters")
		agents   = flag.Int("agents", 0, "override the agents per cluster (each keeps 2 sessions)")
		clients  = flag.Int("clients", 0, "override the number of clients")
		faults   = flag.String("faults", "", "comma-separated faults the random timeline draws from (default: the scenario's)")
		report   = flag.String("report", "sim-report", "directory for the report of a failing scenario")
		verbose  = flag.Bool("v", false, "print the components' logs (warnings and errors)")
	)
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "go run ./sim [flags]: run tether's real core under injected faults and check what clients saw.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *list {
		w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "SCENARIO\tWHAT")
		for _, s := range sim.Scenarios {
			fmt.Fprintf(w, "%s\t%s\n", s.Name, s.Doc)
		}
		fmt.Fprintf(w, "\nFAULTS\t%s\n", strings.Join(sim.FaultNames(), ", "))
		_ = w.Flush()
		os.Exit(0)
	}
	if *seed == 0 {
		*seed = uint64(time.Now().UnixNano())
	}
	var fs []string
	if *faults != "" {
		fs = strings.Split(*faults, ",")
		for _, f := range fs {
			if _, ok := sim.Faults[f]; !ok {
				fmt.Fprintf(os.Stderr, "sim: -faults: unknown fault %q; known: %s\n", f, strings.Join(sim.FaultNames(), ", "))
				os.Exit(2)
			}
		}
	}
	suite := sim.Scenarios
	if *scenario != "" {
		s := sim.ScenarioByName(*scenario)
		if s == nil {
			fmt.Fprintf(os.Stderr, "sim: -scenario %q: no such scenario (go run ./sim -list)\n", *scenario)
			os.Exit(2)
		}
		suite = []*sim.Scenario{s}
	}
	level := slog.LevelError + 100
	if *verbose {
		level = slog.LevelWarn
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	return func(t *testing.T) int {
		return runSuite(t, suite, *scenario, *seed, *report, sim.Options{Duration: *duration, Clusters: *clusters, Agents: *agents,
			Clients: *clients, Faults: fs, Logger: log, Progress: os.Stderr})
	}
}

// runSuite runs each scenario of suite in its own bubble, prints the
// summary and returns the exit code. Ctrl-C ends the scenario running
// (its bubble polls for it) and skips the rest.
func runSuite(t *testing.T, suite []*sim.Scenario, scenario string, seed uint64, report string, o sim.Options) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	o.Seed = seed
	o.Interrupted = func() bool { return ctx.Err() != nil }

	fmt.Printf("seed %d (replay: go run ./sim -seed %d", seed, seed)
	if scenario != "" {
		fmt.Printf(" -scenario %s", scenario)
	}
	fmt.Println(")")
	var results []*sim.Result
	failed := false
	for _, s := range suite {
		r, err := sim.Replay(t, s, o)
		if err != nil {
			fmt.Fprintf(os.Stderr, "sim: %s: %v\n", s.Name, err)
			return 1
		}
		results = append(results, r)
		if r.Failed() {
			failed = true
			dir, err := writeReport(report, r)
			if err != nil {
				fmt.Fprintf(os.Stderr, "sim: write the report: %v\n", err)
			} else {
				fmt.Fprintf(os.Stderr, "sim: %s violated invariants; report in %s\n", s.Name, dir)
			}
		}
		if ctx.Err() != nil {
			break
		}
	}
	printSummary(results)
	if failed {
		return 1
	}
	return 0
}

func printSummary(rs []*sim.Result) {
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "SCENARIO\tSEED\tREQUESTS\tFAULTS\tHELD\tVIOLATED\tRECONNECT p50\tp99")
	for _, r := range rs {
		violated := slices.Sorted(maps.Keys(r.Violations))
		v := "-"
		if len(violated) > 0 {
			v = strings.Join(violated, ",")
		}
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d/%d\t%s\t%s\t%s\n", r.Scenario, r.Seed, len(r.Obs), r.Faults(), len(r.Held), len(sim.Invariants), v,
			r.ReconnectPercentile(0.5).Round(time.Millisecond), r.ReconnectPercentile(0.99).Round(time.Millisecond))
	}
	_ = w.Flush()
	for _, r := range rs {
		for _, name := range slices.Sorted(maps.Keys(r.Violations)) {
			lines := r.Violations[name]
			fmt.Printf("\n%s: %s violated:\n", r.Scenario, name)
			for i, l := range lines {
				if i == 10 {
					fmt.Printf("  ... and %d more\n", len(lines)-10)
					break
				}
				fmt.Printf("  %s\n", l)
			}
		}
	}
}

// writeReport writes the failing run's timeline, observations and
// violations as JSON.
func writeReport(root string, r *sim.Result) (string, error) {
	dir := filepath.Join(root, fmt.Sprintf("%s-%d", r.Scenario, r.Seed))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	for name, v := range map[string]any{"timeline.json": r.Timeline, "observations.json": r.Obs, "violations.json": r.Violations,
		"reconnects.json": r.Reconnects} {
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return "", err
		}
	}
	return dir, nil
}

package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tether-k8s/tether/bench/internal/contender"
	"github.com/tether-k8s/tether/bench/internal/harness"
	"github.com/tether-k8s/tether/bench/internal/node"
)

// TestMain lets the test binary serve as the harness binary: the harness
// starts components by re-executing itself with node.EnvRole set.
func TestMain(m *testing.M) {
	if node.IsChild() {
		os.Exit(node.ChildMain(contender.Roles()))
	}
	os.Exit(m.Run())
}

// TestQuickDirectAndTether runs bench-quick-sized W1 and W2 for the direct
// baseline and tether on loopback, and checks that the figures are sane: the
// harness works, and tether's full path carries every request.
func TestQuickDirectAndTether(t *testing.T) {
	if testing.Short() {
		t.Skip("starts tether's relay, agent and proxy as processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out := filepath.Join(t.TempDir(), "benchmarks.md")
	res, err := harness.Run(ctx, harness.Options{Quick: true, Out: out, Contenders: []string{"tether"},
		Workloads: []string{"W1", "W2"}, Namespaces: "off", W2Concurrency: []int{32}, Progress: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range res.Failures {
		t.Errorf("run failed: %s", f)
	}
	for _, name := range []string{"direct", "tether"} {
		w1 := res.W1[name]
		if w1 == nil {
			t.Fatalf("W1: no result for %s", name)
		}
		if w1.Count.Failed != 0 || w1.Count.OK == 0 || w1.Sorted.Quantile(0.5) <= 0 || w1.Sorted.Quantile(0.99) < w1.Sorted.Quantile(0.5) {
			t.Errorf("W1 %s: %d ok, %d failed, p50 %s, p99 %s", name, w1.Count.OK, w1.Count.Failed, w1.Sorted.Quantile(0.5), w1.Sorted.Quantile(0.99))
		}
		w2 := res.W2[32][name]
		if w2 == nil {
			t.Fatalf("W2: no result for %s", name)
		}
		if w2.Count.Failed != 0 || w2.RPS <= 0 || w2.CPUPer1k["loadgen"] <= 0 {
			t.Errorf("W2 %s: %.0f req/s, %d failed, CPU %v", name, w2.RPS, w2.Count.Failed, w2.CPUPer1k)
		}
	}
	// tether's components all did work, and its path costs something.
	for _, comp := range []string{"proxy", "relay", "agent"} {
		if res.W2[32]["tether"].CPUPer1k[comp] <= 0 {
			t.Errorf("W2 tether: no CPU time for %s: %v", comp, res.W2[32]["tether"].CPUPer1k)
		}
	}
	if d, tt := res.W1["direct"].Sorted.Quantile(0.5), res.W1["tether"].Sorted.Quantile(0.5); tt <= d {
		t.Errorf("W1: tether's p50 %s is not above direct's %s: is tether's path really in the way?", tt, d)
	}
	if b, err := os.ReadFile(out); err != nil || len(b) == 0 {
		t.Errorf("report: %v", err)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(out), "benchmarks-w1-latency-cdf.svg")); err != nil {
		t.Errorf("W1 plot: %v", err)
	}
}

// testWriter sends the harness's progress to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

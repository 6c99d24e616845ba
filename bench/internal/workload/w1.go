package workload

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/tether-k8s/tether/bench/internal/load"
	"github.com/tether-k8s/tether/bench/internal/report"
	"github.com/tether-k8s/tether/bench/internal/target"
)

// W1Result is one contender's W1 figures.
type W1Result struct {
	// Sorted are the latencies of the timed requests, sorted.
	Sorted load.Latencies
	// NewConn are the latencies of requests on a new connection each,
	// sorted.
	NewConn load.Latencies
	// Count counts the requests' outcomes.
	Count load.Counter
}

// W1 measures small-GET latency: one request at a time over a kept-alive
// connection, then a few on a new connection each (what a kubectl command
// pays first).
func (r *Run) W1(ctx context.Context) (*Section, map[string]*W1Result) {
	s := r.Sizes
	cs := r.running()
	res := map[string]*W1Result{}
	for _, c := range cs {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		out := &W1Result{}
		client := load.NewClient(c.Inst.Dial, 1)
		for i := range s.W1Warmup + s.W1Requests {
			start := time.Now()
			_, err := load.Get(ctx, client, target.SmallPath, target.SmallBodySize)
			d := time.Since(start)
			if i < s.W1Warmup {
				continue
			}
			out.Count.Add(ctx, err)
			if err == nil {
				out.Sorted = append(out.Sorted, d)
			}
		}
		client.CloseIdleConnections()
		for range s.W1NewConns {
			client := load.NewClient(c.Inst.Dial, 1)
			start := time.Now()
			_, err := load.Get(ctx, client, target.SmallPath, target.SmallBodySize)
			d := time.Since(start)
			client.CloseIdleConnections()
			out.Count.Add(ctx, err)
			if err == nil {
				out.NewConn = append(out.NewConn, d)
			}
		}
		cancel()
		out.Sorted, out.NewConn = out.Sorted.Sorted(), out.NewConn.Sorted()
		r.checkErrors("W1", c, out.Count)
		res[c.Name()] = out
		r.logf("W1 %s: p50 %s µs, p99 %s µs, new connection p50 %s ms", c.Name(), us(out.Sorted.Quantile(0.5)), us(out.Sorted.Quantile(0.99)), ms(out.NewConn.Quantile(0.5)))
	}

	direct := res["direct"]
	added := func(c *Contestant, q float64) float64 {
		if direct == nil || len(res[c.Name()].Sorted) == 0 {
			return math.NaN()
		}
		return float64(res[c.Name()].Sorted.Quantile(q) - direct.Sorted.Quantile(q))
	}
	add50 := make([]float64, len(cs))
	add99 := make([]float64, len(cs))
	for i, c := range cs {
		add50[i], add99[i] = added(c, 0.5), added(c, 0.99)
	}
	lower := func(a, b float64) bool { return a < b }
	best50, best99 := bestPeer(cs, add50, lower), bestPeer(cs, add99, lower)
	t := report.Table{Header: []string{"contender", "p50 µs", "p90 µs", "p99 µs", "added p50 µs", "added p99 µs",
		"added p50 ÷ best peer's", "added p99 ÷ best peer's", "new connection p50 ms", "errors"}}
	plot := report.Plot{Name: "w1-latency-cdf", Title: "W1: small GET latency (CDF)", XLabel: "latency (µs, log scale)", YLabel: "fraction of requests", LogX: true}
	for i, c := range cs {
		o := res[c.Name()]
		row := []string{c.Name(), us(o.Sorted.Quantile(0.5)), us(o.Sorted.Quantile(0.9)), us(o.Sorted.Quantile(0.99)),
			fmtUS(add50[i]), fmtUS(add99[i]), "-", "-", ms(o.NewConn.Quantile(0.5)), fmt.Sprint(o.Count.Failed)}
		if best50 >= 0 && c.Name() != "direct" {
			row[6] = addedRatio(add50[i], add50[best50])
		}
		if best99 >= 0 && c.Name() != "direct" {
			row[7] = addedRatio(add99[i], add99[best99])
		}
		t.Rows = append(t.Rows, row)
		plot.Series = append(plot.Series, cdf(c.Name(), o.Sorted))
	}
	t.Rows = append(t.Rows, r.notRunning(len(t.Header))...)
	intro := fmt.Sprintf("%d sequential GETs of a %d-byte body over one kept-alive connection (after %d warm-up requests), "+
		"then %d GETs on a new connection each. Added latency is the contender's quantile minus direct's.",
		s.W1Requests, target.SmallBodySize, s.W1Warmup, s.W1NewConns)
	sec := &Section{ID: "W1", Title: "small GET latency", Intro: intro, Tables: []report.Table{t}, Plots: []report.Plot{plot}}
	if best50 >= 0 {
		sec.Notes = append(sec.Notes, fmt.Sprintf("Best peer by added p50: %s; by added p99: %s.", cs[best50].Name(), cs[best99].Name()))
	}
	return sec, res
}

// fmtUS formats nanoseconds as microseconds.
func fmtUS(ns float64) string {
	if math.IsNaN(ns) {
		return "-"
	}
	return fmt.Sprintf("%.0f", ns/1e3)
}

// cdf turns sorted latencies into a CDF series of at most 200 points, in
// microseconds.
func cdf(name string, sorted load.Latencies) report.Series {
	s := report.Series{Name: name}
	n := len(sorted)
	if n == 0 {
		return s
	}
	step := max(1, n/200)
	for i := 0; i < n; i += step {
		s.Points = append(s.Points, report.Point{X: float64(sorted[i].Microseconds()), Y: float64(i+1) / float64(n)})
	}
	s.Points = append(s.Points, report.Point{X: float64(sorted[n-1].Microseconds()), Y: 1})
	return s
}

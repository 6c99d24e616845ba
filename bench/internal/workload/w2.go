package workload

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/tether-k8s/tether/bench/internal/contender"
	"github.com/tether-k8s/tether/bench/internal/load"
	"github.com/tether-k8s/tether/bench/internal/report"
	"github.com/tether-k8s/tether/bench/internal/target"
	"github.com/tether-k8s/tether/core/proxy"
)

// W2Result is one contender's W2 figures at one concurrency.
type W2Result struct {
	// RPS is requests per second, the median over the rounds.
	RPS float64
	// Latencies of the median round, sorted.
	Latencies load.Latencies
	// CPUPer1k is CPU seconds per 1,000 requests, per component, and for
	// "loadgen" and "target".
	CPUPer1k map[string]float64
	// Syscalls is the read and write system calls per request of the
	// contender's own processes (not the load generator's or the
	// target's), in the median round; -1 where /proc does not count them.
	Syscalls float64
	// Count counts the outcomes over every round.
	Count load.Counter
	// Tunnels is how many tunnels tether's relay opened during the median
	// round (tether only; -1 otherwise).
	Tunnels int64
}

// w2Round is one measurement.
type w2Round struct {
	rps      float64
	lat      load.Latencies
	cpu      map[string]float64
	syscalls float64
	count    load.Counter
	tunnels  int64
}

// W2 measures throughput: C workers, each sending small GETs one after the
// other over its own kept-alive connection, for a fixed time; with the CPU
// time each component spent.
func (r *Run) W2(ctx context.Context) (*Section, map[int]map[string]*W2Result) {
	s := r.Sizes
	cs := r.running()
	all := map[int]map[string]*W2Result{}
	sec := &Section{ID: "W2", Title: "small GET throughput",
		Intro: fmt.Sprintf("C workers send GETs of a %d-byte body back to back, each over its own kept-alive connection, for %s "+
			"(after %s of warm-up on the same connections); the contenders take turns, %d round(s), and the median round counts. "+
			"CPU is user+system time from /proc per process over the measured window, in CPU-seconds per 1,000 requests; "+
			"\"loadgen\" is the harness itself. syscalls/req are the read and write system calls per request of the contender's own processes "+
			"(/proc/PID/io: syscr + syscw; not the load generator's or the target's), a count that other load on the machine does not change.",
			target.SmallBodySize, s.W2Duration, s.W2Warmup, s.W2Rounds)}
	for _, conc := range s.W2Concurrency {
		rounds := map[string][]w2Round{}
		for round := range s.W2Rounds {
			for _, c := range cs {
				wr, err := r.w2Once(ctx, c, conc)
				if err != nil {
					r.Failf("W2 %s at %d: %v", c.Name(), conc, err)
					continue
				}
				rounds[c.Name()] = append(rounds[c.Name()], wr)
				r.logf("W2 %s c=%d round %d: %.0f req/s, %d failed", c.Name(), conc, round+1, wr.rps, wr.count.Failed)
			}
		}
		res := map[string]*W2Result{}
		for _, c := range cs {
			rs := rounds[c.Name()]
			if len(rs) == 0 {
				continue
			}
			out := &W2Result{Tunnels: -1}
			for _, x := range rs {
				out.Count.Merge(x.count)
			}
			slices.SortFunc(rs, func(a, b w2Round) int { return cmp.Compare(a.rps, b.rps) })
			med := rs[len(rs)/2]
			out.RPS, out.Latencies, out.CPUPer1k, out.Tunnels, out.Syscalls = med.rps, med.lat, med.cpu, med.tunnels, med.syscalls
			r.checkErrors(fmt.Sprintf("W2 c=%d", conc), c, out.Count)
			res[c.Name()] = out
		}
		all[conc] = res
		sec.Tables = append(sec.Tables, w2Table(r, cs, conc, res))
	}
	for _, c := range cs {
		if c.Name() == "tether" {
			for _, conc := range s.W2Concurrency {
				if x := all[conc]["tether"]; x != nil && x.Tunnels >= 0 {
					sec.Notes = append(sec.Notes, fmt.Sprintf("At %d workers tether's relay wrote %d tunnel audit records in the median round's %s "+
						"(one when a tunnel opens, one when it ends; a tunnel is TLS to the relay, a yamux stream, and TLS to the agent): "+
						"tether-proxy keeps up to %d idle tunnels (--max-idle-tunnels; tether-idle16 keeps 16) and closes those idle for %s, "+
						"so tunnels left from a contender's previous round end in this one.", conc, x.Tunnels, s.W2Duration, proxy.DefaultMaxIdleTunnels, proxy.DefaultIdleTunnelTimeout))
				}
			}
		}
	}
	return sec, all
}

func w2Table(r *Run, cs []*Contestant, conc int, res map[string]*W2Result) report.Table {
	t := report.Table{Caption: fmt.Sprintf("**%d concurrent workers**", conc),
		Header: []string{"contender", "req/s", "× direct", "× best peer", "p50 ms", "p99 ms",
			"CPU-s/1k: loadgen", "proxy", "relay", "agent", "target", "all", "syscalls/req", "errors"}}
	rps := make([]float64, len(cs))
	for i, c := range cs {
		rps[i] = math.NaN()
		if x := res[c.Name()]; x != nil {
			rps[i] = x.RPS
		}
	}
	best := bestPeer(cs, rps, func(a, b float64) bool { return a > b })
	var direct float64
	if x := res["direct"]; x != nil {
		direct = x.RPS
	}
	for _, c := range cs {
		x := res[c.Name()]
		if x == nil {
			t.Rows = append(t.Rows, []string{c.Name(), "failed", "", "", "", "", "", "", "", "", "", "", "", ""})
			continue
		}
		row := []string{c.Name(), fmt.Sprintf("%.0f", x.RPS), ratio(x.RPS, direct), "-",
			ms(x.Latencies.Quantile(0.5)), ms(x.Latencies.Quantile(0.99))}
		if best >= 0 {
			row[3] = ratio(x.RPS, rps[best])
		}
		total := 0.0
		for _, k := range []string{"loadgen", "proxy", "relay", "agent", "target"} {
			v, ok := x.CPUPer1k[k]
			if !ok {
				row = append(row, "-")
				continue
			}
			total += v
			row = append(row, fmt.Sprintf("%.3f", v))
		}
		sc := "-"
		if x.Syscalls >= 0 && c.Name() != "direct" {
			sc = fmt.Sprintf("%.1f", x.Syscalls)
		}
		row = append(row, fmt.Sprintf("%.3f", total), sc, fmt.Sprint(x.Count.Failed))
		t.Rows = append(t.Rows, row)
	}
	t.Rows = append(t.Rows, r.notRunning(len(t.Header))...)
	return t
}

// w2Once measures one contender once at one concurrency.
func (r *Run) w2Once(ctx context.Context, c *Contestant, conc int) (w2Round, error) {
	client := load.NewClient(c.Inst.Dial, conc)
	defer client.CloseIdleConnections()
	// Warm-up: every worker's connection is open before the clock starts,
	// however long opening them takes on a loaded machine (a fixed warm-up
	// alone would cancel slow first requests, and with them the opening of
	// tether's tunnels, every round), then W2Warmup of traffic.
	if err := w2Prime(ctx, client, conc); err != nil {
		return w2Round{}, err
	}
	r.w2Workers(ctx, client, conc, r.Sizes.W2Warmup)
	before, err := r.usage(c)
	if err != nil {
		return w2Round{}, err
	}
	tunnelsBefore := r.tunnels(c)
	start := time.Now()
	lat, count := r.w2Workers(ctx, client, conc, r.Sizes.W2Duration)
	elapsed := time.Since(start)
	after, err := r.usage(c)
	if err != nil {
		return w2Round{}, err
	}
	out := w2Round{rps: float64(count.OK) / elapsed.Seconds(), lat: lat.Sorted(), count: count, cpu: map[string]float64{}, tunnels: -1, syscalls: -1}
	if tb := tunnelsBefore; tb >= 0 {
		out.tunnels = r.tunnels(c) - tb
	}
	if count.OK > 0 {
		per1k := func(d time.Duration) float64 { return d.Seconds() / float64(count.OK) * 1000 }
		for name, u := range after.Procs {
			out.cpu[name] = per1k(u.CPU - before.Procs[name].CPU)
		}
		out.cpu["target"] = per1k(after.Target.CPU - before.Target.CPU)
		out.cpu["loadgen"] = per1k(after.Self - before.Self)
		var calls int64
		for name, u := range after.Procs {
			b := before.Procs[name].Syscalls
			if u.Syscalls < 0 || b < 0 {
				calls = -1
				break
			}
			calls += u.Syscalls - b
		}
		if calls >= 0 {
			out.syscalls = float64(calls) / float64(count.OK)
		}
	}
	return out, nil
}

// tunnels returns how many tunnels tether's relay has opened, or -1 for
// other contenders.
func (r *Run) tunnels(c *Contestant) int64 {
	if _, ok := c.Contender.(contender.Tether); !ok || c.Inst.Relay == nil {
		return -1
	}
	var st contender.RelayStats
	if err := c.Inst.Relay.Stats(&st); err != nil {
		return -1
	}
	return st.Tunnels
}

// w2Workers runs conc workers sending small GETs for d.
// w2PrimeLimit bounds the first request of every W2 worker.
const w2PrimeLimit = time.Minute

// w2Prime sends one GET from each of conc workers at once, so that each
// opens its connection, and fails if any does not succeed within
// w2PrimeLimit.
func w2Prime(ctx context.Context, client *http.Client, conc int) error {
	ctx, cancel := context.WithTimeout(ctx, w2PrimeLimit)
	defer cancel()
	errs := make([]error, conc)
	var wg sync.WaitGroup
	for i := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = load.Get(ctx, client, target.SmallPath, target.SmallBodySize)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("W2: opening %d connections: %w", conc, err)
	}
	return nil
}

func (r *Run) w2Workers(ctx context.Context, client *http.Client, conc int, d time.Duration) (load.Latencies, load.Counter) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var mu sync.Mutex
	var lat load.Latencies
	var total load.Counter
	var wg sync.WaitGroup
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine load.Latencies
			var n load.Counter
			for ctx.Err() == nil {
				start := time.Now()
				_, err := load.Get(ctx, client, target.SmallPath, target.SmallBodySize)
				n.Add(ctx, err)
				if err == nil {
					mine = append(mine, time.Since(start))
				}
			}
			mu.Lock()
			lat = append(lat, mine...)
			total.Merge(n)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return lat, total
}

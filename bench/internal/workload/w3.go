package workload

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/tether-k8s/tether/bench/internal/load"
	"github.com/tether-k8s/tether/bench/internal/node"
	"github.com/tether-k8s/tether/bench/internal/report"
	"github.com/tether-k8s/tether/bench/internal/target"
)

// W3Point is one download.
type W3Point struct {
	// MBps is the throughput in MB/s (10⁶ bytes).
	MBps float64
	// Bytes is how much arrived; Complete whether all of it did before the
	// time limit.
	Bytes    int64
	Complete bool
	// Err is why the download failed, if it did.
	Err error
}

// W3 measures bulk throughput: one large response over one connection, at
// each added round-trip time (netem on the relay–cluster link, which every
// contender's agent session and the direct connection cross).
func (r *Run) W3(ctx context.Context) (*Section, map[time.Duration]map[string]*W3Point) {
	s := r.Sizes
	cs := r.running()
	var res map[time.Duration]map[string]*W3Point
	if r.Env.Topo.Netem() {
		res = r.w3Netem(ctx, cs)
	} else {
		res = r.w3Links(ctx, cs)
	}
	header := []string{"contender"}
	for _, rtt := range s.W3RTTs {
		ms := strconv.FormatInt(rtt.Milliseconds(), 10)
		header = append(header, ms+" ms: MB/s", "× direct", "× best peer")
	}
	t := report.Table{Header: header}
	plot := report.Plot{Name: "w3-throughput-rtt", Title: "W3: one large download, throughput against added RTT",
		XLabel: "added round-trip time (ms)", YLabel: "MB/s (log scale)", LogY: true}
	best := map[time.Duration]int{}
	for _, rtt := range s.W3RTTs {
		vals := make([]float64, len(cs))
		for i, c := range cs {
			vals[i] = math.NaN()
			if p := res[rtt][c.Name()]; p != nil && p.Err == nil {
				vals[i] = p.MBps
			}
		}
		best[rtt] = bestPeer(cs, vals, func(a, b float64) bool { return a > b })
	}
	for _, c := range cs {
		row := []string{c.Name()}
		series := report.Series{Name: c.Name()}
		for _, rtt := range s.W3RTTs {
			p := res[rtt][c.Name()]
			if p == nil || p.Err != nil {
				row = append(row, "failed", "", "")
				continue
			}
			cell := fmt.Sprintf("%.1f", p.MBps)
			if !p.Complete {
				cell += fmt.Sprintf(" (%s in %s)", mb(p.Bytes), s.W3Limit)
			}
			row = append(row, cell, ratio(p.MBps, res[rtt]["direct"].MBps), "-")
			if b := best[rtt]; b >= 0 {
				row[len(row)-1] = ratio(p.MBps, res[rtt][cs[b].Name()].MBps)
			}
			series.Points = append(series.Points, report.Point{X: float64(rtt.Milliseconds()), Y: p.MBps})
		}
		t.Rows = append(t.Rows, row)
		plot.Series = append(plot.Series, series)
	}
	t.Rows = append(t.Rows, r.notRunning(len(t.Header))...)
	intro := fmt.Sprintf("One GET of %s over a fresh, warmed connection (a small request first, so handshakes are not timed), "+
		"read as fast as the client can; each download stops after %s, and the figure is bytes over time. ", mb(s.W3Bytes), s.W3Limit)
	if r.Env.Topo.Netem() {
		intro += "The added RTT is netem delay on the link between the relay's namespace and the cluster's (half each way): " +
			"every agent's session crosses it once, and so does the direct connection."
	} else {
		intro += "**This kernel has no netem**, so the RTT is added by a link process in the relay's place, a TCP forwarder that holds " +
			"each chunk for half the RTT in each direction (bench/internal/node/link.go). Every contender is started afresh for W3 " +
			"with each agent's connection to its relay through the link, and the direct baseline's connection to the target through it " +
			"too, so every path crosses it once, 0 ms included. Application-level flow control (yamux, SSH, HTTP/2 windows) sees the " +
			"full RTT; TCP's own window does not (the link acknowledges at once and queues up to 32 MiB per direction), so direct " +
			"and the TCP-window-bound figures are optimistic."
	}
	return &Section{ID: "W3", Title: "bulk throughput against round-trip time", Intro: intro,
		Tables: []report.Table{t}, Plots: []report.Plot{plot}}, res
}

// w3Netem downloads through the running contenders, setting the RTT with
// netem.
func (r *Run) w3Netem(ctx context.Context, cs []*Contestant) map[time.Duration]map[string]*W3Point {
	res := map[time.Duration]map[string]*W3Point{}
	defer func() {
		if err := r.Env.Topo.SetRTT(context.WithoutCancel(ctx), 0); err != nil {
			r.Failf("W3: remove the added RTT: %v", err)
		}
	}()
	for _, rtt := range r.Sizes.W3RTTs {
		if err := r.Env.Topo.SetRTT(ctx, rtt); err != nil {
			r.Failf("W3: %v", err)
			continue
		}
		res[rtt] = map[string]*W3Point{}
		for _, c := range cs {
			res[rtt][c.Name()] = r.w3Point(ctx, c, rtt)
		}
	}
	return res
}

// w3Links starts each contender afresh with its agent (or the direct
// connection) behind a link, and downloads at each RTT the link adds.
func (r *Run) w3Links(ctx context.Context, cs []*Contestant) map[time.Duration]map[string]*W3Point {
	res := map[time.Duration]map[string]*W3Point{}
	for _, rtt := range r.Sizes.W3RTTs {
		res[rtt] = map[string]*W3Point{}
	}
	dir := filepath.Join(r.Env.Dir, "w3")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		r.Failf("W3: %v", err)
		return res
	}
	for _, c := range cs {
		fail := func(err error) {
			for _, rtt := range r.Sizes.W3RTTs {
				res[rtt][c.Name()] = &W3Point{Err: err}
			}
			r.Failf("W3 %s: %v", c.Name(), err)
		}
		link, err := node.StartLink(ctx, r.Env.Topo, dir, "link-"+c.Name(), node.Relay)
		if err != nil {
			fail(err)
			continue
		}
		env := *r.Env
		env.Link, env.Dir = link, dir
		inst, err := c.Contender.Start(ctx, &env)
		if err != nil {
			fail(fmt.Errorf("start behind a link: %w", err))
			_ = link.Stop()
			continue
		}
		behind := &Contestant{Contender: c.Contender, Inst: inst}
		if err := r.warmOne(ctx, behind, 30*time.Second); err != nil {
			fail(err)
		} else {
			for _, rtt := range r.Sizes.W3RTTs {
				if err := link.SetRTT(rtt); err != nil {
					r.Failf("W3 %s: %v", c.Name(), err)
					continue
				}
				res[rtt][c.Name()] = r.w3Point(ctx, behind, rtt)
			}
		}
		if err := errors.Join(inst.Close(), link.Stop()); err != nil {
			r.Failf("W3 %s: stop: %v", c.Name(), err)
		}
	}
	return res
}

// w3Point downloads once and logs the outcome.
func (r *Run) w3Point(ctx context.Context, c *Contestant, rtt time.Duration) *W3Point {
	p := r.download(ctx, c, r.Sizes.W3Bytes, r.Sizes.W3Limit)
	if p.Err != nil {
		if !c.Peer() {
			r.Failf("W3 %s at %s: %v", c.Name(), rtt, p.Err)
		} else {
			r.logf("W3 %s at %s: %v", c.Name(), rtt, p.Err)
		}
	}
	r.logf("W3 %s at %s RTT: %.1f MB/s (%s of %s)", c.Name(), rtt, p.MBps, mb(p.Bytes), mb(r.Sizes.W3Bytes))
	return p
}

// download times one GET of size bytes through c, stopping after limit.
func (r *Run) download(ctx context.Context, c *Contestant, size int64, limit time.Duration) *W3Point {
	client := load.NewClient(c.Inst.Dial, 1)
	defer client.CloseIdleConnections()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err := load.Get(wctx, client, target.SmallPath, target.SmallBodySize)
	cancel()
	if err != nil {
		return &W3Point{Err: err}
	}
	dctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	req, err := http.NewRequestWithContext(dctx, http.MethodGet, load.URL(target.LargePath+"?bytes="+strconv.FormatInt(size, 10)), nil)
	if err != nil {
		return &W3Point{Err: err}
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return &W3Point{Err: fmt.Errorf("GET: %w", err)}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return &W3Point{Err: fmt.Errorf("GET: %s", resp.Status)}
	}
	buf := make([]byte, 256<<10)
	var n int64
	for {
		m, err := resp.Body.Read(buf)
		n += int64(m)
		if err == io.EOF {
			break
		}
		if err != nil {
			if dctx.Err() != nil && ctx.Err() == nil {
				break // the time limit: a partial figure
			}
			return &W3Point{Bytes: n, Err: fmt.Errorf("read after %d bytes: %w", n, err)}
		}
	}
	elapsed := time.Since(start)
	if n == 0 {
		return &W3Point{Err: fmt.Errorf("no byte in %s", limit)}
	}
	return &W3Point{MBps: float64(n) / elapsed.Seconds() / 1e6, Bytes: n, Complete: n == size}
}

// mb formats a byte count in MiB.
func mb(n int64) string { return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20)) }

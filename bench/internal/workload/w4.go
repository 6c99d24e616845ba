package workload

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tether-k8s/tether/bench/internal/load"
	"github.com/tether-k8s/tether/bench/internal/report"
	"github.com/tether-k8s/tether/bench/internal/target"
)

// W4Result is one contender's head-of-line figures.
type W4Result struct {
	// Alone and Stalled are the healthy downloads' throughput (MB/s)
	// without and with a stalled stream beside them.
	Alone, Stalled float64
	// Count counts the healthy downloads' outcomes in both phases.
	Count load.Counter
	// StallErr is why the stalled stream could not be set up, if so.
	StallErr error
}

// stallBytes is the stalled response's size: far more than any buffer on
// the path can hold, so the stream stays full for the whole phase.
const stallBytes = 1 << 30

// W4 measures head-of-line blocking: W4Streams workers download back to
// back for W4Duration, once alone and once beside a stream whose reader
// stopped reading, and compares the healthy streams' throughput.
func (r *Run) W4(ctx context.Context) (*Section, map[string]*W4Result) {
	s := r.Sizes
	cs := r.running()
	res := map[string]*W4Result{}
	for _, c := range cs {
		out := &W4Result{}
		// Alone before and after the stalled phase, averaged: the first
		// phase also warms the path up.
		before, n := r.healthy(ctx, c)
		out.Count.Merge(n)
		stall, err := r.stall(ctx, c)
		if err != nil {
			out.StallErr = err
			r.Failf("W4 %s: stalled stream: %v", c.Name(), err)
		} else {
			out.Stalled, n = r.healthy(ctx, c)
			out.Count.Merge(n)
			stall()
		}
		after, n := r.healthy(ctx, c)
		out.Count.Merge(n)
		out.Alone = (before + after) / 2
		r.checkErrors("W4", c, out.Count)
		res[c.Name()] = out
		r.logf("W4 %s: %.0f MB/s alone, %.0f MB/s beside a stalled stream", c.Name(), out.Alone, out.Stalled)
	}
	t := report.Table{Header: []string{"contender", "healthy MB/s, alone", "healthy MB/s, beside a stalled stream", "kept", "errors"}}
	for _, c := range cs {
		x := res[c.Name()]
		kept := "-"
		if x.Alone > 0 && x.StallErr == nil {
			kept = fmt.Sprintf("%.0f%%", 100*x.Stalled/x.Alone)
		}
		t.Rows = append(t.Rows, []string{c.Name(), fmt.Sprintf("%.0f", x.Alone), fmt.Sprintf("%.0f", x.Stalled), kept, fmt.Sprint(x.Count.Failed)})
	}
	t.Rows = append(t.Rows, r.notRunning(len(t.Header))...)
	intro := fmt.Sprintf("%d workers download %s responses back to back, each over its own connection, for %s: alone (before and after, averaged), "+
		"and beside one more connection whose client reads 64 KiB of a %s response and then stops reading (and holds the connection open). "+
		"\"Kept\" is the healthy streams' throughput beside the stalled one as a share of it alone; a multiplexer with per-stream "+
		"flow control keeps it near 100%%, one whose shared connection fills up drops toward 0.",
		s.W4Streams, mb(s.W4Chunk), s.W4Duration, mb(stallBytes))
	return &Section{ID: "W4", Title: "head-of-line blocking", Intro: intro, Tables: []report.Table{t}}, res
}

// healthy runs the healthy downloads and returns their throughput in MB/s.
func (r *Run) healthy(ctx context.Context, c *Contestant) (float64, load.Counter) {
	s := r.Sizes
	client := load.NewClient(c.Inst.Dial, s.W4Streams)
	defer client.CloseIdleConnections()
	// Every connection open before the clock starts (bounded: beside a
	// stalled stream, a contender with head-of-line blocking may never
	// answer).
	var wg sync.WaitGroup
	for range s.W4Streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wctx, cancel := context.WithTimeout(ctx, s.W4Duration)
			defer cancel()
			_, _ = load.Get(wctx, client, target.SmallPath, target.SmallBodySize)
		}()
	}
	wg.Wait()
	var bytes atomic.Int64
	var mu sync.Mutex
	var total load.Counter
	path := target.LargePath + "?bytes=" + strconv.FormatInt(s.W4Chunk, 10)
	dctx, cancel := context.WithTimeout(ctx, s.W4Duration)
	defer cancel()
	start := time.Now()
	for range s.W4Streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var n load.Counter
			for dctx.Err() == nil {
				_, err := getCounting(dctx, client, path, &bytes)
				n.Add(dctx, err)
			}
			mu.Lock()
			total.Merge(n)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return float64(bytes.Load()) / time.Since(start).Seconds() / 1e6, total
}

// getCounting downloads path, adding every byte read to n as it arrives.
func getCounting(ctx context.Context, c *http.Client, path string, n *atomic.Int64) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, load.URL(path), nil)
	if err != nil {
		return 0, fmt.Errorf("workload: %w", err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, fmt.Errorf("workload: GET: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("workload: GET: %s", resp.Status)
	}
	buf := make([]byte, 64<<10)
	var got int64
	for {
		m, err := resp.Body.Read(buf)
		got += int64(m)
		n.Add(int64(m))
		if err == io.EOF {
			return got, nil
		}
		if err != nil {
			return got, fmt.Errorf("workload: read: %w", err)
		}
	}
}

// stall opens a connection through c, asks for a huge response, reads 64
// KiB of it and stops reading; it returns the function that closes it.
func (r *Run) stall(ctx context.Context, c *Contestant) (func(), error) {
	client := load.NewClient(c.Inst.Dial, 1)
	sctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(sctx, http.MethodGet, load.URL(target.LargePath+"?bytes="+strconv.Itoa(stallBytes)), nil)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("workload: %w", err)
	}
	timer := time.AfterFunc(30*time.Second, cancel)
	resp, err := client.Do(req)
	timer.Stop()
	if err != nil {
		cancel()
		return nil, fmt.Errorf("workload: GET: %w", err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 64<<10)); err != nil {
		cancel()
		_ = resp.Body.Close()
		return nil, fmt.Errorf("workload: read the stalled stream's first bytes: %w", err)
	}
	// Let every buffer on the path fill up before the healthy streams run.
	time.Sleep(300 * time.Millisecond)
	return func() {
		cancel()
		_ = resp.Body.Close()
		client.CloseIdleConnections()
	}, nil
}

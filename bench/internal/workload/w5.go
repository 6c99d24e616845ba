package workload

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tether-k8s/tether/bench/internal/load"
	"github.com/tether-k8s/tether/bench/internal/node"
	"github.com/tether-k8s/tether/bench/internal/report"
	"github.com/tether-k8s/tether/bench/internal/target"
)

// W5Result is one contender's idle-watch figures.
type W5Result struct {
	// Open is how many watches were open at once.
	Open int
	// PerWatch is the resident memory each component gained per open
	// watch, in bytes.
	PerWatch map[string]float64
	// Delays are the events' delays (target sent → client read), sorted.
	Delays load.Latencies
	// Lost is how many events did not arrive within 10 s.
	Lost int
	// Err is why the workload failed, if it did.
	Err error
}

// W5 measures idle watches: W5Watches watches held open at once through
// one agent; the memory each costs every component, and how late an event
// sent to all of them arrives.
func (r *Run) W5(ctx context.Context) (*Section, map[string]*W5Result) {
	s := r.Sizes
	cs := r.running()
	res := map[string]*W5Result{}
	for _, c := range cs {
		x := r.watches(ctx, c)
		res[c.Name()] = x
		if x.Err != nil {
			if c.Peer() {
				r.logf("W5 %s: %v", c.Name(), x.Err)
			} else {
				r.Failf("W5 %s: %v", c.Name(), x.Err)
			}
			continue
		}
		r.logf("W5 %s: %d watches, delay p50 %s ms p99 %s ms, %d lost", c.Name(), x.Open, ms(x.Delays.Quantile(0.5)), ms(x.Delays.Quantile(0.99)), x.Lost)
	}
	t := report.Table{Header: []string{"contender", "watches open", "KiB per watch: proxy", "relay", "agent", "target", "all",
		"event delay p50 ms", "p99 ms", "events lost"}}
	for _, c := range cs {
		x := res[c.Name()]
		if x.Err != nil {
			t.Rows = append(t.Rows, []string{c.Name(), "failed: " + oneLine(x.Err), "", "", "", "", "", "", "", ""})
			continue
		}
		row := []string{c.Name(), fmt.Sprint(x.Open)}
		all := 0.0
		for _, k := range []string{"proxy", "relay", "agent", "target"} {
			v, ok := x.PerWatch[k]
			if !ok {
				row = append(row, "-")
				continue
			}
			all += v
			row = append(row, fmt.Sprintf("%.1f", v/1024))
		}
		row = append(row, fmt.Sprintf("%.1f", all/1024), ms(x.Delays.Quantile(0.5)), ms(x.Delays.Quantile(0.99)), fmt.Sprint(x.Lost))
		t.Rows = append(t.Rows, row)
	}
	t.Rows = append(t.Rows, r.notRunning(len(t.Header))...)
	intro := fmt.Sprintf("%d watches (GET %s?watch=true, each on its own connection, as client-go does over HTTP/1.1) are opened and left idle; "+
		"memory per watch is each process's resident-set growth over the idle watches, divided by their number (RSS is noisy: "+
		"the Go runtime returns memory lazily). Then the target sends %d events to every watch, one at a time; the delay is from "+
		"the target's send to the client's read (same machine, same clock).", s.W5Watches, target.WatchPath, s.W5Events)
	var notes []string
	if s.W5Watches < 500 {
		notes = append(notes, fmt.Sprintf("With only %d watches the memory figures are within RSS noise (some are negative): "+
			"read them from a full run.", s.W5Watches))
	}
	notes = append(notes, "tether's relay opens at most 1,024 streams per cluster (relay.DefaultMaxStreamsPerCluster): each watch through "+
		"tether-proxy is its own tunnel, so one cluster holds at most 1,024 watches through one relay, far from the issue's 10,000. "+
		"That limit is not configurable from tether-relay's flags today.")
	return &Section{ID: "W5", Title: "idle watches", Intro: intro, Tables: []report.Table{t}, Notes: notes}, res
}

// watches runs W5 on one contender.
func (r *Run) watches(ctx context.Context, c *Contestant) *W5Result {
	s := r.Sizes
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	before, err := r.rss(c)
	if err != nil {
		return &W5Result{Err: err}
	}
	client := load.NewClient(c.Inst.Dial, s.W5Watches)
	defer client.CloseIdleConnections()
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		stop()
		wg.Wait()
		_, _ = r.waitWatches(ctx, 0, nil)
	}()
	var mu sync.Mutex
	var delays load.Latencies
	var opened, failed atomic.Int64
	var firstErr atomic.Value
	got := make([]atomic.Int64, s.W5Events+1)
	sem := make(chan struct{}, 64) // watches being opened at once
	for range s.W5Watches {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			body, err := openWatch(wctx, client)
			<-sem
			if err != nil {
				if wctx.Err() == nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
				return
			}
			defer body.Close()
			opened.Add(1)
			br := bufio.NewReader(body)
			for e := 1; ; e++ {
				ev, err := target.ReadEvent(br)
				if err != nil {
					return
				}
				d := time.Since(time.Unix(0, ev.SentUnixNano))
				mu.Lock()
				delays = append(delays, d)
				mu.Unlock()
				if e < len(got) {
					got[e].Add(1)
				}
			}
		}()
	}
	open, err := r.waitWatches(ctx, s.W5Watches, func() bool { return failed.Load() > 0 })
	if err != nil || failed.Load() > 0 {
		first, _ := firstErr.Load().(error)
		return &W5Result{Open: open, Err: fmt.Errorf("%d of %d watches open, %d failed (first: %w): %w", open, s.W5Watches, failed.Load(), first, err)}
	}
	time.Sleep(time.Second) // idle
	after, err := r.rss(c)
	if err != nil {
		return &W5Result{Err: err}
	}
	out := &W5Result{Open: open, PerWatch: map[string]float64{}}
	for k, v := range after {
		out.PerWatch[k] = float64(v-before[k]) / float64(open)
	}
	broadcast := load.NewClient(func(ctx context.Context) (net.Conn, error) {
		return r.Env.Topo.Dial(ctx, node.Caller, r.Env.TargetAddr(node.Caller))
	}, 1)
	defer broadcast.CloseIdleConnections()
	for e := 1; e <= s.W5Events; e++ {
		if err := post(ctx, broadcast, target.ControlBroadcast); err != nil {
			return &W5Result{Err: err}
		}
		deadline := time.Now().Add(10 * time.Second)
		for got[e].Load() < int64(open) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		out.Lost += open - int(got[e].Load())
		time.Sleep(100 * time.Millisecond)
	}
	mu.Lock()
	out.Delays = delays.Sorted()
	mu.Unlock()
	return out
}

// openWatch starts a watch and returns its body once the headers arrived.
func openWatch(ctx context.Context, c *http.Client) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, load.URL(target.WatchPath+"?watch=true"), nil)
	if err != nil {
		return nil, fmt.Errorf("workload: %w", err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("workload: watch: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		_ = resp.Body.Close()
		return nil, fmt.Errorf("workload: watch: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return resp.Body, nil
}

// post sends POST path straight to the target.
func post(ctx context.Context, c *http.Client, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, load.URL(path), nil)
	if err != nil {
		return fmt.Errorf("workload: %w", err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("workload: POST %s: %w", path, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return nil
}

// waitWatches waits (up to a minute, or until giveUp says so) until the
// target holds n watches, and returns how many it holds.
func (r *Run) waitWatches(ctx context.Context, n int, giveUp func() bool) (int, error) {
	c := load.NewClient(func(ctx context.Context) (net.Conn, error) {
		return r.Env.Topo.Dial(ctx, node.Caller, r.Env.TargetAddr(node.Caller))
	}, 1)
	defer c.CloseIdleConnections()
	deadline := time.Now().Add(time.Minute)
	for {
		var st struct{ Watches int }
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, load.URL(target.ControlStats), nil)
		if err != nil {
			return 0, fmt.Errorf("workload: %w", err)
		}
		resp, err := c.Do(req)
		if err != nil {
			return 0, fmt.Errorf("workload: target stats: %w", err)
		}
		err = json.NewDecoder(resp.Body).Decode(&st)
		_ = resp.Body.Close()
		if err != nil {
			return 0, fmt.Errorf("workload: target stats: %w", err)
		}
		if st.Watches == n {
			return n, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil || (giveUp != nil && giveUp()) {
			return st.Watches, fmt.Errorf("workload: the target holds %d watches, want %d", st.Watches, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// rss reads the resident memory of c's components and of the target.
func (r *Run) rss(c *Contestant) (map[string]int64, error) {
	out := map[string]int64{}
	for _, p := range c.Inst.Procs {
		u, err := p.Usage()
		if err != nil {
			return nil, err
		}
		out[p.Name] = u.RSS
	}
	u, err := r.Target.Usage()
	if err != nil {
		return nil, err
	}
	out["target"] = u.RSS
	return out, nil
}

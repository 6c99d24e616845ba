package workload

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tether-k8s/tether/bench/internal/contender"
	"github.com/tether-k8s/tether/bench/internal/load"
	"github.com/tether-k8s/tether/bench/internal/node"
	"github.com/tether-k8s/tether/bench/internal/report"
	"github.com/tether-k8s/tether/bench/internal/target"
)

// W5Result is one contender's idle-watch figures at one level.
type W5Result struct {
	// Watches is how many watches were asked for; Open how many were open
	// at once.
	Watches, Open int
	// Proxies is how many caller-side processes (tether-proxy) carried
	// them; zero when the contender has none.
	Proxies int
	// PerWatch is the resident memory each component gained per open
	// watch, in bytes (summed over a component's processes).
	PerWatch map[string]float64
	// Delays are the events' delays (target sent → client read), sorted.
	Delays load.Latencies
	// Lost is how many events did not arrive within 10 s.
	Lost int
	// Err is why the workload failed, if it did.
	Err error
	// NotRun, when set, says why the contender did not run at this level.
	NotRun string
}

// W5 measures idle watches: at each of W5Watches, that many watches held
// open at once through one agent; the memory each costs every component,
// and how late an event sent to all of them arrives. It returns the results
// by level, then contender.
func (r *Run) W5(ctx context.Context) (*Section, map[int]map[string]*W5Result) {
	s := r.Sizes
	limit := fileLimit()
	// Each watch holds a descriptor in the load generator, the target, the
	// relay and the agent, and two in its tether-proxy (the caller's
	// connection and its tunnel).
	perProxy := min(s.W5WatchesPerProxy, (limit-descriptorMargin)/2)
	sec := &Section{ID: "W5", Title: "idle watches"}
	all := map[int]map[string]*W5Result{}
	scaled := false
	for _, n := range s.W5Watches {
		if n+descriptorMargin > limit {
			sec.Notes = append(sec.Notes, fmt.Sprintf("**%s watches not measured**: they need about %s open descriptors in the load generator, "+
				"the target, the relay and the agent, above this machine's limit of %s (RLIMIT_NOFILE).", thousands(n), thousands(n+descriptorMargin), thousands(limit)))
			continue
		}
		res := map[string]*W5Result{}
		all[n] = res
		scaled = scaled || n > s.W5SharedMax
		for _, c := range r.running() {
			x := r.watchLevel(ctx, c, n <= s.W5SharedMax, n, perProxy)
			res[c.Name()] = x
			switch {
			case x.NotRun != "":
			case x.Err != nil && c.Peer():
				r.logf("W5 %s, %d watches: %v", c.Name(), n, x.Err)
			case x.Err != nil:
				r.Failf("W5 %s, %d watches: %v", c.Name(), n, x.Err)
			default:
				r.logf("W5 %s: %d watches (%d proxies), delay p50 %s ms p99 %s ms, %d lost", c.Name(), x.Open, x.Proxies,
					ms(x.Delays.Quantile(0.5)), ms(x.Delays.Quantile(0.99)), x.Lost)
			}
		}
		sec.Tables = append(sec.Tables, w5Table(r, n, res))
	}
	sec.Intro = fmt.Sprintf("%s idle watches (GET %s?watch=true, each on its own connection, as client-go does over HTTP/1.1) are opened and left idle, "+
		"one level after the other; memory per watch is each process's resident-set growth over the idle watches, divided by their "+
		"number, summed over a component's processes (RSS is noisy: the Go runtime returns memory lazily). Then the target sends %d "+
		"events to every watch, one at a time; the delay is from the target's send to the client's read (same machine, same clock). "+
		"One relay and one agent carry every watch.", joinInts(s.W5Watches), target.WatchPath, s.W5Events)
	if scaled {
		sec.Notes = append(sec.Notes, fmt.Sprintf("Above %s watches only direct and tether run, each started afresh. tether runs in its "+
			"set-up for many idle watches (docs/performance.md): `--stream-window 256Ki`, `--stream-memory` and `--max-streams-per-cluster` "+
			"admitting 16,384 streams (or 1.25× the watches), and one tether-proxy per %s watches: many callers of one cluster, because each "+
			"watch holds two of its proxy's descriptors (the caller's connection and its tunnel to the relay, a stream of the agent's "+
			"session) and one process may open %s. Up to %[1]s tether runs as everywhere else (4 MiB window, one proxy); "+
			"run D (docs/performance.md) found the window costs an idle watch nothing.", thousands(s.W5SharedMax), thousands(perProxy), thousands(limit)))
	}
	if s.W5Watches[0] < 500 {
		sec.Notes = append(sec.Notes, fmt.Sprintf("With only %d watches the memory figures are within RSS noise (some are negative): "+
			"read them from a full run.", s.W5Watches[0]))
	}
	return sec, all
}

// descriptorMargin is what a process keeps of its descriptor limit for
// everything but the connections a workload counts.
const descriptorMargin = 1000

// w5Table is one level's table.
func w5Table(r *Run, n int, res map[string]*W5Result) report.Table {
	t := report.Table{Caption: fmt.Sprintf("**%s watches**", thousands(n)), Header: []string{"contender", "watches open", "proxies",
		"KiB per watch: proxy", "relay", "agent", "target", "all", "event delay p50 ms", "p99 ms", "events lost"}}
	for _, c := range r.Contestants {
		x := res[c.Name()]
		switch {
		case x == nil:
			continue
		case x.NotRun != "":
			t.Rows = append(t.Rows, []string{c.Name(), "not run: " + x.NotRun, "", "", "", "", "", "", "", "", ""})
			continue
		case x.Err != nil:
			t.Rows = append(t.Rows, []string{c.Name(), "failed: " + oneLine(x.Err), "", "", "", "", "", "", "", "", ""})
			continue
		}
		proxies := "-"
		if x.Proxies > 0 {
			proxies = fmt.Sprint(x.Proxies)
		}
		row := []string{c.Name(), fmt.Sprint(x.Open), proxies}
		sum := 0.0
		for _, k := range []string{"proxy", "relay", "agent", "target"} {
			v, ok := x.PerWatch[k]
			if !ok {
				row = append(row, "-")
				continue
			}
			sum += v
			row = append(row, fmt.Sprintf("%.1f", v/1024))
		}
		row = append(row, fmt.Sprintf("%.1f", sum/1024), ms(x.Delays.Quantile(0.5)), ms(x.Delays.Quantile(0.99)), fmt.Sprint(x.Lost))
		t.Rows = append(t.Rows, row)
	}
	t.Rows = append(t.Rows, r.notRunning(len(t.Header))...)
	return t
}

// watchLevel runs one level of W5 on c: on its running instance when
// shared, and otherwise on a fresh instance in its set-up for n watches
// (with at most perProxy through each proxy).
func (r *Run) watchLevel(ctx context.Context, c *Contestant, shared bool, n, perProxy int) *W5Result {
	if shared {
		return r.watches(ctx, c.Inst, n)
	}
	ws, ok := c.Contender.(contender.WatchScaler)
	var scaled contender.Contender
	if ok {
		scaled, ok = ws.ForWatches(n, perProxy)
	}
	if !ok {
		return &W5Result{Watches: n, NotRun: "no set-up for this many watches in the harness"}
	}
	t0 := time.Now()
	inst, err := scaled.Start(ctx, r.Env)
	if err != nil {
		return &W5Result{Watches: n, Err: fmt.Errorf("start for %d watches: %w", n, err)}
	}
	defer func() {
		if err := inst.Close(); err != nil {
			r.Failf("W5 %s: stop the instance for %d watches: %v", c.Name(), n, err)
		}
	}()
	for i, d := range inst.Entries() {
		if err := r.warmDial(ctx, d, 30*time.Second); err != nil {
			return &W5Result{Watches: n, Err: fmt.Errorf("entry %d of the instance for %d watches: %w", i+1, n, err)}
		}
	}
	r.logf("W5 %s: started for %d watches in %s: %s", c.Name(), n, time.Since(t0).Round(time.Millisecond), scaled.Describe())
	return r.watches(ctx, inst, n)
}

// watches holds n idle watches through inst, spread evenly over its
// entries (inst.Entries), then sends them W5Events events.
func (r *Run) watches(ctx context.Context, inst *contender.Instance, n int) *W5Result {
	s := r.Sizes
	// Opening a watch through tether takes several TLS handshakes: the
	// limits grow with n.
	ctx, cancel := context.WithTimeout(ctx, max(3*time.Minute, time.Duration(n)*30*time.Millisecond))
	defer cancel()
	openLimit := max(time.Minute, time.Duration(n)*20*time.Millisecond)
	proxies := 0
	for _, p := range inst.Procs {
		if p.Component == "proxy" {
			proxies++
		}
	}
	before, err := r.rss(inst)
	if err != nil {
		return &W5Result{Watches: n, Err: err}
	}
	entries := inst.Entries()
	clients := make([]*http.Client, len(entries))
	for i, d := range entries {
		clients[i] = load.NewClient(d, (n+len(entries)-1)/len(entries))
		defer clients[i].CloseIdleConnections()
	}
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		stop()
		wg.Wait()
		_, _ = r.waitWatches(ctx, 0, openLimit, nil)
	}()
	var mu sync.Mutex
	var delays load.Latencies
	var opened, failed atomic.Int64
	var firstErr atomic.Value
	got := make([]atomic.Int64, s.W5Events+1)
	sem := make(chan struct{}, 64) // watches being opened at once
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			body, err := openWatch(wctx, clients[i%len(clients)])
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
	open, err := r.waitWatches(ctx, n, openLimit, func() bool { return failed.Load() > 0 })
	if err != nil || failed.Load() > 0 {
		first, _ := firstErr.Load().(error)
		return &W5Result{Watches: n, Open: open, Proxies: proxies,
			Err: fmt.Errorf("%d of %d watches open, %d failed (first: %w): %w", open, n, failed.Load(), first, err)}
	}
	time.Sleep(time.Second) // idle
	after, err := r.rss(inst)
	if err != nil {
		return &W5Result{Watches: n, Err: err}
	}
	out := &W5Result{Watches: n, Open: open, Proxies: proxies, PerWatch: map[string]float64{}}
	for k, v := range after {
		out.PerWatch[k] = float64(v-before[k]) / float64(open)
	}
	broadcast := load.NewClient(func(ctx context.Context) (net.Conn, error) {
		return r.Env.Topo.Dial(ctx, node.Caller, r.Env.TargetAddr(node.Caller))
	}, 1)
	defer broadcast.CloseIdleConnections()
	for e := 1; e <= s.W5Events; e++ {
		if err := post(ctx, broadcast, target.ControlBroadcast); err != nil {
			return &W5Result{Watches: n, Err: err}
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

// waitWatches waits (up to limit, or until giveUp says so) until the
// target holds n watches, and returns how many it holds.
func (r *Run) waitWatches(ctx context.Context, n int, limit time.Duration, giveUp func() bool) (int, error) {
	c := load.NewClient(func(ctx context.Context) (net.Conn, error) {
		return r.Env.Topo.Dial(ctx, node.Caller, r.Env.TargetAddr(node.Caller))
	}, 1)
	defer c.CloseIdleConnections()
	deadline := time.Now().Add(limit)
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

// rss reads the resident memory of inst's components (summed over each
// component's processes) and of the target.
func (r *Run) rss(inst *contender.Instance) (map[string]int64, error) {
	out := map[string]int64{}
	for _, p := range inst.Procs {
		u, err := p.Usage()
		if err != nil {
			return nil, err
		}
		out[p.Component] += u.RSS
	}
	u, err := r.Target.Usage()
	if err != nil {
		return nil, err
	}
	out["target"] = u.RSS
	return out, nil
}

// joinInts formats counts as "1,000 and 10,000".
func joinInts(ns []int) string {
	parts := make([]string, len(ns))
	for i, n := range ns {
		parts[i] = thousands(n)
	}
	if len(parts) < 2 {
		return strings.Join(parts, "")
	}
	return strings.Join(parts[:len(parts)-1], ", ") + " and " + parts[len(parts)-1]
}

// thousands formats n with a comma between thousands.
func thousands(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0 && s[i-1] != '-'; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

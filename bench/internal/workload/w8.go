package workload

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"time"

	"github.com/tether-k8s/tether/bench/internal/load"
	"github.com/tether-k8s/tether/bench/internal/report"
	"github.com/tether-k8s/tether/bench/internal/target"
)

// W8Result is one contender's interactive figures.
type W8Result struct {
	// Upgrade is how long the upgrade took (request to 101), on a new
	// connection.
	Upgrade time.Duration
	// Sorted are the round trips, sorted.
	Sorted load.Latencies
	// Err is why it failed, if it did.
	Err error
}

// W8 measures interactive round trips over an upgraded connection (what
// kubectl exec and attach feel like): a SPDY/3.1 upgrade on an exec path,
// then one small message at a time echoed back.
func (r *Run) W8(ctx context.Context) (*Section, map[string]*W8Result) {
	s := r.Sizes
	cs := r.running()
	res := map[string]*W8Result{}
	for _, c := range cs {
		x := r.interactive(ctx, c)
		res[c.Name()] = x
		if x.Err != nil {
			r.Failf("W8 %s: %v", c.Name(), x.Err)
			continue
		}
		r.logf("W8 %s: upgrade %s ms, round trip p50 %s µs, p99 %s µs", c.Name(), ms(x.Upgrade), us(x.Sorted.Quantile(0.5)), us(x.Sorted.Quantile(0.99)))
	}
	direct := res["direct"]
	added := func(c *Contestant, q float64) float64 {
		x := res[c.Name()]
		if direct == nil || direct.Err != nil || x.Err != nil {
			return math.NaN()
		}
		return float64(x.Sorted.Quantile(q) - direct.Sorted.Quantile(q))
	}
	add50 := make([]float64, len(cs))
	for i, c := range cs {
		add50[i] = added(c, 0.5)
	}
	best := bestPeer(cs, add50, func(a, b float64) bool { return a < b })
	t := report.Table{Header: []string{"contender", "upgrade ms", "round trip p50 µs", "p99 µs", "added p50 µs", "added p99 µs", "added p50 ÷ best peer's"}}
	for i, c := range cs {
		x := res[c.Name()]
		if x.Err != nil {
			t.Rows = append(t.Rows, []string{c.Name(), "failed: " + oneLine(x.Err), "", "", "", "", ""})
			continue
		}
		row := []string{c.Name(), ms(x.Upgrade), us(x.Sorted.Quantile(0.5)), us(x.Sorted.Quantile(0.99)), fmtUS(add50[i]), fmtUS(added(c, 0.99)), "-"}
		if best >= 0 && c.Name() != "direct" {
			row[6] = addedRatio(add50[i], add50[best])
		}
		t.Rows = append(t.Rows, row)
	}
	t.Rows = append(t.Rows, r.notRunning(len(t.Header))...)
	intro := fmt.Sprintf("POST %s with `Upgrade: SPDY/3.1` on a new connection (the target answers 101 and echoes), "+
		"then %d round trips of a %d-byte message, one at a time.", target.EchoPath, s.W8RoundTrips, s.W8RoundTripBytes)
	return &Section{ID: "W8", Title: "interactive round trip over an upgraded connection", Intro: intro, Tables: []report.Table{t}}, res
}

// interactive runs W8 on one contender.
func (r *Run) interactive(ctx context.Context, c *Contestant) *W8Result {
	s := r.Sizes
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	start := time.Now()
	conn, err := c.Inst.Dial(ctx)
	if err != nil {
		return &W8Result{Err: err}
	}
	defer conn.Close()
	if d, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(d)
	}
	if _, err := io.WriteString(conn, "POST "+target.EchoPath+" HTTP/1.1\r\nHost: "+load.Host+"\r\nConnection: Upgrade\r\n"+
		"Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n"); err != nil {
		return &W8Result{Err: fmt.Errorf("upgrade request: %w", err)}
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return &W8Result{Err: fmt.Errorf("upgrade response: %w", err)}
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return &W8Result{Err: fmt.Errorf("upgrade: %s: %s", resp.Status, bytes.TrimSpace(body))}
	}
	out := &W8Result{Upgrade: time.Since(start)}
	msg := bytes.Repeat([]byte{'x'}, s.W8RoundTripBytes)
	got := make([]byte, len(msg))
	for i := range s.W8RoundTrips {
		msg[0] = byte('a' + i%26)
		t0 := time.Now()
		if _, err := conn.Write(msg); err != nil {
			return &W8Result{Err: fmt.Errorf("round trip %d: write: %w", i, err)}
		}
		if _, err := io.ReadFull(br, got); err != nil {
			return &W8Result{Err: fmt.Errorf("round trip %d: read: %w", i, err)}
		}
		out.Sorted = append(out.Sorted, time.Since(t0))
		if !bytes.Equal(got, msg) {
			return &W8Result{Err: fmt.Errorf("round trip %d: the echo differs", i)}
		}
	}
	out.Sorted = out.Sorted.Sorted()
	return out
}

package sim

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/tether-k8s/tether/core/proxy"
	"github.com/tether-k8s/tether/core/tunnel"
)

// Obs is what one client saw of one operation.
type Obs struct {
	Client  int       `json:"client"`
	Cluster string    `json:"cluster"`
	Op      string    `json:"op"`
	Start   time.Time `json:"start"`
	// Established is when the first byte of the answer arrived.
	Established time.Time `json:"established,omitzero"`
	End         time.Time `json:"end"`
	// Err is why the operation failed; empty when it succeeded or the
	// client ended it on schedule.
	Err string `json:"err,omitempty"`
	// WrongCluster names a cluster other than the client's that answered.
	WrongCluster string `json:"wrongCluster,omitempty"`
	// Corrupt says what arrived differs from what was sent or served.
	Corrupt string `json:"corrupt,omitempty"`
	// Misrouted is true when the relay routed the caller wrongly: the
	// agent it reached refused a stream naming another cluster, or the
	// proxy's end-to-end TLS refused another cluster's agent.
	Misrouted bool `json:"misrouted,omitempty"`
	// Events counts watch events and log lines; MaxGap is the longest wait
	// between two of them, or before the first, or after the last.
	Events int           `json:"events,omitempty"`
	MaxGap time.Duration `json:"maxGap,omitempty"`
	Bytes  int64         `json:"bytes,omitempty"`
}

// Recorder keeps every observation of a run.
type Recorder struct {
	mu  sync.Mutex
	obs []Obs
}

// Add records o.
func (r *Recorder) Add(o Obs) {
	r.mu.Lock()
	r.obs = append(r.obs, o)
	r.mu.Unlock()
}

// All returns the observations so far.
func (r *Recorder) All() []Obs {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Obs(nil), r.obs...)
}

// Ops are the operations clients do, with their weights in the mix.
var Ops = []struct {
	Name   string
	Weight int
	run    func(ctx context.Context, c *Client, rnd *rand.Rand, o *Obs)
}{
	{"get", 40, opGet},
	{"watch", 15, opWatch},
	{"logs", 10, opLogs},
	{"exec", 15, opExec},
	{"portforward", 10, opBulk},
	{"upload", 10, opUpload},
}

// Drive runs c's traffic until ctx ends, drawing from rnd.
func Drive(ctx context.Context, c *Client, rnd *rand.Rand, rec *Recorder) {
	total := 0
	for _, op := range Ops {
		total += op.Weight
	}
	for ctx.Err() == nil {
		pick := rnd.IntN(total)
		for _, op := range Ops {
			if pick -= op.Weight; pick < 0 {
				o := Obs{Client: c.ID, Cluster: c.Cluster.ID, Op: op.Name, Start: time.Now()}
				opCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
				op.run(opCtx, c, rnd, &o)
				cancel()
				// A misroute shows as the proxy refusing another
				// cluster's agent, or as that agent refusing a stream
				// that names another cluster.
				o.Misrouted = strings.Contains(o.Err, proxy.WrongAgentMessage) || strings.Contains(o.Err, tunnel.ReasonClusterMismatch)
				o.End = time.Now()
				if ctx.Err() != nil && o.Err != "" && o.Corrupt == "" && o.WrongCluster == "" {
					o.Err = "" // ended by the run's end
				}
				rec.Add(o)
				break
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(rnd.IntN(200)) * time.Millisecond):
		}
	}
}

func (c *Client) request(ctx context.Context, method, path string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, "https://127.0.0.1:47011"+path, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set(ClientHeader, fmt.Sprint(c.ID))
	return req, nil
}

func (c *Client) checkCluster(o *Obs, got string) {
	if got != c.Cluster.ID && o.WrongCluster == "" {
		o.WrongCluster = got
	}
}

func opGet(ctx context.Context, c *Client, _ *rand.Rand, o *Obs) {
	req, _ := c.request(ctx, http.MethodGet, "/api/v1/configmaps", nil)
	resp, err := c.HTTP.Do(req)
	if err != nil {
		o.Err = err.Error()
		return
	}
	defer resp.Body.Close()
	o.Established = time.Now()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		o.Err = err.Error()
		return
	}
	if resp.StatusCode != http.StatusOK {
		o.Err = fmt.Sprintf("%s: %s", resp.Status, bytes.TrimSpace(b))
		return
	}
	var it Item
	if err := json.Unmarshal(b, &it); err != nil {
		o.Corrupt = "list answer is not an item: " + err.Error()
		return
	}
	c.checkCluster(o, it.Cluster)
}

// opWatch watches for 1 to 6 s; events must come in order, from the
// client's cluster.
func opWatch(ctx context.Context, c *Client, rnd *rand.Rand, o *Obs) {
	var last int64
	streamLines(ctx, c, rnd, o, "/api/v1/configmaps?watch=1", func(line string) {
		var it Item
		if err := json.Unmarshal([]byte(line), &it); err != nil {
			o.Corrupt = "watch event: " + err.Error()
			return
		}
		c.checkCluster(o, it.Cluster)
		if it.ResourceVersion <= last && o.Corrupt == "" {
			o.Corrupt = fmt.Sprintf("watch event out of order: resourceVersion %d after %d", it.ResourceVersion, last)
		}
		last = it.ResourceVersion
	})
}

// opLogs follows a log for 1 to 6 s.
func opLogs(ctx context.Context, c *Client, rnd *rand.Rand, o *Obs) {
	streamLines(ctx, c, rnd, o, "/api/v1/pods/log?follow=1", func(line string) {
		cl, _, _ := strings.Cut(line, " ")
		c.checkCluster(o, cl)
	})
}

// streamLines reads a streaming answer line by line for a drawn time,
// tracking the longest gap.
func streamLines(ctx context.Context, c *Client, rnd *rand.Rand, o *Obs, path string, check func(string)) {
	// Half a millisecond off the API server's 100 ms ticks: on virtual
	// time, a deadline at the instant of a tick would race it, and
	// timers due at one instant fire in a random order, so whether the
	// last event counted would not replay.
	ctx, cancel := context.WithTimeout(ctx, time.Second+time.Duration(rnd.IntN(5000))*time.Millisecond+500*time.Microsecond)
	defer cancel()
	req, _ := c.request(ctx, http.MethodGet, path, nil)
	resp, err := c.HTTP.Do(req)
	if err != nil {
		o.Err = err.Error()
		if ctx.Err() != nil {
			o.Err = ""
		}
		return
	}
	defer resp.Body.Close()
	o.Established = time.Now()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		o.Err = fmt.Sprintf("%s: %s", resp.Status, bytes.TrimSpace(b))
		return
	}
	last := o.Established
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		now := time.Now()
		o.MaxGap = max(o.MaxGap, now.Sub(last))
		last = now
		o.Events++
		check(sc.Text())
	}
	o.MaxGap = max(o.MaxGap, time.Since(last))
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		o.Err = err.Error()
	} else if err == nil && ctx.Err() == nil {
		o.Err = "the stream ended without an error"
	}
}

// opExec runs an interactive session: a few round trips over an upgraded
// connection, then a half-close.
func opExec(ctx context.Context, c *Client, rnd *rand.Rand, o *Obs) {
	conn, err := c.Upgrade(ctx)
	if err != nil {
		o.Err = err.Error()
		return
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: 127.0.0.1:47011\r\n%s: %d\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"+
		"X-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n", ExecPath, ClientHeader, c.ID)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		o.Err = err.Error()
		return
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		o.Err = fmt.Sprintf("%s: %s", resp.Status, bytes.TrimSpace(b))
		return
	}
	o.Established = time.Now()
	for i := range 1 + rnd.IntN(5) {
		msg := fmt.Sprintf("%s/%d/%d;", c.Cluster.ID, c.ID, i) + strings.Repeat("k", rnd.IntN(2000))
		if _, err := io.WriteString(conn, msg); err != nil {
			o.Err = err.Error()
			return
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(br, got); err != nil {
			o.Err = err.Error()
			return
		}
		if string(got) != msg {
			cl, _, _ := strings.Cut(string(got), "/")
			c.checkCluster(o, cl)
			o.Corrupt = "exec echo differs"
			return
		}
		o.Bytes += int64(len(msg))
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Duration(rnd.IntN(300)) * time.Millisecond):
		}
	}
}

// opBulk downloads up to 2 MB, as a port-forward would, and checks every
// byte.
func opBulk(ctx context.Context, c *Client, rnd *rand.Rand, o *Obs) {
	n, seed := 1+rnd.IntN(2<<20), rnd.Uint64()
	req, _ := c.request(ctx, http.MethodGet, fmt.Sprintf("/bulk?n=%d&seed=%d", n, seed), nil)
	resp, err := c.HTTP.Do(req)
	if err != nil {
		o.Err = err.Error()
		return
	}
	defer resp.Body.Close()
	o.Established = time.Now()
	if resp.StatusCode != http.StatusOK {
		o.Err = resp.Status
		return
	}
	want := sha256.New()
	_, _ = io.CopyN(want, Payload(seed), int64(n))
	got := sha256.New()
	k, err := io.Copy(got, resp.Body)
	o.Bytes = k
	if err != nil {
		o.Err = err.Error()
		return
	}
	if k != int64(n) || !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		o.Corrupt = fmt.Sprintf("download of %d bytes: got %d, checksum differs", n, k)
	}
}

// opUpload sends up to 1 MB and checks the server's checksum.
func opUpload(ctx context.Context, c *Client, rnd *rand.Rand, o *Obs) {
	n, seed := 1+rnd.IntN(1<<20), rnd.Uint64()
	body := make([]byte, n)
	_, _ = io.ReadFull(Payload(seed), body)
	sum := sha256.Sum256(body)
	req, _ := c.request(ctx, http.MethodPost, "/upload", bytes.NewReader(body))
	resp, err := c.HTTP.Do(req)
	if err != nil {
		o.Err = err.Error()
		return
	}
	defer resp.Body.Close()
	o.Established = time.Now()
	var got struct {
		Cluster string `json:"cluster"`
		N       int64  `json:"n"`
		SHA     string `json:"sha256"`
	}
	if resp.StatusCode != http.StatusOK {
		o.Err = resp.Status
		return
	}
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		o.Err = err.Error()
		return
	}
	c.checkCluster(o, got.Cluster)
	o.Bytes = got.N
	if got.N != int64(n) || got.SHA != hex.EncodeToString(sum[:]) {
		o.Corrupt = fmt.Sprintf("upload of %d bytes: server got %d, checksum differs", n, got.N)
	}
}

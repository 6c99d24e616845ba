package relay_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tether-k8s/tether/core/kstatus"
	"github.com/tether-k8s/tether/core/relay"
	"github.com/tether-k8s/tether/core/relayapi"
	"github.com/tether-k8s/tether/core/tunnel"
	"github.com/tether-k8s/tether/core/tunnel/tunneltest"
)

// holdingAgent adds a session for cluster whose agent accepts every stream
// and holds it until the relay closes its end.
func holdingAgent(t *testing.T, r *relay.Router, cluster string) {
	t.Helper()
	rs, as := tunneltest.Pair(t, tunnel.Hello{Cluster: cluster, Agent: "agent-" + cluster})
	tunneltest.Serve(t, as, func(st *tunnel.Stream) { _, _ = io.Copy(io.Discard, st) })
	if err := r.Add(rs, nil); err != nil {
		t.Fatal(err)
	}
}

// rawAgent adds a session for cluster whose agent speaks the handshake and
// then handles the relay's streams with answer, itself: nil never accepts
// a stream, so the relay waits for an OpenReply that does not come.
func rawAgent(t *testing.T, r *relay.Router, cluster string, answer func(st net.Conn)) {
	t.Helper()
	relayEnd, agentEnd := net.Pipe()
	type res struct {
		s   *tunnel.RelaySession
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := tunnel.AcceptAgent(context.Background(), relayEnd, tunnel.RelayConfig{
			Authorize: func(context.Context, *tunnel.Hello, tls.ConnectionState) error { return nil },
		})
		ch <- res{s, err}
	}()
	_ = agentEnd.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tunnel.WriteFrame(agentEnd, &tunnel.Hello{Cluster: cluster, Agent: "raw-" + cluster}); err != nil {
		t.Fatal(err)
	}
	var w tunnel.Welcome
	if err := tunnel.ReadFrame(agentEnd, &w); err != nil || !w.OK {
		t.Fatalf("welcome %+v, %v", w, err)
	}
	_ = agentEnd.SetDeadline(time.Time{})
	mux, err := yamux.Server(agentEnd, tunnel.YamuxConfig(0))
	if err != nil {
		t.Fatal(err)
	}
	got := <-ch
	if got.err != nil {
		t.Fatal(got.err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if answer == nil {
			<-mux.CloseChan()
			return
		}
		var wg sync.WaitGroup
		defer wg.Wait()
		for {
			st, err := mux.AcceptStream()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); defer st.Close(); answer(st) }()
		}
	}()
	t.Cleanup(func() { _ = got.s.Close(); _ = mux.Close(); <-done })
	if err := r.Add(got.s, nil); err != nil {
		t.Fatal(err)
	}
}

// openAs opens a stream to cluster as user; a stream it opens is closed
// when the test ends, if not before.
func openAs(t *testing.T, r *relay.Router, cluster, user string) (net.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, err := r.Open(ctx, &tunnel.Open{Cluster: cluster, Request: "req", Client: "203.0.113.1:1", User: user}, relay.StreamOwner{})
	if err == nil {
		t.Cleanup(func() { _ = c.Close() })
	}
	return c, err
}

// mustOpen opens n streams to cluster as user, or fails the test.
func mustOpen(t *testing.T, r *relay.Router, cluster, user string, n int) []net.Conn {
	t.Helper()
	var cs []net.Conn
	for i := range n {
		c, err := openAs(t, r, cluster, user)
		if err != nil {
			t.Fatalf("%s's stream %d to %s: %v", user, i+1, cluster, err)
		}
		cs = append(cs, c)
	}
	return cs
}

// wantCallerCap fails the test unless err is the refusal of a caller at
// its own cap.
func wantCallerCap(t *testing.T, err error, user string, limit int) {
	t.Helper()
	if !errors.Is(err, relay.ErrTooManyStreams) {
		t.Fatalf("%s beyond the per-caller cap: %v, want ErrTooManyStreams", user, err)
	}
	for _, want := range []string{"--max-streams-per-caller", fmt.Sprintf("%q", user), fmt.Sprint(limit)} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("the refusal %q does not mention %s", err, want)
		}
	}
}

// TestRouterCapsStreamsPerCaller: one caller cannot hold more than
// MaxStreamsPerCaller streams, to any clusters; another caller of the same
// cluster still gets through; closing a stream gives its slot back, once.
func TestRouterCapsStreamsPerCaller(t *testing.T) {
	logs := &syncBuffer{}
	r := newRouter(t, relay.RouterConfig{MaxStreamsPerCaller: 2, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	t.Cleanup(func() { _ = r.Close() })
	holdingAgent(t, r, "prod")
	holdingAgent(t, r, "staging")

	a := mustOpen(t, r, "prod", "alice", 1)[0]
	mustOpen(t, r, "staging", "alice", 1) // the cap counts every cluster
	_, err := openAs(t, r, "prod", "alice")
	wantCallerCap(t, err, "alice", 2)

	w := httptest.NewRecorder()
	relay.WriteError(w, err)
	st, ok := kstatus.Decode(w.Body.Bytes())
	if w.Code != 429 || !ok || st.Code != 429 || st.Reason != kstatus.ReasonTooManyRequests ||
		!strings.Contains(st.Message, "close") || !strings.Contains(st.Message, "raise --max-streams-per-caller") {
		t.Fatalf("the caller is told %d %s; want 429 TooManyRequests saying which limit and what to do", w.Code, w.Body)
	}
	if l := logs.String(); !strings.Contains(l, "user=alice") || !strings.Contains(l, "cluster=prod") || !strings.Contains(l, "max-streams-per-caller") {
		t.Fatalf("the refusal is not logged with the user and cluster:\n%s", l)
	}

	// Another caller of the same cluster is not held up by alice.
	mustOpen(t, r, "prod", "bob", 2)

	_ = a.Close()
	_ = a.Close() // a second Close must not free a second slot
	mustOpen(t, r, "prod", "alice", 1)
	_, err = openAs(t, r, "prod", "alice")
	wantCallerCap(t, err, "alice", 2)
}

// TestRouterCallerBudgetCannotLeak: every way an Open can fail (no agent,
// the agent refuses, the session is dead, the caller gives up, the
// cluster's or the relay's cap, the caller's own cap) leaves the caller's
// count as it was, also when many Opens race; so does every Close.
func TestRouterCallerBudgetCannotLeak(t *testing.T) {
	const perCaller = 2
	r := newRouter(t, relay.RouterConfig{MaxStreamsPerCaller: perCaller, MaxStreamsPerCluster: 3,
		StreamWindow: tunnel.MinStreamWindow, StreamMemory: 4 * tunnel.MinStreamWindow})
	t.Cleanup(func() { _ = r.Close() })
	holdingAgent(t, r, "prod")
	holdingAgent(t, r, "staging")
	rawAgent(t, r, "refusing", func(st net.Conn) {
		var o tunnel.Open
		if tunnel.ReadFrame(st, &o) == nil {
			_ = tunnel.WriteFrame(st, &tunnel.OpenReply{Reason: tunnel.ReasonClusterMismatch, Message: "not mine"})
		}
	})
	rawAgent(t, r, "silent", nil)
	rs, as := tunneltest.Pair(t, tunnel.Hello{Cluster: "dead", Agent: "agent-dead"})
	if err := r.Add(rs, nil); err != nil {
		t.Fatal(err)
	}
	_ = as.Close() // the agent's end dies; the relay may not have noticed yet

	// Each failure is tried more often than the cap: one leaked slot each
	// would leave alice none.
	const tries = perCaller + 2
	failures := []struct {
		name string
		open func() error
		want func(error) bool
	}{
		{"not connected", func() error { _, err := openAs(t, r, "nowhere", "alice"); return err },
			func(err error) bool { var nc *relay.NotConnectedError; return errors.As(err, &nc) }},
		{"refused by the agent", func() error { _, err := openAs(t, r, "refusing", "alice"); return err },
			func(err error) bool { var ref *tunnel.RefusedError; return errors.As(err, &ref) }},
		{"dead session", func() error { _, err := openAs(t, r, "dead", "alice"); return err },
			func(err error) bool { return err != nil && !errors.Is(err, relay.ErrTooManyStreams) }},
		{"the caller gives up", func() error {
			ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
			defer cancel()
			c, err := r.Open(ctx, &tunnel.Open{Cluster: "silent", Request: "req", Client: "c", User: "alice"}, relay.StreamOwner{})
			if err == nil {
				_ = c.Close()
			}
			return err
		}, func(err error) bool { return err != nil && !errors.Is(err, relay.ErrTooManyStreams) }},
	}
	for _, f := range failures {
		for i := range tries {
			if err := f.open(); !f.want(err) {
				t.Fatalf("%s, try %d: %v", f.name, i+1, err)
			}
		}
	}

	// Refused by the cluster's cap (3: bob's 2 and carol's 1), then by the
	// relay's (4 in all: dave's 1 more on staging).
	others := append(mustOpen(t, r, "prod", "bob", 2), mustOpen(t, r, "prod", "carol", 1)...)
	for range tries {
		if _, err := openAs(t, r, "prod", "alice"); err == nil || !strings.Contains(err.Error(), "--max-streams-per-cluster") {
			t.Fatalf("prod at its cap: %v, want the per-cluster refusal", err)
		}
	}
	others = append(others, mustOpen(t, r, "staging", "dave", 1)...)
	for range tries {
		if _, err := openAs(t, r, "staging", "alice"); err == nil || !strings.Contains(err.Error(), "--stream-memory") {
			t.Fatalf("the relay at its cap: %v, want the relay-wide refusal", err)
		}
	}
	for _, c := range others {
		_ = c.Close()
	}

	// Refused by alice's own cap, then both closed.
	held := mustOpen(t, r, "prod", "alice", perCaller)
	for range tries {
		_, err := openAs(t, r, "staging", "alice")
		wantCallerCap(t, err, "alice", perCaller)
	}
	for _, c := range held {
		_ = c.Close()
	}

	// Many Opens and Closes racing (run with -race): at most the cap succeed
	// at once, and every refusal is the caller's cap.
	var wg sync.WaitGroup
	var holding atomic.Int32
	errs := make(chan error, 16*8)
	for range 16 {
		wg.Go(func() {
			for range 8 {
				ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
				c, err := r.Open(ctx, &tunnel.Open{Cluster: "prod", Request: "req", Client: "c", User: "alice"}, relay.StreamOwner{})
				cancel()
				if err != nil {
					if !errors.Is(err, relay.ErrTooManyStreams) || !strings.Contains(err.Error(), "--max-streams-per-caller") {
						errs <- err
					}
					continue
				}
				// Counted after the router counted it, uncounted before
				// the router does: never more than the router holds.
				if n := holding.Add(1); n > perCaller {
					errs <- fmt.Errorf("alice holds %d streams at once, more than her cap", n)
				}
				holding.Add(-1)
				_ = c.Close()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("a racing Open failed otherwise than at the caller's cap: %v", err)
	}

	// After all that, alice has exactly her cap again, and nothing is open.
	if n := r.Streams(); n != 0 {
		t.Fatalf("%d streams counted open after every one closed", n)
	}
	mustOpen(t, r, "prod", "alice", perCaller)
	_, err := openAs(t, r, "prod", "alice")
	wantCallerCap(t, err, "alice", perCaller)
}

func TestRouterConfigValidateMaxStreamsPerCaller(t *testing.T) {
	c := relay.RouterConfig{MaxStreamsPerCaller: -1}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "MaxStreamsPerCaller") {
		t.Fatalf("MaxStreamsPerCaller -1: %v, want an error naming the field", err)
	}
	c.MaxStreamsPerCaller = 0 // the default
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

// wantCallerCapStatus fails the test unless the relay answered 429 with a
// Status naming the per-caller cap and user.
func wantCallerCapStatus(t *testing.T, code int, st kstatus.Status, user string) {
	t.Helper()
	if code != 429 || st.Code != 429 || st.Reason != kstatus.ReasonTooManyRequests ||
		!strings.Contains(st.Message, "--max-streams-per-caller") || !strings.Contains(st.Message, fmt.Sprintf("%q", user)) {
		t.Fatalf("got %d %+v, want a 429 Status naming --max-streams-per-caller and %s", code, st, user)
	}
}

// TestTunnelCapsStreamsPerCaller: the tunnel endpoint caps the identity the
// relay authenticated, not the token: alice's two tokens share her budget,
// bob, granted the same cluster, has his own; no token reaches the logs.
func TestTunnelCapsStreamsPerCaller(t *testing.T) {
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	h := newRelayRouted(t, relay.RouterConfig{MaxStreamsPerCaller: 2, Logger: log}, func(c *relay.ServerConfig) { c.Logger = log })
	h.create(t, "prod")
	rs, as := tunneltest.Pair(t, tunnel.Hello{Cluster: "prod", Agent: "a"})
	tunneltest.Serve(t, as, func(st *tunnel.Stream) { _, _ = io.Copy(st, st) }) // echo until the caller half-closes
	if err := h.router.Add(rs, nil); err != nil {
		t.Fatal(err)
	}
	first, err := h.dialTunnel(t, "prod", goodToken)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.dialTunnel(t, "prod", refreshedToken); err != nil {
		t.Fatal(err)
	}
	_, err = h.dialTunnel(t, "prod", goodToken)
	var te *relayapi.TunnelError
	if !errors.As(err, &te) {
		t.Fatalf("alice's third tunnel: %v, want the relay's refusal", err)
	}
	wantCallerCapStatus(t, te.Status.Code, te.Status, "alice")
	if _, err := h.dialTunnel(t, "prod", bobToken); err != nil {
		t.Fatalf("bob, while alice is at her cap: %v", err)
	}

	// Her first tunnel ends: its stream goes back to her budget.
	_ = first.Close()
	for deadline := time.Now().Add(5 * time.Second); h.router.Streams() != 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d streams open 5 s after alice closed a tunnel, want 2", h.router.Streams())
		}
	}
	if _, err := h.dialTunnel(t, "prod", goodToken); err != nil {
		t.Fatalf("alice after closing a tunnel: %v", err)
	}
	l := logs.String()
	if !strings.Contains(l, "user=alice cluster=prod") {
		t.Fatalf("the refusal is not logged with the user and cluster:\n%s", l)
	}
	for _, tok := range []string{goodToken, refreshedToken, bobToken} {
		if strings.Contains(l, tok) {
			t.Fatalf("a token reached the log:\n%s", l)
		}
	}
	want := `
# HELP tether_relay_tunnels_total Callers' tunnel requests, by result.
# TYPE tether_relay_tunnels_total counter
tether_relay_tunnels_total{result="opened"} 4
tether_relay_tunnels_total{result="too_many_streams"} 1
`
	// A tunnel is counted just after its 101 is sent: wait for the last.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		err := testutil.GatherAndCompare(h.prom, strings.NewReader(want), "tether_relay_tunnels_total")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
	}
}

// TestClusterEndpointCapsStreamsPerCaller: the cluster endpoint's streams
// count against the caller's cap as tunnels do, its pooled connections to
// agents included, keyed on the identity rather than the token.
func TestClusterEndpointCapsStreamsPerCaller(t *testing.T) {
	h := newRelayRouted(t, relay.RouterConfig{MaxStreamsPerCaller: 1}, func(c *relay.ServerConfig) { c.ClusterEndpoint = &relay.ClusterEndpointConfig{} })
	agent := startAgent(t, h, "prod", tunneltest.Join(t, h.reg, h.create(t, "prod")))

	// alice's watch holds her one stream.
	req, err := http.NewRequest(http.MethodGet, h.api.URL+"/v1/clusters/prod/k8s/watch", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+goodToken)
	watch, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Body.Close()
	events := bufio.NewReader(watch.Body)
	if line, err := events.ReadString('\n'); err != nil || line != "event-1\n" {
		t.Fatalf("first event: %q, %v", line, err)
	}
	for _, tok := range []string{goodToken, refreshedToken} {
		resp, body := h.get(t, "/v1/clusters/prod/k8s/api", tok, nil)
		st, _ := kstatus.Decode([]byte(body))
		wantCallerCapStatus(t, resp.StatusCode, st, "alice")
	}
	if resp, body := h.get(t, "/v1/clusters/prod/k8s/api", bobToken, nil); resp.StatusCode != 200 {
		t.Fatalf("bob, while alice is at her cap: %d %s", resp.StatusCode, body)
	}

	// The watch ends; its connection goes back to alice's pool (the
	// transport does that a moment after the response ends) and carries
	// her next request without another stream.
	close(agent.release)
	if rest, err := io.ReadAll(events); err != nil || string(rest) != "event-2\n" {
		t.Fatalf("the rest of the watch: %q, %v", rest, err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		resp, body := h.get(t, "/v1/clusters/prod/k8s/api", goodToken, nil)
		if resp.StatusCode == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("alice after her watch ended: %d %s", resp.StatusCode, body)
		}
	}
	// Her idle pooled connection still holds her stream: her other
	// token's pool cannot open one until it is closed.
	resp, body := h.get(t, "/v1/clusters/prod/k8s/api", refreshedToken, nil)
	st, _ := kstatus.Decode([]byte(body))
	wantCallerCapStatus(t, resp.StatusCode, st, "alice")
	_ = h.srv.Close() // closes the idle connections
	if resp, body := h.get(t, "/v1/clusters/prod/k8s/api", refreshedToken, nil); resp.StatusCode != 200 {
		t.Fatalf("alice's other token after her idle connection closed: %d %s", resp.StatusCode, body)
	}
}

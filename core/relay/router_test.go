package relay_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tether-k8s/tether/core/relay"
	"github.com/tether-k8s/tether/core/tunnel"
	"github.com/tether-k8s/tether/core/tunnel/tunneltest"
)

// agent joins a session for cluster/slot to r; every stream it accepts is
// answered with "<cluster>/<slot>".
func agent(t *testing.T, r *relay.Router, cluster string, slot int) *tunnel.RelaySession {
	t.Helper()
	rs, as := tunneltest.Pair(t, tunnel.Hello{Cluster: cluster, Agent: "agent-" + cluster, Slot: slot})
	tunneltest.Serve(t, as, func(st *tunnel.Stream) { fmt.Fprintf(st, "%s/%d", cluster, slot) })
	if err := r.Add(rs, nil); err != nil {
		t.Fatal(err)
	}
	return rs
}

func open(t *testing.T, r *relay.Router, cluster string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, err := r.Open(ctx, &tunnel.Open{Cluster: cluster, Request: "req", Client: "203.0.113.1:1"}, relay.StreamOwner{})
	if err != nil {
		return "", err
	}
	defer c.Close()
	b, err := io.ReadAll(c)
	return string(b), err
}

func TestRouterSendsEachClusterToItsOwnAgents(t *testing.T) {
	r := newRouter(t, relay.RouterConfig{})
	t.Cleanup(func() { _ = r.Close() })
	agent(t, r, "prod", 0)
	agent(t, r, "prod", 1)
	agent(t, r, "staging", 0)

	seen := map[string]int{}
	for range 6 {
		got, err := open(t, r, "prod")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(got, "prod/") {
			t.Fatalf("a stream for prod was answered by %q", got)
		}
		seen[got]++
	}
	if seen["prod/0"] != 3 || seen["prod/1"] != 3 {
		t.Fatalf("streams per session %v, want them taken in turn", seen)
	}
	if got, err := open(t, r, "staging"); err != nil || got != "staging/0" {
		t.Fatalf("staging answered %q, %v", got, err)
	}
}

func TestRouterNotConnected(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	r := newRouter(t, relay.RouterConfig{Now: func() time.Time { return now }})
	t.Cleanup(func() { _ = r.Close() })

	_, err := open(t, r, "prod")
	var nc *relay.NotConnectedError
	if !errors.As(err, &nc) || !nc.LastSeen.IsZero() || !strings.Contains(err.Error(), "no agent of it has connected") {
		t.Fatalf("never-connected cluster: %v", err)
	}

	s := agent(t, r, "prod", 0)
	if _, err := open(t, r, "prod"); err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	deadline := time.Now().Add(5 * time.Second)
	for r.Sessions("prod") != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	_, err = open(t, r, "prod")
	if !errors.As(err, &nc) || !nc.LastSeen.Equal(now) {
		t.Fatalf("after the agent left: %v, want not connected, last seen %s", err, now)
	}

	w := httptest.NewRecorder()
	relay.WriteError(w, err)
	var st struct {
		Kind, Reason, Message string
		Code                  int
	}
	if json.Unmarshal(w.Body.Bytes(), &st); w.Code != 503 || st.Kind != "Status" || st.Code != 503 || !strings.Contains(st.Message, "last seen 2026-11-23T12:00:00Z") {
		t.Fatalf("Status %d %s", w.Code, w.Body)
	}
}

func TestRouterCapsStreamsPerCluster(t *testing.T) {
	r := newRouter(t, relay.RouterConfig{MaxStreamsPerCluster: 2})
	t.Cleanup(func() { _ = r.Close() })
	rs, as := tunneltest.Pair(t, tunnel.Hello{Cluster: "prod", Agent: "a"})
	// The agent holds its streams open until the test ends.
	hold := make(chan struct{})
	tunneltest.Serve(t, as, func(st *tunnel.Stream) { <-hold })
	t.Cleanup(func() { close(hold) })
	if err := r.Add(rs, nil); err != nil {
		t.Fatal(err)
	}
	o := &tunnel.Open{Cluster: "prod", Request: "r", Client: "c"}
	a, err := r.Open(t.Context(), o, relay.StreamOwner{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Open(t.Context(), o, relay.StreamOwner{}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Open(t.Context(), o, relay.StreamOwner{}); !errors.Is(err, relay.ErrTooManyStreams) {
		t.Fatalf("third stream: %v, want ErrTooManyStreams", err)
	}
	_ = a.Close()
	_ = a.Close() // a second Close must not free a second slot
	if _, err := r.Open(t.Context(), o, relay.StreamOwner{}); err != nil {
		t.Fatalf("after closing one: %v", err)
	}
	if _, err := r.Open(t.Context(), o, relay.StreamOwner{}); !errors.Is(err, relay.ErrTooManyStreams) {
		t.Fatalf("double Close freed two slots: %v", err)
	}
}

func TestRouterSkipsADeadSession(t *testing.T) {
	r := newRouter(t, relay.RouterConfig{})
	t.Cleanup(func() { _ = r.Close() })
	agent(t, r, "prod", 0)
	rs, as := tunneltest.Pair(t, tunnel.Hello{Cluster: "prod", Agent: "dying", Slot: 1})
	if err := r.Add(rs, nil); err != nil {
		t.Fatal(err)
	}
	_ = as.Close() // the agent's end dies; the relay may not have noticed yet
	for range 4 {
		if got, err := open(t, r, "prod"); err != nil || got != "prod/0" {
			t.Fatalf("got %q, %v; want the live session to answer", got, err)
		}
	}
}

func TestRouterAvoidsDrainingSessionsWhileOthersLive(t *testing.T) {
	r := newRouter(t, relay.RouterConfig{})
	t.Cleanup(func() { _ = r.Close() })
	old := agent(t, r, "prod", 0)
	if err := old.GoAway(t.Context(), time.Minute, "moving"); err != nil {
		t.Fatal(err)
	}
	// Only the draining session: it still carries streams.
	if got, err := open(t, r, "prod"); err != nil || got != "prod/0" {
		t.Fatalf("with only a draining session: %q, %v; want it served there", got, err)
	}
	agent(t, r, "prod", 1) // the agent's replacement
	for range 4 {
		if got, err := open(t, r, "prod"); err != nil || got != "prod/1" {
			t.Fatalf("with a replacement up: %q, %v; want every stream on prod/1", got, err)
		}
	}
	if n := r.CloseCluster("prod"); n != 2 {
		t.Fatalf("CloseCluster closed %d sessions, want 2", n)
	}
	if _, err := open(t, r, "prod"); err == nil {
		t.Fatal("a stream opened after CloseCluster")
	}
}

// TestRouterBoundsWhatSlowCallersMakeItHold: a caller that never reads
// makes the relay hold what the agent sends on its stream; yamux lets the
// agent send at most the stream window before the relay reads, and the
// router opens at most StreamMemory / StreamWindow streams, so all the
// agent can make the relay hold is StreamMemory.
func TestRouterBoundsWhatSlowCallersMakeItHold(t *testing.T) {
	for _, window := range []uint32{tunnel.MinStreamWindow, 1 << 20} {
		t.Run(fmt.Sprint(window), func(t *testing.T) {
			memory := 3 * int64(window)
			r := newRouter(t, relay.RouterConfig{StreamWindow: window, StreamMemory: memory, MaxStreamsPerCluster: 100})
			t.Cleanup(func() { _ = r.Close() })
			if r.MaxStreams() != 3 {
				t.Fatalf("MaxStreams = %d, want 3", r.MaxStreams())
			}
			rs, as := tunneltest.PairWindow(t, tunnel.Hello{Cluster: "prod", Agent: "agent-prod"}, r.StreamWindow())
			var sent atomic.Int64
			// The agent answers every stream with as much as it can send:
			// 64 windows, far more than yamux lets through unread.
			tunneltest.Serve(t, as, func(st *tunnel.Stream) {
				chunk := make([]byte, 4<<10)
				for range 64 * int(window) / len(chunk) {
					n, err := st.Write(chunk)
					sent.Add(int64(n))
					if err != nil {
						return
					}
				}
			})
			if err := r.Add(rs, nil); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			for i := range 3 {
				c, err := r.Open(ctx, &tunnel.Open{Cluster: "prod", Request: fmt.Sprint("slow-", i), Client: "203.0.113.1:1"}, relay.StreamOwner{})
				if err != nil {
					t.Fatalf("stream %d: %v", i, err)
				}
				t.Cleanup(func() { _ = c.Close() })
			}
			if _, err := r.Open(ctx, &tunnel.Open{Cluster: "prod", Request: "one-too-many", Client: "203.0.113.1:1"}, relay.StreamOwner{}); !errors.Is(err, relay.ErrTooManyStreams) {
				t.Fatalf("a stream beyond StreamMemory / StreamWindow: %v, want ErrTooManyStreams", err)
			}
			// The agent fills every window: the OpenReply took a few bytes of
			// each, and a write blocked mid-chunk is not counted yet (up to
			// 5 KiB a stream)...
			for deadline := time.Now().Add(10 * time.Second); sent.Load() < memory-3*5<<10; {
				if time.Now().After(deadline) {
					t.Fatalf("the agent sent only %d bytes in 10 s; want its windows filled, %d", sent.Load(), memory)
				}
				time.Sleep(20 * time.Millisecond)
			}
			// ...and then cannot send more, however long it tries.
			time.Sleep(500 * time.Millisecond)
			if got := sent.Load(); got > memory {
				t.Fatalf("the relay holds %d bytes its callers have not read; want at most StreamMemory, %d", got, memory)
			}
		})
	}
}

// newRouter is relay.NewRouter for a configuration the test knows is valid.
func newRouter(t testing.TB, cfg relay.RouterConfig) *relay.Router {
	t.Helper()
	r, err := relay.NewRouter(cfg)
	if err != nil {
		t.Fatalf("NewRouter: %v", err)
	}
	return r
}

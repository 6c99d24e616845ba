package relay

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/tether-k8s/tether/core/tunnel"
	"github.com/tether-k8s/tether/core/tunnel/tunneltest"
)

// TestRouterForgetsCallersWithNoStream: the per-caller counts hold an entry
// only while the caller has a stream open, so many callers over time do
// not grow the router.
func TestRouterForgetsCallersWithNoStream(t *testing.T) {
	r, err := NewRouter(RouterConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	rs, as := tunneltest.Pair(t, tunnel.Hello{Cluster: "prod", Agent: "a"})
	tunneltest.Serve(t, as, func(st *tunnel.Stream) { _, _ = io.Copy(io.Discard, st) })
	if err := r.Add(rs, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	for i := range 50 {
		user := fmt.Sprint("user-", i)
		a, err := r.Open(ctx, &tunnel.Open{Cluster: "prod", Request: "r", Client: "c", User: user}, StreamOwner{})
		if err != nil {
			t.Fatal(err)
		}
		b, err := r.Open(ctx, &tunnel.Open{Cluster: "prod", Request: "r", Client: "c", User: user}, StreamOwner{})
		if err != nil {
			t.Fatal(err)
		}
		_ = a.Close()
		_ = b.Close()
		_ = b.Close()
		if _, err := r.Open(ctx, &tunnel.Open{Cluster: "nowhere", Request: "r", Client: "c", User: user}, StreamOwner{}); err == nil {
			t.Fatal("a stream opened to a cluster with no agent")
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.callers) != 0 || r.streams != 0 {
		t.Fatalf("after every stream closed the router still counts %d streams and callers %v", r.streams, r.callers)
	}
}

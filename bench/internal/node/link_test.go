package node

import (
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// TestDelayedCopyHoldsEachChunk: data crosses a link direction no sooner
// than half the round-trip time after it was sent, and intact.
func TestDelayedCopyHoldsEachChunk(t *testing.T) {
	a1, a2 := net.Pipe()
	b1, b2 := net.Pipe()
	var half atomic.Int64
	half.Store(int64(30 * time.Millisecond))
	done := make(chan struct{})
	go func() { defer close(done); delayedCopy(b1, a2, &half) }()
	start := time.Now()
	go func() {
		_, _ = a1.Write([]byte("ping"))
		_ = a1.Close()
	}()
	got := make([]byte, 4)
	if _, err := io.ReadFull(b2, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != "ping" {
		t.Fatalf("got %q, want ping", got)
	}
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Errorf("arrived after %s, want at least 30ms", d)
	}
	// net.Pipe has no half-close: end the other side by hand.
	_ = b2.Close()
	_ = b1.Close()
	<-done
}

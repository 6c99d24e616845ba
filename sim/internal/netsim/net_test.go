package netsim_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/tether-k8s/tether/sim/internal/netsim"
)

func pair(t *testing.T, n *netsim.Network) (client, server net.Conn) {
	t.Helper()
	l, err := n.Host("b").Listen(80)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	acc := make(chan net.Conn, 1)
	go func() { c, _ := l.Accept(); acc <- c }()
	c, err := n.Host("a").DialContext(context.Background(), "tcp", "b:80")
	if err != nil {
		t.Fatal(err)
	}
	s := <-acc
	t.Cleanup(func() { _ = c.Close(); _ = s.Close() })
	return c, s
}

func TestBytesFlowInOrderAndHalfClose(t *testing.T) {
	n := netsim.New(1)
	c, s := pair(t, n)
	msg := bytes.Repeat([]byte("0123456789"), 100_000) // 1 MB, over the buffer
	go func() { _, _ = c.Write(msg); _ = c.(interface{ CloseWrite() error }).CloseWrite() }()
	got, err := io.ReadAll(s)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("read %d bytes, %v", len(got), err)
	}
	if _, err := s.Write([]byte("back")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "back" {
		t.Fatalf("after half-close: %q %v", buf, err)
	}
}

func TestLatencyAndPause(t *testing.T) {
	n := netsim.New(1)
	c, s := pair(t, n)
	n.Link("a", "b").SetShape(50*time.Millisecond, 0, 0)
	start := time.Now()
	_, _ = c.Write([]byte("x"))
	buf := make([]byte, 1)
	if _, err := s.Read(buf); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 45*time.Millisecond || d > time.Second {
		t.Fatalf("one byte took %s over a 50ms link", d)
	}
	n.Link("a", "b").Pause(false)
	_, _ = c.Write([]byte("y"))
	_ = s.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
	if _, err := s.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read across a paused link: %v, want a deadline error", err)
	}
	_ = s.SetReadDeadline(time.Time{})
	go func() { time.Sleep(50 * time.Millisecond); n.Link("a", "b").Resume(false) }()
	if _, err := s.Read(buf); err != nil || buf[0] != 'y' {
		t.Fatalf("after resume: %q %v", buf, err)
	}
}

func TestPartitionResetAndRefusal(t *testing.T) {
	n := netsim.New(1)
	n.DialTimeout = 100 * time.Millisecond
	c, s := pair(t, n)
	n.Link("b", "a").Pause(true)
	if _, err := n.Host("a").DialContext(context.Background(), "tcp", "b:80"); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("dial across a partition: %v, want a timeout", err)
	}
	n.Link("b", "a").Resume(true)
	if _, err := n.Host("a").DialContext(context.Background(), "tcp", "b:81"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial to no listener: %v, want refused", err)
	}
	if got := n.ResetHost("b"); got == 0 {
		t.Fatal("ResetHost found no connection")
	}
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read after reset: %v", err)
	}
	if _, err := s.Write([]byte("x")); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("write after reset: %v", err)
	}
}

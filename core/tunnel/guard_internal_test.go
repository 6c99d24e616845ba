package tunnel

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// The frame limits must never end an honest session. These tests run honest
// traffic over a real session (loopback TCP: the frames do not depend on
// what carries them) and compare what each end's guard counted with what it
// allowed. docs/protocol.md quotes their numbers (go test -v -run
// TestHonestTraffic).

// guardedPair returns both ends of an established session over loopback TCP,
// each with a stream window of window bytes (0: the default).
func guardedPair(t *testing.T, window uint32) (*RelaySession, *AgentSession) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	ac, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	rc := <-accepted
	type res struct {
		s   *AgentSession
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := ConnectAgent(context.Background(), ac, AgentConfig{Hello: Hello{Cluster: "prod", Agent: "a"}, Yamux: YamuxConfig(window)})
		ch <- res{s, err}
	}()
	rs, err := AcceptAgent(context.Background(), rc, RelayConfig{
		Authorize: func(context.Context, *Hello, tls.ConnectionState) error { return nil },
		Yamux:     YamuxConfig(window),
	})
	r := <-ch
	if err != nil || r.err != nil {
		t.Fatalf("handshake: relay %v, agent %v", err, r.err)
	}
	t.Cleanup(func() { _ = rs.Close(); _ = r.s.Close() })
	return rs, r.s
}

// serveAgent runs f on every stream the agent accepts, until it closes.
func serveAgent(as *AgentSession, f func(c net.Conn)) *sync.WaitGroup {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := as.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); f(c); _ = c.Close() }()
		}
	}()
	return &wg
}

// guardReport is what one end's guard counted of its peer's frames, read
// once the session has ended (its reading goroutine has returned).
type guardReport struct {
	end                 string
	control, allowed    uint64
	pings, acks, opens  int
	sentSYNs, sentBytes uint64
}

func report(end string, g *frameGuard) guardReport {
	return guardReport{end: end, control: g.control, allowed: g.controlAllowance(),
		pings: g.pings, acks: int(g.pingAcks), opens: g.opens,
		sentSYNs: g.sentSYNs.Load(), sentBytes: g.sentBytes.Load()}
}

func (r guardReport) String() string {
	return fmt.Sprintf("%s received %d window updates and empty frames (allowed %d: %d streams opened by it, %d by the peer, %d payload bytes sent), %d pings, %d ping answers",
		r.end, r.control, r.allowed, r.sentSYNs, r.opens, r.sentBytes, r.pings, r.acks)
}

// check fails the test unless the honest peer stayed well inside the
// allowance: at most half of it.
func (r guardReport) check(t *testing.T) {
	t.Helper()
	t.Log(r)
	if r.control*2 > r.allowed {
		t.Errorf("%s: honest traffic used %d of %d allowed control frames: the margin is too thin", r.end, r.control, r.allowed)
	}
}

func closeAndReport(t *testing.T, rs *RelaySession, as *AgentSession, wg *sync.WaitGroup) {
	t.Helper()
	select {
	case <-rs.CloseChan():
		t.Fatal("the relay's session ended during honest traffic")
	case <-as.CloseChan():
		t.Fatal("the agent's session ended during honest traffic")
	default:
	}
	_ = rs.Close()
	_ = as.Close()
	wg.Wait()
	report("relay", rs.guard).check(t)
	report("agent", as.guard).check(t)
}

func TestHonestTrafficStaysWithinTheFrameLimits(t *testing.T) {
	const size = 256 << 20
	chunk := bytes.Repeat([]byte("x"), 256<<10)
	for _, window := range []uint32{0, MinStreamWindow} {
		name := fmt.Sprintf("window %d KiB", max(window, DefaultStreamWindow)>>10)
		if window != 0 {
			name = fmt.Sprintf("window %d KiB", window>>10)
		}
		t.Run("256 MiB download, "+name, func(t *testing.T) {
			rs, as := guardedPair(t, window)
			wg := serveAgent(as, func(c net.Conn) {
				for sent := 0; sent < size; sent += len(chunk) {
					if _, err := c.Write(chunk); err != nil {
						return
					}
				}
			})
			st, err := rs.Open(t.Context(), &Open{Cluster: "prod", Request: "download", Client: "c"})
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if n, err := io.CopyN(io.Discard, st, size); err != nil {
				t.Fatalf("download: %d bytes, %v", n, err)
			}
			t.Logf("256 MiB in %s", time.Since(start).Round(time.Millisecond))
			_ = st.Close()
			closeAndReport(t, rs, as, wg)
		})
		if window == 0 {
			continue // an upload moves the same frames the other way; the small window is the worst case
		}
		t.Run("256 MiB upload, "+name, func(t *testing.T) {
			rs, as := guardedPair(t, window)
			wg := serveAgent(as, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
			st, err := rs.Open(t.Context(), &Open{Cluster: "prod", Request: "upload", Client: "c"})
			if err != nil {
				t.Fatal(err)
			}
			for sent := 0; sent < size; sent += len(chunk) {
				if _, err := st.Write(chunk); err != nil {
					t.Fatal(err)
				}
			}
			_ = st.Close()
			closeAndReport(t, rs, as, wg)
		})
	}
	t.Run("1,000 concurrent short requests", func(t *testing.T) {
		rs, as := guardedPair(t, 0)
		wg := serveAgent(as, func(c net.Conn) {
			req := make([]byte, 100)
			if _, err := io.ReadFull(c, req); err != nil {
				return
			}
			_, _ = c.Write(bytes.Repeat([]byte("r"), 1<<10))
		})
		var clients sync.WaitGroup
		errs := make(chan error, 1000)
		for i := range 1000 {
			clients.Add(1)
			go func() {
				defer clients.Done()
				st, err := rs.Open(t.Context(), &Open{Cluster: "prod", Request: fmt.Sprintf("r%d", i), Client: "c"})
				if err != nil {
					errs <- err
					return
				}
				defer st.Close()
				if _, err := st.Write(bytes.Repeat([]byte("q"), 100)); err != nil {
					errs <- err
					return
				}
				if _, err := io.ReadFull(st, make([]byte, 1<<10)); err != nil {
					errs <- err
				}
			}()
		}
		clients.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("request: %v", err)
		}
		t.Logf("at most %d streams waited for their Open at once at the agent (limit %d)", as.peak.Load(), DefaultMaxPendingOpens)
		closeAndReport(t, rs, as, wg)
	})
}

// TestHonestKeepalivesStayWithinThePingLimit: an hour of an idle session's
// keepalives (every 15 s each way), on a fake clock.
func TestHonestKeepalivesStayWithinThePingLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		relayEnd, agentEnd := net.Pipe()
		ch := make(chan *AgentSession, 1)
		go func() {
			s, err := ConnectAgent(context.Background(), agentEnd, AgentConfig{Hello: Hello{Cluster: "prod", Agent: "a"}})
			if err != nil {
				t.Error(err)
			}
			ch <- s
		}()
		rs, err := AcceptAgent(context.Background(), relayEnd, RelayConfig{
			Authorize: func(context.Context, *Hello, tls.ConnectionState) error { return nil },
		})
		if err != nil {
			t.Fatal(err)
		}
		as := <-ch
		if as == nil {
			t.FailNow()
		}
		time.Sleep(time.Hour)
		synctest.Wait()
		closeAndReport(t, rs, as, &sync.WaitGroup{})
		for _, g := range []*frameGuard{rs.guard, as.guard} {
			if g.pings < 200 || g.pingAcks < 200 {
				t.Errorf("%d pings and %d answers in an hour; want 240 of each (one every 15 s)", g.pings, g.pingAcks)
			}
		}
	})
}

// BenchmarkFrameGuardRead: what the guard costs the reading side, against
// reading the same frames directly in the same run: 64 MiB of 64 KiB data
// frames (as yamux sends a large response), read in 32 KiB pieces.
func BenchmarkFrameGuardRead(b *testing.B) {
	var frames bytes.Buffer
	body := bytes.Repeat([]byte("x"), 64<<10)
	for range 1024 {
		h := make([]byte, yamuxHeaderLen)
		h[1] = yamuxData
		h[7] = 1
		h[9] = 1 // 64 KiB
		frames.Write(h)
		frames.Write(body)
	}
	buf := make([]byte, 32<<10)
	for _, guarded := range []bool{false, true} {
		name := "direct"
		if guarded {
			name = "guarded"
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(frames.Len()))
			for b.Loop() {
				var r io.Reader = bytes.NewReader(frames.Bytes())
				if guarded {
					r = newFrameGuard(readerConn{r}, guardConfig{peer: "agent", maxData: DefaultStreamWindow})
				}
				for {
					if _, err := r.Read(buf); err != nil {
						if err != io.EOF {
							b.Fatal(err)
						}
						break
					}
				}
			}
		})
	}
}

// readerConn is a net.Conn that only reads, from r.
type readerConn struct{ r io.Reader }

func (c readerConn) Read(p []byte) (int, error)     { return c.r.Read(p) }
func (readerConn) Write(p []byte) (int, error)      { return len(p), nil }
func (readerConn) Close() error                     { return nil }
func (readerConn) LocalAddr() net.Addr              { return nil }
func (readerConn) RemoteAddr() net.Addr             { return nil }
func (readerConn) SetDeadline(time.Time) error      { return nil }
func (readerConn) SetReadDeadline(time.Time) error  { return nil }
func (readerConn) SetWriteDeadline(time.Time) error { return nil }

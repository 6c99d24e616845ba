package tunnel_test

import (
	"bytes"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tether-k8s/tether/core/tunnel"
)

// The tests in this file play a hostile peer on a real session: a real
// RelaySession (or AgentSession) over mutual TLS with a credential from a
// real registry, whose other end is the raw TLS connection, on which the
// test writes yamux frames by hand. Each one bounds what it sends and how
// long it waits.

// yamux frame types and flags (hashicorp/yamux spec.md).
const (
	yData   = 0
	yWindow = 1
	yPing   = 2
	yGoAway = 3

	ySYN = 1
	yACK = 2
	yFIN = 4
	yRST = 8
)

// yhdr is one yamux frame header of any version.
func yhdr(version, typ uint8, flags uint16, id, length uint32) []byte {
	h := make([]byte, 12)
	h[0], h[1] = version, typ
	binary.BigEndian.PutUint16(h[2:], flags)
	binary.BigEndian.PutUint32(h[4:], id)
	binary.BigEndian.PutUint32(h[8:], length)
	return h
}

// yframe is one version-0 yamux frame: a header, and body for data frames.
func yframe(typ uint8, flags uint16, id, length uint32, body ...byte) []byte {
	return append(yhdr(0, typ, flags, id, length), body...)
}

// yframes is n frames made by f(i).
func yframes(n int, f func(i int) []byte) []byte {
	var b bytes.Buffer
	for i := range n {
		b.Write(f(i))
	}
	return b.Bytes()
}

// logBuffer collects a session's log lines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// hostileAgent returns a relay session whose agent is the test: it has
// completed the handshake (mutual TLS with the cluster's credential, Hello,
// Welcome) on raw, and nothing else.
func hostileAgent(t *testing.T, logs *logBuffer) (*tunnel.RelaySession, net.Conn) {
	t.Helper()
	rc, ac := tlsPair(t)
	handshake := make(chan error, 1)
	go func() {
		_ = ac.SetDeadline(time.Now().Add(10 * time.Second))
		if err := tunnel.WriteFrame(ac, &hello); err != nil {
			handshake <- err
			return
		}
		var w tunnel.Welcome
		handshake <- tunnel.ReadFrame(ac, &w)
		_ = ac.SetDeadline(time.Time{})
	}()
	rs, err := tunnel.AcceptAgent(t.Context(), rc, tunnel.RelayConfig{Authorize: acceptAll, Session: "s-hostile", Relay: "relay-0", Logger: logs.logger()})
	if err != nil {
		t.Fatalf("relay handshake: %v", err)
	}
	if err := <-handshake; err != nil {
		t.Fatalf("hostile agent's handshake: %v", err)
	}
	t.Cleanup(func() { _ = ac.Close(); _ = rs.Close() })
	return rs, ac
}

// hostileRelay returns an agent session whose relay is the test: it has
// completed the handshake on raw, and nothing else.
func hostileRelay(t *testing.T, logs *logBuffer) (*tunnel.AgentSession, net.Conn) {
	t.Helper()
	rc, ac := tlsPair(t)
	type res struct {
		s   *tunnel.AgentSession
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := tunnel.ConnectAgent(t.Context(), ac, tunnel.AgentConfig{Hello: hello, Logger: logs.logger().With("cluster", hello.Cluster)})
		ch <- res{s, err}
	}()
	_ = rc.SetDeadline(time.Now().Add(10 * time.Second))
	var h tunnel.Hello
	if err := tunnel.ReadFrame(rc, &h); err != nil {
		t.Fatalf("hostile relay's handshake: %v", err)
	}
	if err := tunnel.WriteFrame(rc, &tunnel.Welcome{OK: true, Session: "s-hostile", Relay: "relay-x"}); err != nil {
		t.Fatalf("hostile relay's handshake: %v", err)
	}
	_ = rc.SetDeadline(time.Time{})
	r := <-ch
	if r.err != nil {
		t.Fatalf("agent handshake: %v", r.err)
	}
	t.Cleanup(func() { _ = rc.Close(); _ = r.s.Close() })
	return r.s, rc
}

// send writes b on c in the background, giving up after 20 s or at the
// first error (the session under test closing the connection is one); the
// returned channel is closed when it is done.
func send(c net.Conn, b []byte) <-chan struct{} { return sendPaced(c, b, 64<<10, 0) }

// sendPaced is send in writes of at most chunk bytes, pause apart.
func sendPaced(c net.Conn, b []byte, chunk int, pause time.Duration) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.SetWriteDeadline(time.Now().Add(20 * time.Second))
		for len(b) > 0 {
			n, err := c.Write(b[:min(len(b), chunk)])
			if err != nil {
				return
			}
			b = b[n:]
			time.Sleep(pause)
		}
	}()
	return done
}

// drain reads c until it fails, so that the session under test can write.
func drain(c net.Conn) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(io.Discard, c)
	}()
	return done
}

// peaks samples the goroutine count and the memory in use (heap and
// goroutine stacks) every few milliseconds until stop is called, which
// returns the highest of each seen, less what was in use when peaks was
// called.
func peaks() (stop func() (goroutines int, memory uint64)) {
	inUse := func() uint64 {
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse + m.StackInuse
	}
	runtime.GC()
	baseG, baseM := runtime.NumGoroutine(), inUse()
	var peakG atomic.Int64
	var peakM atomic.Uint64
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				if n := int64(runtime.NumGoroutine()) - 1; n > peakG.Load() { // not this one
					peakG.Store(n)
				}
				if m := inUse(); m > peakM.Load() {
					peakM.Store(m)
				}
			}
		}
	}()
	return func() (int, uint64) {
		close(quit)
		<-done
		return max(0, int(peakG.Load())-baseG), max(baseM, peakM.Load()) - baseM
	}
}

// goroutinesBackTo waits (at most 10 s) for the goroutine count to come
// back to base, give or take slack.
func goroutinesBackTo(t *testing.T, base, slack int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= base+slack {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Errorf("%d goroutines 10 s after the session ended, %d before it began; stacks:\n%.8000s", n, base, buf)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ended waits at most d for ch to close.
func ended(ch <-chan struct{}, d time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}

// side is one end of a session under attack, as the tests below see it.
type side struct {
	name string
	// start returns the session's CloseChan, its Close, and the hostile
	// peer's raw connection.
	start func(t *testing.T, logs *logBuffer) (closed <-chan struct{}, closeFn func() error, raw net.Conn)
	// peerOpens is the parity of the stream IDs the hostile peer may
	// open: 0 (even) for an agent, 1 (odd) for the relay.
	peerOpens uint32
	// logNames are what the log line ending the session must name.
	logNames []string
}

var sides = []side{
	{
		name: "relay facing a hostile agent",
		start: func(t *testing.T, logs *logBuffer) (<-chan struct{}, func() error, net.Conn) {
			rs, raw := hostileAgent(t, logs)
			return rs.CloseChan(), rs.Close, raw
		},
		peerOpens: 0,
		logNames:  []string{"cluster=prod", "session=s-hostile", "agent=agent-0"},
	},
	{
		name: "agent facing a hostile relay",
		start: func(t *testing.T, logs *logBuffer) (<-chan struct{}, func() error, net.Conn) {
			as, raw := hostileRelay(t, logs)
			return as.CloseChan(), as.Close, raw
		},
		peerOpens: 1,
		logNames:  []string{"cluster=prod", "session=s-hostile", "relay=relay-x"},
	},
}

// TestPingFloodEndsTheSession is hole 1 of issue 15: a peer that writes
// 100,000 yamux pings (1.2 MB) and never reads made the relay start a
// goroutine for every one, and kept its session. It must lose the session
// at once, and the goroutines must stay bounded and come back.
func TestPingFloodEndsTheSession(t *testing.T) {
	for _, sd := range sides {
		t.Run(sd.name, func(t *testing.T) {
			base := runtime.NumGoroutine()
			logs := &logBuffer{}
			closed, closeFn, raw := sd.start(t, logs)
			flood := yframes(100_000, func(i int) []byte { return yframe(yPing, ySYN, 0, uint32(i)) })
			peak := peaks()
			sent := send(raw, flood)
			if !ended(closed, 5*time.Second) {
				t.Errorf("the session is still open 5 s into a flood of 100,000 pings")
			}
			<-sent
			g, m := peak()
			t.Logf("at the flood's peak: %d more goroutines, %.1f MiB more in use", g, float64(m)/(1<<20))
			if g > 200 || m > 32<<20 {
				t.Errorf("the flood made the session hold %d more goroutines and %.1f MiB more memory", g, float64(m)/(1<<20))
			}
			_ = raw.Close()
			_ = closeFn()
			goroutinesBackTo(t, base, 3)
			got := logs.String()
			t.Logf("the session's log:\n%s", got)
			for _, want := range append(sd.logNames, "ping") {
				if !strings.Contains(got, want) {
					t.Errorf("no log line names %q; logs:\n%s", want, got)
				}
			}
		})
	}
}

// TestControlFrameFloodsEndTheSession: frames without payload cost the
// receiver work and carry nothing; a flood of them ends the session.
func TestControlFrameFloodsEndTheSession(t *testing.T) {
	floods := []struct {
		name   string
		frames func(peerOpens uint32) []byte
	}{
		{"window updates for a stream that does not exist", func(uint32) []byte {
			return yframes(100_000, func(int) []byte { return yframe(yWindow, 0, 1000, 1) })
		}},
		{"empty data frames", func(uint32) []byte {
			return yframes(100_000, func(int) []byte { return yframe(yData, 0, 1000, 0) })
		}},
		{"ping replies nobody asked for", func(uint32) []byte {
			return yframes(100_000, func(i int) []byte { return yframe(yPing, yACK, 0, uint32(i)) })
		}},
		{"resets of a stream that does not exist", func(uint32) []byte {
			return yframes(100_000, func(int) []byte { return yframe(yWindow, yRST, 1000, 0) })
		}},
	}
	for _, sd := range sides {
		for _, fl := range floods {
			t.Run(sd.name+"/"+fl.name, func(t *testing.T) {
				base := runtime.NumGoroutine()
				logs := &logBuffer{}
				closed, closeFn, raw := sd.start(t, logs)
				sent := send(raw, fl.frames(sd.peerOpens))
				if !ended(closed, 5*time.Second) {
					t.Errorf("the session is still open 5 s into a flood of 100,000 frames")
				}
				<-sent
				_ = raw.Close()
				_ = closeFn()
				goroutinesBackTo(t, base, 3)
				if got := logs.String(); !strings.Contains(got, sd.logNames[0]) || !strings.Contains(got, sd.logNames[1]) || !strings.Contains(got, "misbehav") {
					t.Errorf("no log line names the session and what the peer did; logs:\n%s", got)
				}
			})
		}
	}
}

// TestMalformedYamuxFrames: the security checklist's malformed frames. Each
// ends the session, or is refused (dropped) with the session unharmed.
func TestMalformedYamuxFrames(t *testing.T) {
	type row struct {
		name string
		// frames is what the hostile peer sends; own is an ID the peer may
		// open, other one of the session's own.
		frames func(own, other uint32) []byte
		// ends: the session must end; otherwise it must stay up.
		ends bool
	}
	rows := []row{
		{"bad version", func(own, _ uint32) []byte { return yhdr(1, yWindow, ySYN, own, 0) }, true},
		{"version 255", func(_, _ uint32) []byte { return yhdr(255, yPing, ySYN, 0, 1) }, true},
		{"unknown type 4", func(_, _ uint32) []byte { return yhdr(0, 4, 0, 0, 0) }, true},
		{"unknown type 255", func(own, _ uint32) []byte { return yhdr(0, 255, ySYN, own, 0) }, true},
		{"window overrun on a new stream", func(own, _ uint32) []byte {
			return yframe(yData, ySYN, own, 256<<10+1, make([]byte, 256<<10+1)...)
		}, true},
		{"a data frame larger than any window, for no stream", func(own, _ uint32) []byte {
			return yframe(yData, 0, own+1000, 1<<31) // and no body: the session must not wait for 2 GiB
		}, true},
		{"a few frames for a stream that does not exist", func(own, _ uint32) []byte {
			return yframes(10, func(i int) []byte {
				if i%2 == 0 {
					return yframe(yWindow, 0, own+1000, 1<<20)
				}
				return yframe(yData, 0, own+1000, 3, 'a', 'b', 'c')
			})
		}, false},
		{"duplicate SYN", func(own, _ uint32) []byte {
			return append(yframe(yWindow, ySYN, own, 0), yframe(yWindow, ySYN, own, 0)...)
		}, true},
		{"wrong stream ID parity", func(_, other uint32) []byte { return yframe(yWindow, ySYN, other, 0) }, true},
		{"SYN on stream 0", func(_, _ uint32) []byte { return yframe(yWindow, ySYN, 0, 0) }, true},
		{"SYN after GoAway", func(own, _ uint32) []byte {
			return append(yframe(yGoAway, 0, 0, 0), yframe(yWindow, ySYN, own, 0)...)
		}, true},
		{"two GoAways", func(_, _ uint32) []byte {
			return append(yframe(yGoAway, 0, 0, 0), yframe(yGoAway, 0, 0, 0)...)
		}, true},
		{"GoAway with an unknown code", func(_, _ uint32) []byte { return yframe(yGoAway, 0, 0, 77) }, true},
		{"ping on a stream", func(own, _ uint32) []byte { return yframe(yPing, ySYN, own, 1) }, true},
	}
	for _, sd := range sides {
		own, other := uint32(2), uint32(1)
		if sd.peerOpens == 1 {
			own, other = 1, 2
		}
		for _, tc := range rows {
			t.Run(sd.name+"/"+tc.name, func(t *testing.T) {
				base := runtime.NumGoroutine()
				logs := &logBuffer{}
				closed, closeFn, raw := sd.start(t, logs)
				read := drain(raw)
				sent := send(raw, tc.frames(own, other))
				wait := 3 * time.Second
				if !tc.ends {
					wait = time.Second
				}
				switch gone := ended(closed, wait); {
				case tc.ends && !gone:
					t.Errorf("the session is still open %s after the frames", wait)
				case !tc.ends && gone:
					t.Errorf("the session ended; frames for a stream that does not exist are dropped (an honest peer sends them after a reset)")
				}
				_ = raw.Close()
				<-sent
				<-read
				_ = closeFn()
				goroutinesBackTo(t, base, 3)
			})
		}
	}
}

// TestStreamOpenFloods: 100,000 SYNs that never carry an Open. The relay ends
// the session of an agent that opens streams (it never should); the agent
// holds at most MaxPendingOpens of a relay's streams waiting for their Open,
// and refuses the rest (yamux resets what overflows its accept backlog).
// Either way the goroutines stay bounded, and come back.
func TestStreamOpenFloods(t *testing.T) {
	for _, sd := range sides {
		t.Run(sd.name, func(t *testing.T) {
			base := runtime.NumGoroutine()
			logs := &logBuffer{}
			closed, closeFn, raw := sd.start(t, logs)
			read := drain(raw)
			peak := peaks()
			// In writes of 100 opens, a millisecond apart: a flood the
			// session can take in as it comes, not one it drops for want of
			// room in its accept backlog.
			sent := sendPaced(raw, yframes(100_000, func(i int) []byte {
				return yframe(yWindow, ySYN, uint32(2*i+2)-sd.peerOpens, 0)
			}), 100*12, time.Millisecond)
			if sd.peerOpens == 0 && !ended(closed, 5*time.Second) {
				t.Errorf("the relay kept the session of an agent that opened 100,000 streams")
			}
			select {
			case <-sent:
			case <-time.After(30 * time.Second):
				t.Errorf("the flood has not been taken in 30 s")
			}
			g, m := peak()
			t.Logf("at the flood's peak: %d more goroutines, %.1f MiB more in use", g, float64(m)/(1<<20))
			if g > tunnel.DefaultMaxPendingOpens+100 || m > 64<<20 {
				t.Errorf("the flood made the session hold %d more goroutines and %.1f MiB more memory", g, float64(m)/(1<<20))
			}
			_ = raw.Close()
			<-read
			_ = closeFn()
			goroutinesBackTo(t, base, 3)
			want := "misbehaving agent"
			if sd.peerOpens == 1 {
				want = "slow to send their Open"
			}
			if got := logs.String(); !strings.Contains(got, sd.logNames[1]) || !strings.Contains(got, want) {
				t.Errorf("no log line names the session and what the peer did; logs:\n%s", got)
			}
		})
	}
}

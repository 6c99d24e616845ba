package tunnel_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/yamux"

	"github.com/tether-k8s/tether/core/tunnel"
)

// Fuzz targets for what a hostile peer controls: the yamux frames of a live
// session (both ends), the handshake and stream-opening frames, the
// renewal frames and the WebSocket carrier. `make fuzz` runs each briefly.

// pipeSession returns one end of a session over net.Pipe, after real
// handshakes, whose other end is raw: the relay's end (agentSide false, the
// test playing the agent) or the agent's.
func pipeSession(t *testing.T, agentSide bool) (closed <-chan struct{}, closeFn func() error, raw net.Conn) {
	t.Helper()
	relayEnd, agentEnd := net.Pipe()
	_ = relayEnd.SetDeadline(time.Now().Add(5 * time.Second))
	_ = agentEnd.SetDeadline(time.Now().Add(5 * time.Second))
	if agentSide {
		ch := make(chan *tunnel.AgentSession, 1)
		go func() {
			s, err := tunnel.ConnectAgent(context.Background(), agentEnd, tunnel.AgentConfig{Hello: hello})
			if err != nil {
				t.Errorf("agent handshake: %v", err)
			}
			ch <- s
		}()
		var h tunnel.Hello
		if err := tunnel.ReadFrame(relayEnd, &h); err != nil {
			t.Fatal(err)
		}
		if err := tunnel.WriteFrame(relayEnd, &tunnel.Welcome{OK: true, Session: "s"}); err != nil {
			t.Fatal(err)
		}
		s := <-ch
		if s == nil {
			t.FailNow()
		}
		_ = relayEnd.SetDeadline(time.Time{})
		return s.CloseChan(), s.Close, relayEnd
	}
	go func() {
		if err := tunnel.WriteFrame(agentEnd, &hello); err != nil {
			return
		}
		var w tunnel.Welcome
		_ = tunnel.ReadFrame(agentEnd, &w)
	}()
	s, err := tunnel.AcceptAgent(context.Background(), relayEnd, tunnel.RelayConfig{Authorize: acceptAll})
	if err != nil {
		t.Fatal(err)
	}
	_ = agentEnd.SetDeadline(time.Time{})
	return s.CloseChan(), s.Close, agentEnd
}

// waitGoroutines waits at most 5 s for the goroutine count to come back to
// base, give or take slack.
func waitGoroutines(t *testing.T, base, slack int, what string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > base+slack; {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%s: %d goroutines, %d before; stacks:\n%.8000s", what, runtime.NumGoroutine(), base, buf)
		}
		time.Sleep(time.Millisecond)
	}
}

// FuzzYamuxFromHostilePeer writes arbitrary bytes as the yamux frames of a
// live session's peer that never reads, at the relay's end and at the
// agent's: no panic, no hang, the goroutines bounded while the session
// takes the bytes in (a peer cannot make this end start one per frame), and
// all gone once it is closed. Each input runs a session's handshake and
// close (about 1 ms), so make fuzz runs it 20,000 times rather than
// FUZZTIME's default.
//
//tether:fuzztime 20000x
func FuzzYamuxFromHostilePeer(f *testing.F) {
	var pings, mixed bytes.Buffer
	for i := range 300 {
		pings.Write(yframe(yPing, ySYN, 0, uint32(i)))
	}
	for _, b := range [][]byte{
		yframe(yWindow, ySYN, 2, 0), yframe(yData, 0, 2, 3, 'a', 'b', 'c'), yframe(yWindow, 0, 2, 1<<20),
		yframe(yWindow, yFIN, 2, 0), yframe(yWindow, yRST, 2, 0), yframe(yWindow, ySYN, 1, 0),
		yframe(yData, ySYN|yFIN, 3, 1, 'x'), yframe(yPing, yACK, 0, 0), yframe(yGoAway, 0, 0, 0),
	} {
		mixed.Write(b)
	}
	for _, seed := range [][]byte{
		nil, pings.Bytes(), mixed.Bytes(),
		yframe(yPing, ySYN, 0, 7),
		yframe(yWindow, ySYN, 2, 0),
		yframe(yWindow, ySYN, 1, 0),
		yframe(yData, ySYN, 1, 5, 'h', 'e', 'l', 'l', 'o'),
		yframe(yData, 0, 9, 1<<31),
		yframe(yGoAway, 0, 0, 1),
		yhdr(1, yPing, ySYN, 0, 0),
		yhdr(0, 9, 0, 0, 0),
	} {
		f.Add(seed, false)
		f.Add(seed, true)
	}
	f.Fuzz(func(t *testing.T, data []byte, agentSide bool) {
		base := runtime.NumGoroutine()
		_, closeFn, raw := pipeSession(t, agentSide)
		// The peer reads nothing while it writes: what the session answers
		// waits. On a pipe, Write returns once the session has read it all,
		// or ended, or stopped reading for a second. Zeros follow (empty
		// data frames for stream 0, or the rest of a frame data left
		// unfinished), twice a read buffer's worth: once the second lot is
		// read, yamux has handled every frame of data.
		_ = raw.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = raw.Write(data)
		_, _ = raw.Write(make([]byte, 4096+12))
		_, _ = raw.Write(make([]byte, 4096+12))
		limit := 64
		if agentSide {
			limit += min(len(data)/12, tunnel.DefaultMaxPendingOpens) // streams waiting for their Open
		}
		if n := runtime.NumGoroutine() - base; n > limit {
			t.Errorf("%d goroutines after %d bytes of frames, want at most %d", n, len(data), limit)
		}
		read := drain(raw)
		_ = raw.Close()
		_ = closeFn()
		<-read
		waitGoroutines(t, base, 2, "after the session closed")
	})
}

// FuzzHandshake feeds arbitrary bytes where the peer's handshake frames
// belong: as the agent's Hello to the relay, as the relay's Welcome to the
// agent, and as the Open on a stream the relay opens to the agent. Whatever
// is accepted is valid; a stream is handed to the agent's server only with
// a valid Open for its own cluster. Each input runs a handshake, so make
// fuzz runs it 20,000 times.
//
//tether:fuzztime 20000x
func FuzzHandshake(f *testing.F) {
	for _, p := range []tunnel.Payload{
		&hello,
		&tunnel.Welcome{OK: true, Session: "s-1", Relay: "relay-0"},
		&tunnel.Welcome{Reason: tunnel.ReasonRevoked, Message: "no"},
		&tunnel.Open{Cluster: "prod", Request: "r", Client: "203.0.113.7:5000", User: "alice"},
		&tunnel.Open{Cluster: "staging", Request: "r", Client: "c"},
		&tunnel.GoAway{Reason: tunnel.ReasonDraining, GraceMillis: 100},
	} {
		var b bytes.Buffer
		_ = tunnel.WriteFrame(&b, p)
		for which := range uint8(3) {
			f.Add(b.Bytes(), which)
		}
	}
	f.Add(frame(2, 1, `{"cluster":"prod","agent":"a"}`), uint8(0))
	f.Add(frame(1, 3, `{"cluster":"prod","request":"r","client":"c"}trailing`), uint8(2))
	f.Fuzz(func(t *testing.T, data []byte, which uint8) {
		base := runtime.NumGoroutine()
		relayEnd, agentEnd := net.Pipe()
		defer relayEnd.Close()
		defer agentEnd.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		switch which % 3 {
		case 0: // data as the agent's first bytes
			read := drain(agentEnd)
			go func() { _, _ = agentEnd.Write(data); _ = agentEnd.Close() }()
			rs, err := tunnel.AcceptAgent(ctx, relayEnd, tunnel.RelayConfig{Authorize: acceptAll, HandshakeTimeout: time.Second})
			if err == nil {
				if verr := rs.Hello.Validate(); verr != nil {
					t.Errorf("accepted an invalid Hello %+v: %v", rs.Hello, verr)
				}
				_ = rs.Close()
			}
			<-read
		case 1: // data as the relay's answer
			read := drain(relayEnd)
			go func() { _, _ = relayEnd.Write(data); _ = relayEnd.Close() }()
			as, err := tunnel.ConnectAgent(ctx, agentEnd, tunnel.AgentConfig{Hello: hello, HandshakeTimeout: time.Second})
			var ref *tunnel.RefusedError
			switch {
			case err == nil:
				if !as.Welcome.OK || as.Welcome.Validate() != nil {
					t.Errorf("accepted a Welcome that is not a valid acceptance: %+v", as.Welcome)
				}
				_ = as.Close()
			case errors.As(err, &ref):
				if ref.Reason == "" {
					t.Errorf("a refusal without a reason: %v", err)
				}
			}
			<-read
		case 2: // data as the Open of a stream
			as, mux := rawRelayMux(t, relayEnd, agentEnd)
			accepted := make(chan net.Conn, 1)
			go func() {
				c, err := as.Accept()
				if err == nil {
					accepted <- c
				}
				close(accepted)
			}()
			st, err := mux.OpenStream()
			if err != nil {
				t.Fatal(err)
			}
			_ = st.SetDeadline(time.Now().Add(5 * time.Second))
			go func() { _, _ = st.Write(data); _ = st.Close() }()
			var reply tunnel.OpenReply
			rerr := tunnel.ReadFrame(st, &reply)
			if rerr == nil && reply.OK {
				select {
				case c := <-accepted:
					o := c.(*tunnel.Stream).Open
					if o.Validate() != nil || o.Cluster != hello.Cluster {
						t.Errorf("the agent accepted a stream whose Open is %+v", o)
					}
					_ = c.Close()
				case <-time.After(5 * time.Second):
					t.Fatal("the agent answered OK but handed no stream to its server")
				}
			}
			_ = as.Close()
			_ = mux.Close()
			if c, ok := <-accepted; ok {
				if rerr != nil || !reply.OK {
					t.Errorf("the agent handed a stream to its server without answering OK (reply %+v, %v)", reply, rerr)
				}
				_ = c.Close()
			}
		}
		_ = relayEnd.Close()
		_ = agentEnd.Close()
		waitGoroutines(t, base, 2, "after the handshake")
	})
}

// rawRelayMux completes the agent's handshake on agentEnd with a relay that
// is the test, and returns the agent's session and the relay's yamux
// client on relayEnd.
func rawRelayMux(t *testing.T, relayEnd, agentEnd net.Conn) (*tunnel.AgentSession, *yamux.Session) {
	t.Helper()
	ch := make(chan *tunnel.AgentSession, 1)
	go func() {
		s, err := tunnel.ConnectAgent(context.Background(), agentEnd, tunnel.AgentConfig{Hello: hello, HandshakeTimeout: time.Second})
		if err != nil {
			t.Errorf("agent handshake: %v", err)
		}
		ch <- s
	}()
	var h tunnel.Hello
	if err := tunnel.ReadFrame(relayEnd, &h); err != nil {
		t.Fatal(err)
	}
	if err := tunnel.WriteFrame(relayEnd, &tunnel.Welcome{OK: true}); err != nil {
		t.Fatal(err)
	}
	as := <-ch
	if as == nil {
		t.FailNow()
	}
	mux, err := yamux.Client(relayEnd, tunnel.DefaultYamuxConfig())
	if err != nil {
		t.Fatal(err)
	}
	return as, mux
}

// FuzzRenewFrames feeds arbitrary bytes to the renewal frames' readers, as
// FuzzReadFrame does to the others: no panic, never reading past the
// declared frame, whatever is accepted is valid and survives a round trip.
func FuzzRenewFrames(f *testing.F) {
	for _, p := range []tunnel.Payload{
		&tunnel.Renew{CSR: []byte("0\x82\x01\x0a")},
		&tunnel.Renewed{OK: true, Certificate: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"},
		&tunnel.Renewed{Reason: tunnel.ReasonBadRequest, Message: "csr: bad signature"},
	} {
		var b bytes.Buffer
		_ = tunnel.WriteFrame(&b, p)
		f.Add(b.Bytes())
	}
	f.Add(frame(1, 6, `{"csr":"`+strings.Repeat("A", 5500)+`"}`))
	f.Add(frame(1, 7, `{"ok":true,"certificate":"x"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, p := range []tunnel.Payload{&tunnel.Renew{}, &tunnel.Renewed{}} {
			r := bytes.NewReader(data)
			if err := tunnel.ReadFrame(r, p); err != nil {
				continue
			}
			if consumed := len(data) - r.Len(); consumed != 6+int(binary.BigEndian.Uint16(data[4:6])) {
				t.Fatalf("consumed %d bytes of a frame declaring %d", consumed, binary.BigEndian.Uint16(data[4:6]))
			}
			if err := p.Validate(); err != nil {
				t.Fatalf("accepted an invalid %T: %v", p, err)
			}
			var buf bytes.Buffer
			if err := tunnel.WriteFrame(&buf, p); err != nil {
				t.Fatalf("cannot re-encode accepted %T %+v: %v", p, p, err)
			}
			again := reflect.New(reflect.TypeOf(p).Elem()).Interface().(tunnel.Payload)
			if err := tunnel.ReadFrame(&buf, again); err != nil || !reflect.DeepEqual(again, p) {
				t.Fatalf("round trip of %+v gave %+v, %v", p, again, err)
			}
		}
	})
}

// hijackWriter is the http.ResponseWriter of a request that arrived on
// conn, as net/http's server hands it over for an upgrade.
type hijackWriter struct {
	conn net.Conn
	h    http.Header
}

func (w *hijackWriter) Header() http.Header         { return w.h }
func (w *hijackWriter) Write(p []byte) (int, error) { return w.conn.Write(p) }
func (w *hijackWriter) WriteHeader(int)             {}
func (w *hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return w.conn, bufio.NewReadWriter(bufio.NewReader(w.conn), bufio.NewWriter(w.conn)), nil
}

// FuzzWebSocketConn feeds arbitrary bytes as the peer's WebSocket frames
// after a real upgrade, to the dialer's end (unmasked server frames) or to
// AcceptWebSocket's (client frames): no panic, no hang, never more bytes
// out than came in, and an error, once Read returns one, on every later
// Read. Each input runs a WebSocket upgrade, so make fuzz runs it 20,000
// times.
//
//tether:fuzztime 20000x
func FuzzWebSocketConn(f *testing.F) {
	wsBinary := func(masked bool, payload string) []byte {
		b := []byte{0x82, byte(len(payload))}
		if masked {
			b[1] |= 0x80
			b = append(b, 0, 0, 0, 0) // a zero mask leaves the payload as it is
		}
		return append(b, payload...)
	}
	for _, masked := range []bool{false, true} {
		f.Add(wsBinary(masked, "hello"), masked)
		f.Add(append(wsBinary(masked, "a"), wsBinary(masked, "b")...), masked)
		f.Add([]byte{0x81, 0x01, 'x'}, masked)             // text
		f.Add([]byte{0x89, 0x00}, masked)                  // ping
		f.Add([]byte{0x88, 0x02, 0x03, 0xe8}, masked)      // close 1000
		f.Add([]byte{0x02, 0x01, 'a', 0x80, 0x00}, masked) // fragmented
		f.Add([]byte{0x82, 0x7f, 0, 0, 0, 0, 0, 0x10, 0, 0}, masked)
	}
	f.Fuzz(func(t *testing.T, data []byte, serverSide bool) {
		base := runtime.NumGoroutine()
		mine, peer := net.Pipe()
		defer mine.Close()
		defer peer.Close()
		_ = mine.SetDeadline(time.Now().Add(5 * time.Second))
		_ = peer.SetDeadline(time.Now().Add(5 * time.Second))
		var conn net.Conn
		if serverSide {
			key := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef"))
			go func() {
				req := "GET /v1/agents/connect HTTP/1.1\r\nHost: relay\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
					"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Protocol: " + tunnel.WebSocketSubprotocol + "\r\n\r\n"
				_, _ = peer.Write([]byte(req))
			}()
			r, err := http.ReadRequest(bufio.NewReader(mine))
			if err != nil {
				t.Fatal(err)
			}
			accepted := make(chan net.Conn, 1)
			go func() {
				c, err := tunnel.AcceptWebSocket(&hijackWriter{conn: mine, h: http.Header{}}, r)
				if err != nil {
					t.Errorf("accept: %v", err)
				}
				accepted <- c
			}()
			resp, err := http.ReadResponse(bufio.NewReader(peer), nil)
			if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("upgrade: %v %v", resp, err)
			}
			if conn = <-accepted; conn == nil {
				t.FailNow()
			}
		} else {
			go func() {
				r, err := http.ReadRequest(bufio.NewReader(peer))
				if err != nil {
					return
				}
				sum := sha1.Sum([]byte(r.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
				_, _ = fmt.Fprintf(peer, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\nSec-WebSocket-Protocol: %s\r\n\r\n",
					base64.StdEncoding.EncodeToString(sum[:]), tunnel.WebSocketSubprotocol)
			}()
			d := websocket.Dialer{
				NetDialContext:  func(context.Context, string, string) (net.Conn, error) { return mine, nil },
				Subprotocols:    []string{tunnel.WebSocketSubprotocol},
				ReadBufferSize:  1024,
				WriteBufferSize: 1024,
			}
			ws, _, err := d.Dial("ws://relay/v1/agents/connect", nil)
			if err != nil {
				t.Fatal(err)
			}
			conn = tunnel.NewWebSocketConn(ws)
		}
		peerRead := drain(peer) // the conn's pongs and close frames
		go func() { _, _ = peer.Write(data); _ = peer.Close() }()
		total := 0
		buf := make([]byte, 512)
		var rerr error
		for rerr == nil {
			var n int
			n, rerr = conn.Read(buf)
			total += n
		}
		if total > len(data) {
			t.Errorf("read %d bytes out of %d bytes of frames", total, len(data))
		}
		if _, err := conn.Read(buf); err == nil {
			t.Errorf("a Read after %v succeeded", rerr)
		}
		_ = conn.Close()
		<-peerRead
		waitGoroutines(t, base, 2, "after the conn closed")
	})
}

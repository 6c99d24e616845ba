package tunnel_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tether-k8s/tether/core/tunnel"
)

// wsTimeout bounds every wait in these tests.
const wsTimeout = 10 * time.Second

type wsAccept struct {
	conn net.Conn
	err  error
}

// wsServer is an httptest server whose every request goes to
// AcceptWebSocket; what that returns arrives on accepted.
type wsServer struct {
	*httptest.Server
	accepted chan wsAccept
}

func newWSServer(t *testing.T, useTLS bool) *wsServer {
	t.Helper()
	s := &wsServer{accepted: make(chan wsAccept, 16)}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := tunnel.AcceptWebSocket(w, r)
		select {
		case s.accepted <- wsAccept{c, err}:
		default:
			if c != nil {
				_ = c.Close()
			}
		}
	})
	if useTLS {
		s.Server = httptest.NewTLSServer(h)
	} else {
		s.Server = httptest.NewServer(h)
	}
	t.Cleanup(func() {
		s.Close()
		for {
			select {
			case a := <-s.accepted:
				if a.conn != nil {
					_ = a.conn.Close()
				}
			default:
				return
			}
		}
	})
	return s
}

// wsURL is the server's agent endpoint.
func (s *wsServer) wsURL() string {
	scheme := "ws"
	if s.TLS != nil {
		scheme = "wss"
	}
	return scheme + "://" + s.Listener.Addr().String() + "/agent"
}

// next is what AcceptWebSocket returned for the next request.
func (s *wsServer) next(t *testing.T) wsAccept {
	t.Helper()
	a := wsWait(t, s.accepted, "AcceptWebSocket")
	if a.conn != nil {
		t.Cleanup(func() { _ = a.conn.Close() })
	}
	return a
}

func wsWait[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(wsTimeout):
		t.Fatalf("%s: no result within %s", what, wsTimeout)
		panic("unreachable")
	}
}

func wsDial(t *testing.T, d *tunnel.WebSocketDialer) (net.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wsTimeout)
	defer cancel()
	c, err := d.DialContext(ctx)
	if c != nil {
		t.Cleanup(func() { _ = c.Close() })
	}
	return c, err
}

// wsPair returns both ends of a WebSocketConn over loopback TCP.
func wsPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	s := newWSServer(t, false)
	c, err := wsDial(t, &tunnel.WebSocketDialer{URL: s.wsURL()})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	a := s.next(t)
	if a.err != nil {
		t.Fatalf("accept: %v", a.err)
	}
	return c, a.conn
}

// wsRawClient dials s with gorilla directly, offering protocols.
// wsRawPair is a raw gorilla client connected to a server-side
// WebSocketConn.
func wsRawPair(t *testing.T) (*websocket.Conn, wsAccept) {
	t.Helper()
	s := newWSServer(t, false)
	ws, _, err := wsRawClient(t, s, tunnel.WebSocketSubprotocol)
	if err != nil {
		t.Fatal(err)
	}
	a := s.next(t)
	if a.err != nil {
		t.Fatal(a.err)
	}
	return ws, a
}

func wsRawClient(t *testing.T, s *wsServer, protocols ...string) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	d := websocket.Dialer{Subprotocols: protocols, HandshakeTimeout: wsTimeout}
	ws, resp, err := d.Dial(s.wsURL(), nil)
	if ws != nil {
		t.Cleanup(func() { _ = ws.Close() })
	}
	return ws, resp, err
}

func wsRandom(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// wsWriteAsync writes each of chunks to c in order and reports the first
// error.
func wsWriteAsync(c net.Conn, chunks ...[]byte) <-chan error {
	done := make(chan error, 1)
	go func() {
		for _, b := range chunks {
			n, err := c.Write(b)
			if err == nil && n != len(b) {
				err = fmt.Errorf("wrote %d of %d bytes", n, len(b))
			}
			if err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	return done
}

// wsReadAsync reads exactly n bytes from c, buf bytes at a time.
func wsReadAsync(c net.Conn, n, buf int) <-chan wsReadResult {
	done := make(chan wsReadResult, 1)
	go func() {
		var got bytes.Buffer
		_, err := io.CopyBuffer(&got, io.LimitReader(c, int64(n)), make([]byte, buf))
		if err == nil && got.Len() != n {
			err = fmt.Errorf("read %d of %d bytes", got.Len(), n)
		}
		done <- wsReadResult{got.Bytes(), err}
	}()
	return done
}

type wsReadResult struct {
	data []byte
	err  error
}

func TestWebSocketRoundTrip(t *testing.T) {
	client, server := wsPair(t)

	if client.LocalAddr().String() != server.RemoteAddr().String() ||
		client.RemoteAddr().String() != server.LocalAddr().String() {
		t.Errorf("addresses: client %v->%v, server %v->%v",
			client.LocalAddr(), client.RemoteAddr(), server.LocalAddr(), server.RemoteAddr())
	}

	t.Run("sizes", func(t *testing.T) {
		for _, size := range []int{1, 2, 100, 4096, 16<<10 + 5, 64<<10 - 1, 64 << 10, 64<<10 + 1, 300 << 10, 1<<20 + 3} {
			for _, dir := range []struct {
				name     string
				from, to net.Conn
			}{{"client to server", client, server}, {"server to client", server, client}} {
				want := wsRandom(t, size)
				read := wsReadAsync(dir.to, size, 32<<10)
				if err := wsWait(t, wsWriteAsync(dir.from, want), "write"); err != nil {
					t.Fatalf("%s, %d bytes: write: %v", dir.name, size, err)
				}
				got := wsWait(t, read, "read")
				if got.err != nil {
					t.Fatalf("%s, %d bytes: read: %v", dir.name, size, got.err)
				}
				if !bytes.Equal(got.data, want) {
					t.Fatalf("%s, %d bytes: data differs", dir.name, size)
				}
			}
		}
	})

	t.Run("small reads span messages", func(t *testing.T) {
		// Three writes, three messages; 2-byte reads see one stream.
		if err := wsWait(t, wsWriteAsync(client, []byte("abc"), []byte("defg"), []byte("hij")), "write"); err != nil {
			t.Fatal(err)
		}
		var got []byte
		buf := make([]byte, 2)
		for len(got) < 10 {
			n, err := server.Read(buf)
			if err != nil {
				t.Fatalf("read after %q: %v", got, err)
			}
			if n == 0 || n > 2 {
				t.Fatalf("read %d bytes into a 2-byte buffer", n)
			}
			got = append(got, buf[:n]...)
		}
		if string(got) != "abcdefghij" {
			t.Fatalf("read %q, want %q", got, "abcdefghij")
		}

		// One ReadFull across the three messages.
		if err := wsWait(t, wsWriteAsync(server, []byte("12"), []byte("345"), []byte("6789")), "write"); err != nil {
			t.Fatal(err)
		}
		full := make([]byte, 9)
		if _, err := io.ReadFull(client, full); err != nil || string(full) != "123456789" {
			t.Fatalf("ReadFull: %q, %v", full, err)
		}
	})

	t.Run("5 MiB both ways at once", func(t *testing.T) {
		const size = 5 << 20
		up, down := wsRandom(t, size), wsRandom(t, size)
		// Client: one 5 MiB write. Server: random write sizes.
		var chunks [][]byte
		rng := mrand.New(mrand.NewPCG(1, 2))
		for rest := down; len(rest) > 0; {
			n := min(len(rest), 1+rng.IntN(100_000))
			chunks = append(chunks, rest[:n])
			rest = rest[n:]
		}
		readUp := wsReadAsync(server, size, 1500)
		readDown := wsReadAsync(client, size, 1000)
		writeUp := wsWriteAsync(client, up)
		writeDown := wsWriteAsync(server, chunks...)
		for name, ch := range map[string]<-chan error{"client write": writeUp, "server write": writeDown} {
			if err := wsWait(t, ch, name); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
		for _, c := range []struct {
			name string
			ch   <-chan wsReadResult
			want []byte
		}{{"server read", readUp, up}, {"client read", readDown, down}} {
			got := wsWait(t, c.ch, c.name)
			if got.err != nil {
				t.Fatalf("%s: %v", c.name, got.err)
			}
			if sha256.Sum256(got.data) != sha256.Sum256(c.want) {
				t.Fatalf("%s: sha256 differs", c.name)
			}
		}
	})
}

// wsCert makes a self-signed ECDSA certificate for name.
func wsCert(t *testing.T, name string, usage x509.ExtKeyUsage) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: name},
		DNSNames:              []string{name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{usage},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// TestWebSocketInnerTLS runs mutual TLS 1.3 inside the WebSocket, as the
// session does.
func TestWebSocketInnerTLS(t *testing.T) {
	client, server := wsPair(t)
	relayCert, relayPool := wsCert(t, "relay.test", x509.ExtKeyUsageServerAuth)
	agentCert, agentPool := wsCert(t, "agent.test", x509.ExtKeyUsageClientAuth)

	srv := tls.Server(server, &tls.Config{
		Certificates: []tls.Certificate{relayCert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    agentPool,
		MinVersion:   tls.VersionTLS13,
	})
	cli := tls.Client(client, &tls.Config{
		Certificates: []tls.Certificate{agentCert},
		RootCAs:      relayPool,
		ServerName:   "relay.test",
		MinVersion:   tls.VersionTLS13,
	})
	ctx, cancel := context.WithTimeout(context.Background(), wsTimeout)
	defer cancel()
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.HandshakeContext(ctx) }()
	if err := cli.HandshakeContext(ctx); err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	if err := wsWait(t, srvDone, "server handshake"); err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	if v := cli.ConnectionState().Version; v != tls.VersionTLS13 {
		t.Errorf("client negotiated %s, want TLS 1.3", tls.VersionName(v))
	}
	st := srv.ConnectionState()
	if st.Version != tls.VersionTLS13 || len(st.PeerCertificates) == 0 || st.PeerCertificates[0].Subject.CommonName != "agent.test" {
		t.Fatalf("server state: version %s, peer certificates %d", tls.VersionName(st.Version), len(st.PeerCertificates))
	}

	// The relay echoes until close_notify, then closes.
	echoed := make(chan error, 1)
	go func() {
		_, err := io.Copy(srv, srv)
		_ = srv.Close()
		echoed <- err
	}()
	want := wsRandom(t, 1<<20)
	written := wsWriteAsync(cli, want)
	read := make(chan wsReadResult, 1)
	go func() {
		b, err := io.ReadAll(cli)
		read <- wsReadResult{b, err}
	}()
	if err := wsWait(t, written, "write"); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := cli.CloseWrite(); err != nil {
		t.Fatalf("close_notify: %v", err)
	}
	if err := wsWait(t, echoed, "echo"); err != nil {
		t.Fatalf("echo: %v", err)
	}
	got := wsWait(t, read, "read")
	if got.err != nil {
		t.Fatalf("read: %v", got.err)
	}
	if sha256.Sum256(got.data) != sha256.Sum256(want) {
		t.Fatalf("echo differs: %d bytes back of %d", len(got.data), len(want))
	}
}

// wsConnectProxy is a minimal HTTP proxy that does CONNECT only.
type wsConnectProxy struct {
	mu       sync.Mutex
	connects []string
	conns    []net.Conn
}

func (p *wsConnectProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodConnect {
		http.Error(w, "CONNECT only", http.StatusMethodNotAllowed)
		return
	}
	p.mu.Lock()
	p.connects = append(p.connects, r.Host)
	p.mu.Unlock()
	up, err := net.DialTimeout("tcp", r.Host, wsTimeout)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	down, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		_ = up.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, up, down)
	p.mu.Unlock()
	if _, err := io.WriteString(down, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		_ = up.Close()
		_ = down.Close()
		return
	}
	go func() { _, _ = io.Copy(up, brw.Reader); _ = up.Close() }()
	go func() { _, _ = io.Copy(down, up); _ = down.Close() }()
}

func (p *wsConnectProxy) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.Close()
	}
}

func TestWebSocketThroughConnectProxy(t *testing.T) {
	s := newWSServer(t, true)
	proxy := &wsConnectProxy{}
	ps := httptest.NewServer(proxy)
	t.Cleanup(func() { ps.Close(); proxy.close() })
	proxyURL, err := url.Parse(ps.URL)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(s.Certificate())

	client, err := wsDial(t, &tunnel.WebSocketDialer{
		URL:       s.wsURL(),
		TLSConfig: &tls.Config{RootCAs: roots},
		Proxy:     http.ProxyURL(proxyURL),
		Header:    http.Header{"User-Agent": {"tether-test"}},
	})
	if err != nil {
		t.Fatalf("dial through proxy: %v", err)
	}
	a := s.next(t)
	if a.err != nil {
		t.Fatalf("accept: %v", a.err)
	}
	proxy.mu.Lock()
	connects := append([]string(nil), proxy.connects...)
	proxy.mu.Unlock()
	if want := s.Listener.Addr().String(); len(connects) != 1 || connects[0] != want {
		t.Fatalf("proxy saw CONNECT %q, want [%s]", connects, want)
	}
	if client.RemoteAddr().String() != ps.Listener.Addr().String() {
		t.Errorf("client's remote address %v, want the proxy's %v", client.RemoteAddr(), ps.Listener.Addr())
	}

	read := wsReadAsync(a.conn, 5, 5)
	if err := wsWait(t, wsWriteAsync(client, []byte("hello")), "write"); err != nil {
		t.Fatal(err)
	}
	if got := wsWait(t, read, "read"); got.err != nil || string(got.data) != "hello" {
		t.Fatalf("server read %q, %v", got.data, got.err)
	}
	read = wsReadAsync(client, 6, 64)
	if err := wsWait(t, wsWriteAsync(a.conn, []byte("hello!")), "write"); err != nil {
		t.Fatal(err)
	}
	if got := wsWait(t, read, "read"); got.err != nil || string(got.data) != "hello!" {
		t.Fatalf("client read %q, %v", got.data, got.err)
	}
}

func TestWebSocketAcceptRefusals(t *testing.T) {
	t.Run("no subprotocol", func(t *testing.T) {
		for _, offered := range [][]string{nil, {"other.v1"}} {
			s := newWSServer(t, false)
			_, resp, err := wsRawClient(t, s, offered...)
			if !errors.Is(err, websocket.ErrBadHandshake) || resp == nil {
				t.Fatalf("offering %q: dial error %v, want a refusal", offered, err)
			}
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), tunnel.WebSocketSubprotocol) {
				t.Fatalf("offering %q: %s %q, want 400 naming %s", offered, resp.Status, body, tunnel.WebSocketSubprotocol)
			}
			if a := s.next(t); a.err == nil || !strings.Contains(a.err.Error(), "subprotocol") {
				t.Fatalf("offering %q: AcceptWebSocket returned %v, want a subprotocol error", offered, a.err)
			}
		}
	})

	t.Run("origin", func(t *testing.T) {
		s := newWSServer(t, false)
		_, err := wsDial(t, &tunnel.WebSocketDialer{
			URL:    s.wsURL(),
			Header: http.Header{"Origin": {"https://evil.example"}},
		})
		var refused *tunnel.WebSocketRefusedError
		if !errors.As(err, &refused) || refused.StatusCode != http.StatusForbidden || !strings.Contains(refused.Message, "Origin") {
			t.Fatalf("dial error %v, want a 403 refusal mentioning Origin", err)
		}
		if a := s.next(t); a.err == nil || !strings.Contains(a.err.Error(), "Origin") {
			t.Fatalf("AcceptWebSocket returned %v, want an Origin error", a.err)
		}
	})

	t.Run("plain request", func(t *testing.T) {
		s := newWSServer(t, false)
		resp, err := s.Client().Get(s.URL + "/agent")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusUpgradeRequired || !strings.Contains(string(body), "WebSocket") {
			t.Fatalf("plain GET: %s %q, want 426", resp.Status, body)
		}
		if a := s.next(t); a.err == nil {
			t.Fatal("AcceptWebSocket accepted a plain GET")
		}
	})
}

func TestWebSocketDialReportsRefusal(t *testing.T) {
	for _, tc := range []struct {
		name        string
		status      int
		contentType string
		body        string
		wantMessage string
	}{
		{"kubernetes status", http.StatusNotFound, "application/json",
			`{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"no agent endpoint here","reason":"NotFound","code":404}`,
			"no agent endpoint here"},
		{"short text", http.StatusServiceUnavailable, "text/plain; charset=utf-8", "relay is draining\n", "relay is draining"},
		{"html", http.StatusBadGateway, "text/html", "<html><body>bad gateway</body></html>", ""},
		{"long text", http.StatusForbidden, "text/plain", strings.Repeat("x", 100<<10), strings.Repeat("x", 512) + "…"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tc.contentType)
				w.WriteHeader(tc.status)
				_, _ = io.WriteString(w, tc.body)
			}))
			t.Cleanup(srv.Close)
			_, err := wsDial(t, &tunnel.WebSocketDialer{URL: "ws" + strings.TrimPrefix(srv.URL, "http") + "/agent"})
			var refused *tunnel.WebSocketRefusedError
			if !errors.As(err, &refused) {
				t.Fatalf("dial error %v, want a *WebSocketRefusedError", err)
			}
			if refused.StatusCode != tc.status || refused.Message != tc.wantMessage {
				t.Fatalf("refusal %d %q, want %d %q", refused.StatusCode, refused.Message, tc.status, tc.wantMessage)
			}
			if msg := err.Error(); !strings.Contains(msg, fmt.Sprint(tc.status)) || !strings.Contains(msg, tc.wantMessage) {
				t.Fatalf("error %q lacks the status or the message", msg)
			}
		})
	}
}

func TestWebSocketDialRefusesServerWithoutSubprotocol(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err == nil {
			_ = ws.Close()
		}
	}))
	t.Cleanup(srv.Close)
	c, err := wsDial(t, &tunnel.WebSocketDialer{URL: "ws" + strings.TrimPrefix(srv.URL, "http")})
	if err == nil || c != nil || !strings.Contains(err.Error(), "subprotocol") {
		t.Fatalf("dial: %v, %v; want a subprotocol error", c, err)
	}
}

func TestWebSocketDialErrors(t *testing.T) {
	t.Run("closed port", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		_ = ln.Close()
		_, err = wsDial(t, &tunnel.WebSocketDialer{URL: "ws://" + addr + "/agent"})
		var opErr *net.OpError
		if !errors.As(err, &opErr) || !strings.Contains(err.Error(), addr) {
			t.Fatalf("dial error %v, want a *net.OpError naming %s", err, addr)
		}
	})

	t.Run("bad URL", func(t *testing.T) {
		for _, u := range []string{"http://127.0.0.1:1/agent", "wss:///agent", "wss://user:pw@127.0.0.1:1/", "::"} {
			if _, err := wsDial(t, &tunnel.WebSocketDialer{URL: u}); err == nil {
				t.Errorf("dial %q: no error", u)
			}
		}
	})

	// A server that accepts TCP and never answers.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	var held sync.Map
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held.Store(c, true)
		}
	}()
	t.Cleanup(func() { held.Range(func(c, _ any) bool { _ = c.(net.Conn).Close(); return true }) })
	silent := "ws://" + ln.Addr().String() + "/agent"

	t.Run("context cancelled during upgrade", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(100*time.Millisecond, cancel)
		d := &tunnel.WebSocketDialer{URL: silent, HandshakeTimeout: time.Minute}
		start := time.Now()
		done := make(chan error, 1)
		go func() {
			c, err := d.DialContext(ctx)
			if c != nil {
				_ = c.Close()
			}
			done <- err
		}()
		if err := wsWait(t, done, "dial"); !errors.Is(err, context.Canceled) || time.Since(start) > wsTimeout/2 {
			t.Fatalf("dial: %v after %s, want context.Canceled promptly", err, time.Since(start))
		}
	})

	t.Run("handshake timeout", func(t *testing.T) {
		d := &tunnel.WebSocketDialer{URL: silent, HandshakeTimeout: 200 * time.Millisecond}
		start := time.Now()
		_, err := wsDial(t, d)
		if !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("dial: %v, want a timeout", err)
		}
		if el := time.Since(start); el < 150*time.Millisecond || el > wsTimeout/2 {
			t.Fatalf("dial gave up after %s, want about 200ms", el)
		}
	})
}

func wsIsTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) && errors.As(err, &ne) && ne.Timeout()
}

func TestWebSocketReadDeadline(t *testing.T) {
	client, server := wsPair(t)
	buf := make([]byte, 16)

	// Already passed: fails at once, and the conn stays usable.
	if err := server.SetReadDeadline(time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := server.Read(buf); !wsIsTimeout(err) || time.Since(start) > time.Second {
		t.Fatalf("read past deadline: %v after %s, want os.ErrDeadlineExceeded at once", err, time.Since(start))
	}
	if err := server.SetReadDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := wsWait(t, wsWriteAsync(client, []byte("x")), "write"); err != nil {
		t.Fatal(err)
	}
	if n, err := server.Read(buf); err != nil || string(buf[:n]) != "x" {
		t.Fatalf("read after clearing the deadline: %q, %v", buf[:n], err)
	}

	// Passing while the Read waits.
	if err := server.SetReadDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	start = time.Now()
	go func() { _, err := server.Read(buf); done <- err }()
	err := wsWait(t, done, "read")
	if el := time.Since(start); !wsIsTimeout(err) || el < 80*time.Millisecond {
		t.Fatalf("read: %v after %s, want os.ErrDeadlineExceeded after about 100ms", err, el)
	}
	// That leaves the read side broken (gorilla): errors, no hang, no panic.
	_ = server.SetReadDeadline(time.Time{})
	for range 3 {
		if _, err := server.Read(buf); err == nil {
			t.Fatal("read after a timed-out read succeeded")
		}
	}
}

func TestWebSocketWriteDeadline(t *testing.T) {
	big := make([]byte, 1<<20)

	t.Run("passed", func(t *testing.T) {
		client, server := wsPair(t)
		if err := client.SetWriteDeadline(time.Now().Add(-time.Second)); err != nil {
			t.Fatal(err)
		}
		if n, err := client.Write([]byte("late")); n != 0 || !wsIsTimeout(err) {
			t.Fatalf("write past deadline: %d, %v; want 0, os.ErrDeadlineExceeded", n, err)
		}
		if err := client.SetWriteDeadline(time.Time{}); err != nil {
			t.Fatal(err)
		}
		read := wsReadAsync(server, 2, 16)
		if err := wsWait(t, wsWriteAsync(client, []byte("ok")), "write"); err != nil {
			t.Fatalf("write after clearing the deadline: %v", err)
		}
		if got := wsWait(t, read, "read"); got.err != nil || string(got.data) != "ok" {
			t.Fatalf("read %q, %v", got.data, got.err)
		}
	})

	// The peer does not read: writes fill the buffers, then block.
	writeUntilError := func(c net.Conn) <-chan error {
		done := make(chan error, 1)
		go func() {
			for range 512 {
				if _, err := c.Write(big); err != nil {
					done <- err
					return
				}
			}
			done <- errors.New("512 MiB written to a peer that does not read")
		}()
		return done
	}

	t.Run("passing while blocked", func(t *testing.T) {
		_, server := wsPair(t)
		if err := server.SetWriteDeadline(time.Now().Add(200 * time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		if err := wsWait(t, writeUntilError(server), "write"); !wsIsTimeout(err) {
			t.Fatalf("write: %v, want os.ErrDeadlineExceeded", err)
		}
	})

	t.Run("set while blocked", func(t *testing.T) {
		_, server := wsPair(t)
		done := writeUntilError(server)
		time.Sleep(200 * time.Millisecond) // let the writes block
		if err := server.SetWriteDeadline(time.Now()); err != nil {
			t.Fatal(err)
		}
		if err := wsWait(t, done, "write"); !wsIsTimeout(err) {
			t.Fatalf("write: %v, want os.ErrDeadlineExceeded", err)
		}
	})
}

func TestWebSocketTextMessageIsProtocolError(t *testing.T) {
	ws, a := wsRawPair(t)
	if err := ws.WriteMessage(websocket.TextMessage, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := a.conn.Read(make([]byte, 16)); done <- err }()
	if err := wsWait(t, done, "read"); err == nil || err == io.EOF || !strings.Contains(err.Error(), "text") {
		t.Fatalf("read of a text message: %v, want a protocol error", err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(wsTimeout))
	if _, _, err := ws.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseUnsupportedData) {
		t.Fatalf("peer got %v, want close 1003", err)
	}
}

func TestWebSocketReadLimit(t *testing.T) {
	ws, a := wsRawPair(t)
	sent := make(chan error, 1)
	go func() {
		if err := ws.WriteMessage(websocket.BinaryMessage, make([]byte, 1<<20)); err != nil {
			sent <- err
			return
		}
		sent <- ws.WriteMessage(websocket.BinaryMessage, make([]byte, 1<<20+1))
	}()
	got := wsWait(t, wsReadAsync(a.conn, 1<<20, 64<<10), "read")
	if got.err != nil {
		t.Fatalf("1 MiB message: %v", got.err)
	}
	// gorilla counts a message's frames as they come, so the Read fails
	// when the message grows past the limit, not before its first bytes.
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := io.Copy(io.Discard, a.conn)
		done <- result{int(n), err}
	}()
	if r := wsWait(t, done, "read"); !errors.Is(r.err, websocket.ErrReadLimit) || r.n > 1<<20 {
		t.Fatalf("read of a 1 MiB + 1 message: %d bytes, %v; want at most 1 MiB, then websocket.ErrReadLimit", r.n, r.err)
	}
	_ = wsWait(t, sent, "write")
}

func TestWebSocketAnswersPings(t *testing.T) {
	ws, a := wsRawPair(t)
	pongs := make(chan string, 1)
	ws.SetPongHandler(func(data string) error { pongs <- data; return nil })

	// The server answers the ping while reading, then replies to the data.
	served := make(chan error, 1)
	go func() {
		buf := make([]byte, 16)
		n, err := a.conn.Read(buf)
		if err == nil && string(buf[:n]) != "after ping" {
			err = fmt.Errorf("read %q", buf[:n])
		}
		if err == nil {
			_, err = a.conn.Write([]byte("ok"))
		}
		served <- err
	}()
	if err := ws.WriteControl(websocket.PingMessage, []byte("p1"), time.Now().Add(wsTimeout)); err != nil {
		t.Fatal(err)
	}
	if err := ws.WriteMessage(websocket.BinaryMessage, []byte("after ping")); err != nil {
		t.Fatal(err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(wsTimeout))
	typ, msg, err := ws.ReadMessage()
	if err != nil || typ != websocket.BinaryMessage || string(msg) != "ok" {
		t.Fatalf("client read %d %q, %v", typ, msg, err)
	}
	if err := wsWait(t, served, "server"); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-pongs:
		if p != "p1" {
			t.Fatalf("pong %q, want p1", p)
		}
	default:
		t.Fatal("no pong before the server's reply")
	}
}

func TestWebSocketClose(t *testing.T) {
	readAsync := func(c net.Conn) <-chan error {
		done := make(chan error, 1)
		go func() { _, err := c.Read(make([]byte, 16)); done <- err }()
		return done
	}

	for _, closer := range []string{"client", "server"} {
		t.Run(closer+" closes", func(t *testing.T) {
			client, server := wsPair(t)
			closing, other := client, server
			if closer == "server" {
				closing, other = server, client
			}
			read := readAsync(other)
			start := time.Now()
			if err := closing.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			if err := wsWait(t, read, "peer's read"); err != io.EOF || time.Since(start) > 2*time.Second {
				t.Fatalf("peer's read: %v after %s, want io.EOF promptly", err, time.Since(start))
			}
			// The peer answered the close frame, so it can no longer write.
			if _, err := other.Write([]byte("x")); err == nil {
				t.Fatal("write after the peer closed succeeded")
			}
			if _, err := closing.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
				t.Fatalf("read after close: %v, want net.ErrClosed", err)
			}
			if _, err := closing.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
				t.Fatalf("write after close: %v, want net.ErrClosed", err)
			}
			if err := closing.Close(); !errors.Is(err, net.ErrClosed) {
				t.Fatalf("second close: %v, want net.ErrClosed", err)
			}
		})
	}

	t.Run("close unblocks own read", func(t *testing.T) {
		client, _ := wsPair(t)
		read := readAsync(client)
		time.Sleep(50 * time.Millisecond) // let the read block
		if err := client.Close(); err != nil {
			t.Fatal(err)
		}
		if err := wsWait(t, read, "read"); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read: %v, want net.ErrClosed", err)
		}
	})
}

// TestWebSocketConcurrentWriters has several goroutines write records on
// each side, with deadlines moving meanwhile; every record arrives whole and
// in its writer's order.
func TestWebSocketConcurrentWriters(t *testing.T) {
	const (
		writers = 8
		records = 200
		size    = 1000 // bytes per record: writer, sequence, filler
	)
	client, server := wsPair(t)

	stop := make(chan struct{})
	var churn sync.WaitGroup
	churn.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, c := range []net.Conn{client, server} {
				_ = c.SetDeadline(time.Now().Add(time.Minute))
			}
			time.Sleep(time.Millisecond)
		}
	})
	defer func() { close(stop); churn.Wait() }()

	send := func(c net.Conn) <-chan error {
		errs := make(chan error, writers)
		for w := range writers {
			go func() {
				for seq := 0; seq < records; {
					// One, two or three records per Write.
					k := min(1+(seq+w)%3, records-seq)
					buf := make([]byte, 0, k*size)
					for range k {
						rec := make([]byte, size)
						rec[0] = byte(w)
						binary.BigEndian.PutUint32(rec[1:], uint32(seq))
						for i := 5; i < size; i++ {
							rec[i] = byte(w + seq)
						}
						buf = append(buf, rec...)
						seq++
					}
					if _, err := c.Write(buf); err != nil {
						errs <- err
						return
					}
				}
				errs <- nil
			}()
		}
		return errs
	}
	receive := func(c net.Conn) <-chan error {
		done := make(chan error, 1)
		go func() {
			next := make([]uint32, writers)
			rec := make([]byte, size)
			for range writers * records {
				if _, err := io.ReadFull(c, rec); err != nil {
					done <- err
					return
				}
				w, seq := int(rec[0]), binary.BigEndian.Uint32(rec[1:])
				if w >= writers || seq != next[w] {
					done <- fmt.Errorf("record from writer %d seq %d, want seq %d", w, seq, next[w])
					return
				}
				for _, b := range rec[5:] {
					if b != byte(w+int(seq)) {
						done <- fmt.Errorf("record %d/%d corrupt", w, seq)
						return
					}
				}
				next[w]++
			}
			done <- nil
		}()
		return done
	}

	up, down := receive(server), receive(client)
	sentUp, sentDown := send(client), send(server)
	for range writers {
		if err := wsWait(t, sentUp, "client writers"); err != nil {
			t.Fatalf("client write: %v", err)
		}
		if err := wsWait(t, sentDown, "server writers"); err != nil {
			t.Fatalf("server write: %v", err)
		}
	}
	if err := wsWait(t, up, "server read"); err != nil {
		t.Fatalf("server read: %v", err)
	}
	if err := wsWait(t, down, "client read"); err != nil {
		t.Fatalf("client read: %v", err)
	}
}

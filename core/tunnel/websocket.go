package tunnel

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

// WebSocket carrier. For egress networks that pass only HTTP(S), an agent
// reaches the relay over a WebSocket instead of a bare TCP connection. The
// session protocol (TLS 1.3 with client certificates, the frames, yamux) runs
// inside the WebSocket's byte stream unchanged: this file only turns a
// WebSocket into a net.Conn. The outer TLS of wss:// is there for proxies and
// load balancers; the inner TLS carries the session's security.

// WebSocketSubprotocol is the subprotocol both sides require: "tether.v1".
const WebSocketSubprotocol = "tether.v1"

const (
	// wsMaxMessage is the largest message a WebSocketConn accepts. Write
	// never sends more than wsWriteChunk in one message, and the inner TLS
	// sends records of at most 16 KiB, so only a broken or hostile peer
	// comes near it.
	wsMaxMessage = 1 << 20
	// wsWriteChunk is the largest message Write sends; a longer write is
	// split.
	wsWriteChunk = 64 << 10
	// wsBufferSize is the size of the read and write buffers of each side.
	wsBufferSize = 32 << 10
	// wsCloseTimeout bounds the close frame Close sends, and the one sent
	// after a protocol error.
	wsCloseTimeout = time.Second
	// wsDialTimeout and wsHandshakeTimeout are the dialer's defaults.
	wsDialTimeout      = 10 * time.Second
	wsHandshakeTimeout = 10 * time.Second
	// wsRefusalBodyLimit caps how much of a refusal's body is read.
	wsRefusalBodyLimit = 64 << 10
	// wsRefusalTextLimit caps how much of a plain-text refusal body is
	// quoted in the error.
	wsRefusalTextLimit = 512
)

// wsConn is the net.Conn NewWebSocketConn returns.
type wsConn struct {
	ws *websocket.Conn

	readMu  sync.Mutex
	reader  io.Reader // the message being read, nil between messages
	readErr error     // sticky: gorilla's read errors are permanent

	writeMu sync.Mutex

	dlMu          sync.Mutex
	readDeadline  time.Time
	writeDeadline time.Time

	closed atomic.Bool
}

// NewWebSocketConn adapts ws to net.Conn, for carrying the session protocol.
//
// Bytes travel as binary messages: a Write sends one message per 64 KiB of
// its data, and Read returns the messages' bytes as one stream, across
// message boundaries. A text message (or anything but a binary message) is a
// protocol error: Read fails and a close frame is sent (1003). No message of
// more than 1 MiB is accepted, far above what the inner TLS ever sends: Read
// fails with websocket.ErrReadLimit once a message grows past it (gorilla
// counts a message's frames as they arrive) and a close frame (1009) is sent. Compression is not used.
//
// Pings are answered while a Read is in progress (gorilla's default
// handler); the conn sends none itself, keepalive is yamux's job inside.
//
// A peer's close frame with a normal code (1000, 1001 or none) ends Read
// with io.EOF; a connection dropped without one gives io.ErrUnexpectedEOF.
// Close sends a close frame, waiting at most a second for the write side,
// then closes the connection. Concurrent Writes are serialised, as are
// concurrent Reads; a Read and a Write may run at the same time.
//
// Deadlines work as for a TCP connection: a passed deadline fails the call
// with an error for which errors.Is(err, os.ErrDeadlineExceeded) holds and
// which is a net.Error whose Timeout is true. Unlike TCP, a Read or Write
// that times out while under way leaves that direction of the connection
// unusable (gorilla cannot resume a half-read or half-written frame), so
// deadlines are for giving up, not polling; a call made when its deadline has
// already passed fails at once without touching the connection, and that
// one can be retried after the deadline is moved.
//
// LocalAddr and RemoteAddr are those of the underlying connection (through a
// proxy, the proxy's). ws must not be used by anything else afterwards.
func NewWebSocketConn(ws *websocket.Conn) net.Conn {
	ws.SetReadLimit(wsMaxMessage)
	ws.EnableWriteCompression(false)
	return &wsConn{ws: ws}
}

// wsConnError is the error of a WebSocketConn operation: a net.Error, so
// that callers looking for timeouts find them.
type wsConnError struct {
	op  string
	err error
}

func (e *wsConnError) Error() string { return "tunnel: websocket " + e.op + ": " + e.err.Error() }
func (e *wsConnError) Unwrap() error { return e.err }

// Timeout reports whether the operation failed because its deadline passed.
func (e *wsConnError) Timeout() bool { return isTimeout(e.err) }

// Temporary is false: gorilla's errors are permanent (net.Error asks for it).
func (e *wsConnError) Temporary() bool { return false }

// Is makes every timeout match os.ErrDeadlineExceeded, whatever the
// underlying connection reported it as.
func (e *wsConnError) Is(target error) bool {
	return target == os.ErrDeadlineExceeded && e.Timeout()
}

func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// deadlinePassed reports whether d is set and behind us.
func deadlinePassed(d time.Time) bool { return !d.IsZero() && !time.Now().Before(d) }

func (c *wsConn) Read(p []byte) (int, error) {
	c.readMu.Lock()
	defer c.readMu.Unlock()
	if c.closed.Load() {
		return 0, &wsConnError{"read", net.ErrClosed}
	}
	if c.readErr != nil {
		return 0, c.readErr
	}
	c.dlMu.Lock()
	dl := c.readDeadline
	c.dlMu.Unlock()
	if deadlinePassed(dl) {
		return 0, &wsConnError{"read", os.ErrDeadlineExceeded}
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if c.reader == nil {
			typ, r, err := c.ws.NextReader()
			if err != nil {
				c.readErr = c.readError(err)
				return 0, c.readErr
			}
			if typ != websocket.BinaryMessage {
				msg := websocket.FormatCloseMessage(websocket.CloseUnsupportedData, "tether: binary messages only")
				_ = c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(wsCloseTimeout))
				c.readErr = &wsConnError{"read", fmt.Errorf("protocol error: received a %s message, only binary messages are allowed", wsMessageType(typ))}
				return 0, c.readErr
			}
			c.reader = r
		}
		n, err := c.reader.Read(p)
		switch {
		case err == io.EOF: // end of this message
			c.reader = nil
			if n > 0 {
				return n, nil
			}
		case err != nil:
			c.reader = nil
			c.readErr = c.readError(err)
			if n > 0 {
				return n, nil // the error comes with the next Read
			}
			return 0, c.readErr
		case n > 0:
			return n, nil
		}
	}
}

// readError translates a gorilla read error to what a net.Conn's reader
// expects.
func (c *wsConn) readError(err error) error {
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		switch ce.Code {
		case websocket.CloseNormalClosure, websocket.CloseGoingAway, websocket.CloseNoStatusReceived:
			return io.EOF
		case websocket.CloseAbnormalClosure: // gorilla's name for EOF without a close frame
			return &wsConnError{"read", fmt.Errorf("connection closed without a close frame: %w", io.ErrUnexpectedEOF)}
		}
		return &wsConnError{"read", fmt.Errorf("peer closed the websocket: %w", err)}
	}
	if c.closed.Load() {
		return &wsConnError{"read", net.ErrClosed}
	}
	return &wsConnError{"read", err}
}

func wsMessageType(t int) string {
	switch t {
	case websocket.TextMessage:
		return "text"
	case websocket.BinaryMessage:
		return "binary"
	}
	return fmt.Sprintf("type %d", t)
}

func (c *wsConn) Write(p []byte) (int, error) {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if c.closed.Load() {
		return 0, &wsConnError{"write", net.ErrClosed}
	}
	n := 0
	for len(p) > 0 {
		c.dlMu.Lock()
		dl := c.writeDeadline
		c.dlMu.Unlock()
		if deadlinePassed(dl) {
			return n, &wsConnError{"write", os.ErrDeadlineExceeded}
		}
		// gorilla's write deadline is a plain field read by every write:
		// it is only set here, under writeMu.
		_ = c.ws.SetWriteDeadline(dl)
		chunk := p[:min(len(p), wsWriteChunk)]
		if err := c.ws.WriteMessage(websocket.BinaryMessage, chunk); err != nil {
			if c.closed.Load() {
				err = net.ErrClosed
			}
			return n, &wsConnError{"write", err}
		}
		n += len(chunk)
		p = p[len(chunk):]
	}
	return n, nil
}

// Close sends a close frame (1000), waiting at most a second, and closes the
// connection. Blocked Reads and Writes return; a second Close is an error.
func (c *wsConn) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return &wsConnError{"close", net.ErrClosed}
	}
	msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
	_ = c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(wsCloseTimeout))
	if err := c.ws.Close(); err != nil {
		return &wsConnError{"close", err}
	}
	return nil
}

func (c *wsConn) LocalAddr() net.Addr  { return c.ws.LocalAddr() }
func (c *wsConn) RemoteAddr() net.Addr { return c.ws.RemoteAddr() }

func (c *wsConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

func (c *wsConn) SetReadDeadline(t time.Time) error {
	c.dlMu.Lock()
	c.readDeadline = t
	c.dlMu.Unlock()
	if err := c.ws.SetReadDeadline(t); err != nil {
		return &wsConnError{"set read deadline", err}
	}
	return nil
}

func (c *wsConn) SetWriteDeadline(t time.Time) error {
	c.dlMu.Lock()
	c.writeDeadline = t
	c.dlMu.Unlock()
	// Reach a Write blocked in the network now; the next message's write
	// sets gorilla's own copy (see Write).
	if err := c.ws.NetConn().SetWriteDeadline(t); err != nil {
		return &wsConnError{"set write deadline", err}
	}
	return nil
}

// WebSocketDialer dials a relay's WebSocket agent endpoint. The zero value
// with URL set is ready to use; it is safe for concurrent use.
type WebSocketDialer struct {
	// URL is the endpoint, wss://host[:port]/path. ws:// is accepted too,
	// for tests and for relays behind something that terminates TLS on the
	// same host: the session's own TLS inside the WebSocket carries its
	// security either way, but only wss:// hides the session from proxies
	// that inspect plain HTTP.
	URL string
	// TLSConfig verifies the relay (or the load balancer in front of it) for
	// the outer TLS of wss://; nil means the system roots and the URL's
	// host. Its NextProtos are replaced by http/1.1.
	TLSConfig *tls.Config
	// Proxy picks an HTTP proxy per request; nil means
	// http.ProxyFromEnvironment (which never proxies loopback addresses). A
	// proxy is asked to CONNECT to the relay, for ws:// as for wss://.
	Proxy func(*http.Request) (*url.URL, error)
	// NetDialContext dials TCP, to the relay or to the proxy; nil means a
	// net.Dialer with a 10 s timeout. Tests and network namespaces provide
	// their own.
	NetDialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// HandshakeTimeout bounds the whole dial, TCP and TLS and the HTTP
	// upgrade included; 0 means 10 s.
	HandshakeTimeout time.Duration
	// Header adds request headers (e.g. User-Agent). It must not set the
	// WebSocket headers, Sec-WebSocket-Protocol included.
	Header http.Header
}

// WebSocketRefusedError is DialContext's error when the server answers the
// upgrade with something other than 101 Switching Protocols.
type WebSocketRefusedError struct {
	// URL is the endpoint dialled, without its query.
	URL string
	// StatusCode and Status are the answer's, e.g. 403 and "403 Forbidden".
	StatusCode int
	Status     string
	// Message is the message of a Kubernetes-style Status body, or a short
	// text body; empty if the body was neither.
	Message string
}

func (e *WebSocketRefusedError) Error() string {
	s := fmt.Sprintf("tunnel: websocket dial %s: refused: %s", e.URL, e.Status)
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// DialContext opens the WebSocket and returns it as a net.Conn (see
// NewWebSocketConn). A refusal (an answer other than 101) is a
// *WebSocketRefusedError with the HTTP status and, if the body is a
// Kubernetes-style Status or short text, its message. gorilla keeps only
// the first KiB of a refusal's body, so a longer one is reported as
// truncated text. A server that does not select WebSocketSubprotocol is
// refused too. Cancelling ctx aborts the dial at any stage.
func (d *WebSocketDialer) DialContext(ctx context.Context) (net.Conn, error) {
	u, err := url.Parse(d.URL)
	if err != nil {
		return nil, fmt.Errorf("tunnel: websocket dial: parse URL: %w", err)
	}
	where := (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}).String()
	switch {
	case u.Scheme != "ws" && u.Scheme != "wss":
		return nil, fmt.Errorf("tunnel: websocket dial %s: scheme must be wss or ws", where)
	case u.Host == "":
		return nil, fmt.Errorf("tunnel: websocket dial %s: URL has no host", where)
	case u.User != nil:
		return nil, fmt.Errorf("tunnel: websocket dial %s: URL must not carry credentials", where)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("tunnel: websocket dial %s: %w", where, err)
	}

	netDial := d.NetDialContext
	if netDial == nil {
		netDial = (&net.Dialer{Timeout: wsDialTimeout}).DialContext
	}
	// gorilla honours ctx while dialling TCP and TLS but only its deadline
	// while exchanging the HTTP upgrade: close the connection if ctx ends
	// before the dial does.
	var (
		mu    sync.Mutex
		conns []net.Conn
		ended bool
	)
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		ended = true
		for _, c := range conns {
			_ = c.Close()
		}
	})
	defer stop()
	dialer := websocket.Dialer{
		NetDialContext: func(dctx context.Context, network, addr string) (net.Conn, error) {
			c, err := netDial(dctx, network, addr)
			if err != nil {
				return nil, err
			}
			mu.Lock()
			defer mu.Unlock()
			if ended {
				_ = c.Close()
				return nil, ctx.Err()
			}
			conns = append(conns, c)
			return c, nil
		},
		Proxy:            d.Proxy,
		HandshakeTimeout: d.HandshakeTimeout,
		ReadBufferSize:   wsBufferSize,
		WriteBufferSize:  wsBufferSize,
		Subprotocols:     []string{WebSocketSubprotocol},
	}
	if dialer.Proxy == nil {
		dialer.Proxy = http.ProxyFromEnvironment
	}
	if dialer.HandshakeTimeout <= 0 {
		dialer.HandshakeTimeout = wsHandshakeTimeout
	}
	if d.TLSConfig != nil {
		dialer.TLSClientConfig = d.TLSConfig.Clone()
	} else {
		dialer.TLSClientConfig = &tls.Config{}
	}
	// The upgrade is HTTP/1.1; offering h2 could get it refused.
	dialer.TLSClientConfig.NextProtos = []string{"http/1.1"}

	ws, resp, err := dialer.DialContext(ctx, d.URL, d.Header)
	if !stop() && err == nil {
		// ctx ended as the dial finished: the connection may be closed.
		_ = ws.Close()
		err = ctx.Err()
	}
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			return nil, refusal(where, resp)
		}
		if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
			err = fmt.Errorf("%w (%w)", ctxErr, err)
		}
		return nil, fmt.Errorf("tunnel: websocket dial %s: %w", where, err)
	}
	if got := ws.Subprotocol(); got != WebSocketSubprotocol {
		_ = ws.Close()
		return nil, fmt.Errorf("tunnel: websocket dial %s: server selected subprotocol %q, want %q", where, got, WebSocketSubprotocol)
	}
	return NewWebSocketConn(ws), nil
}

// refusal reads what it can of a refused upgrade's answer.
func refusal(where string, resp *http.Response) error {
	e := &WebSocketRefusedError{URL: where, StatusCode: resp.StatusCode, Status: resp.Status}
	if e.Status == "" {
		e.Status = fmt.Sprintf("%d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
	}
	if resp.Body == nil {
		return e
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, wsRefusalBodyLimit))
	var status struct {
		Kind    string `json:"kind"`
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &status) == nil && status.Kind == "Status" && status.Message != "" {
		e.Message = status.Message
		return e
	}
	ct := strings.ToLower(resp.Header.Get("Content-Type"))
	if strings.HasPrefix(ct, "text/html") || !utf8.Valid(body) {
		return e
	}
	text := strings.Join(strings.Fields(strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, string(body))), " ")
	if len(text) > wsRefusalTextLimit {
		cut := wsRefusalTextLimit
		for cut > 0 && !utf8.RuneStart(text[cut]) {
			cut--
		}
		text = text[:cut] + "…"
	}
	e.Message = text
	return e
}

// wsUpgrader answers AcceptWebSocket's upgrades; its checks come after
// AcceptWebSocket's own.
var wsUpgrader = websocket.Upgrader{
	HandshakeTimeout: wsHandshakeTimeout,
	ReadBufferSize:   wsBufferSize,
	WriteBufferSize:  wsBufferSize,
	Subprotocols:     []string{WebSocketSubprotocol},
	CheckOrigin:      func(r *http.Request) bool { return r.Header.Get("Origin") == "" },
	Error: func(w http.ResponseWriter, _ *http.Request, status int, reason error) {
		http.Error(w, "tether: "+reason.Error(), status)
	},
}

// AcceptWebSocket upgrades an HTTP request to the tether WebSocket and
// returns it as a net.Conn (see NewWebSocketConn), with no deadlines set.
//
// It refuses, writing the HTTP error itself with a plain-text message:
// a request with an Origin header (403: agents are not browsers, and a
// browser must not be able to open an agent session); a request that is not
// a WebSocket upgrade (426, or gorilla's 400/405 for a malformed one); and one
// that does not offer WebSocketSubprotocol (400). The request must arrive
// over HTTP/1.1, as the connection is hijacked.
func AcceptWebSocket(w http.ResponseWriter, r *http.Request) (net.Conn, error) {
	if origin := r.Header.Get("Origin"); origin != "" {
		http.Error(w, "tether: requests with an Origin header are refused: agents are not browsers", http.StatusForbidden)
		return nil, fmt.Errorf("tunnel: websocket accept: refused request with Origin %q", origin)
	}
	if !websocket.IsWebSocketUpgrade(r) {
		w.Header().Set("Upgrade", "websocket")
		w.Header().Set("Sec-WebSocket-Version", "13")
		http.Error(w, "tether: this endpoint needs a WebSocket upgrade with subprotocol "+WebSocketSubprotocol, http.StatusUpgradeRequired)
		return nil, errors.New("tunnel: websocket accept: request is not a WebSocket upgrade")
	}
	offered := websocket.Subprotocols(r)
	if !slices.Contains(offered, WebSocketSubprotocol) {
		http.Error(w, "tether: WebSocket subprotocol "+WebSocketSubprotocol+" required", http.StatusBadRequest)
		return nil, fmt.Errorf("tunnel: websocket accept: subprotocol %s not offered (offered %q)", WebSocketSubprotocol, offered)
	}
	ws, err := wsUpgrader.Upgrade(w, r, nil)
	if err != nil {
		return nil, fmt.Errorf("tunnel: websocket accept: upgrade: %w", err)
	}
	// gorilla leaves the HTTP server's read deadline in place.
	if err := ws.NetConn().SetDeadline(time.Time{}); err != nil {
		_ = ws.Close()
		return nil, fmt.Errorf("tunnel: websocket accept: clear deadlines: %w", err)
	}
	return NewWebSocketConn(ws), nil
}

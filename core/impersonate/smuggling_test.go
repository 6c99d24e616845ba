package impersonate_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tether-k8s/tether/core/impersonate"
)

// crlf turns the \n of a hand-written request into \r\n, leaving \\n (a
// bare LF the test means) as \n.
func crlf(s string) string {
	s = strings.ReplaceAll(s, `\n`, "\x00")
	s = strings.ReplaceAll(s, "\n", "\r\n")
	return strings.ReplaceAll(s, "\x00", "\n")
}

// exchange writes payload in one write on a new connection to addr and
// reads the responses that come back until the server closes the
// connection or is quiet for 500 ms. It reports whether the server closed
// it.
func exchange(t *testing.T, addr, payload string) (resps []*http.Response, bodies []string, closed bool) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, payload); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	for {
		_ = conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			var ne net.Error
			return resps, bodies, !(errors.As(err, &ne) && ne.Timeout())
		}
		b, _ := io.ReadAll(resp.Body)
		resps, bodies = append(resps, resp), append(bodies, string(b))
		if resp.StatusCode == http.StatusSwitchingProtocols {
			return resps, bodies, false
		}
	}
}

func codes(resps []*http.Response) []int {
	var c []int
	for _, r := range resps {
		c = append(c, r.StatusCode)
	}
	return c
}

// TestPipelinedBytesBeforeTheUpgrade: a caller writes an upgrade request
// and, in the same write, more requests (another identity, no token, an
// Impersonate-User) before the 101. Whatever the API server answers, those
// bytes are never read as a request carrying the upgrade's identity, never
// reach the API server as a request, and each is judged by the handler's
// own checks like any other request.
func TestPipelinedBytesBeforeTheUpgrade(t *testing.T) {
	upgrade := crlf(get(streamPath, "Authorization: Bearer "+callerToken, spdyUpgrade))
	smuggled := crlf(get("/api/v1/namespaces/kube-system/secrets", "Authorization: Bearer "+callerToken, "Impersonate-User: system:admin")) +
		crlf(get("/api/v1/namespaces/kube-system/secrets", "Accept: application/json")) +
		crlf(get("/api/v1/namespaces/kube-system/secrets", "Authorization: Bearer someone-elses-token"))

	t.Run("the API server switches protocols", func(t *testing.T) {
		h := newHarness(t)
		conn, err := net.Dial("tcp", h.proxy.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(conn, upgrade+smuggled); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: %v %v", resp, err)
		}
		_, _ = io.WriteString(conn, "after-101")
		_ = conn.(*net.TCPConn).CloseWrite()
		echoed, _ := io.ReadAll(br)
		// The pipelined bytes are either dropped or carried raw inside
		// the upgraded stream, after the API server switched: never
		// parsed as HTTP on either side.
		if got := string(echoed); got != "after-101" && got != smuggled+"after-101" {
			t.Fatalf("the upgraded stream carried %q", got)
		}
		got := h.up.received()
		if len(got) != 1 || got[0].URL.Path != streamPath || got[0].Header.Get("Impersonate-User") != "alice@example.com" {
			t.Fatalf("the API server received %d requests (%v), want only the upgrade, as alice", len(got), paths(got))
		}
		audited := func() int { return strings.Count(h.logs.String(), `"msg":"impersonate: request"`) }
		if !eventually(func() bool { return audited() == 1 }) {
			t.Fatalf("%d requests audited, want 1:\n%s", audited(), h.logs)
		}
	})

	for _, reply := range []string{"403", "200", "302"} {
		t.Run("the API server answers "+reply, func(t *testing.T) {
			h := newHarness(t)
			h.up.upgradeReply = reply
			resps, bodies, _ := exchange(t, h.proxy.Listener.Addr().String(), upgrade+smuggled)
			// The upgrade's answer, then each pipelined request refused
			// on its own terms: the impersonation header (403), no token
			// (401), a token the authenticator refuses (401).
			want := []int{0, http.StatusForbidden, http.StatusUnauthorized, http.StatusUnauthorized}
			fmt.Sscan(reply, &want[0])
			if fmt.Sprint(codes(resps)) != fmt.Sprint(want) {
				t.Fatalf("responses %v, want %v: %q", codes(resps), want, bodies)
			}
			if !strings.Contains(bodies[1], "Impersonate-User header is not accepted") {
				t.Fatalf("the pipelined Impersonate-User request: %s", bodies[1])
			}
			if got := h.up.received(); len(got) != 1 || got[0].URL.Path != streamPath {
				t.Fatalf("the API server received %v, want only the upgrade", paths(got))
			}
		})
	}
}

func paths(rs []*http.Request) []string {
	var p []string
	for _, r := range rs {
		p = append(p, r.Method+" "+r.URL.Path)
	}
	return p
}

// rawUpstream is a stand-in API server that keeps the bytes it receives,
// to check how the agent frames what it forwards.
type rawUpstream struct {
	l     net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	raw   bytes.Buffer
	reqs  []rawRequest
	conns []net.Conn
}

type rawRequest struct {
	method, path, body string
	te                 []string
	bodyErr            error
}

func newRawUpstream(t *testing.T) *rawUpstream {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &rawUpstream{l: l}
	u.wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u.mu.Lock()
			u.conns = append(u.conns, c)
			u.mu.Unlock()
			u.wg.Go(func() { u.serve(c) })
		}
	})
	t.Cleanup(func() {
		_ = l.Close()
		u.mu.Lock()
		for _, c := range u.conns {
			_ = c.Close()
		}
		u.mu.Unlock()
		u.wg.Wait()
	})
	return u
}

type teeWriter struct{ u *rawUpstream }

func (w teeWriter) Write(p []byte) (int, error) {
	w.u.mu.Lock()
	defer w.u.mu.Unlock()
	return w.u.raw.Write(p)
}

func (u *rawUpstream) serve(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(io.TeeReader(c, teeWriter{u}))
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		body, berr := io.ReadAll(req.Body)
		u.mu.Lock()
		u.reqs = append(u.reqs, rawRequest{method: req.Method, path: req.URL.Path, body: string(body), te: req.TransferEncoding, bodyErr: berr})
		u.mu.Unlock()
		if berr != nil {
			return
		}
		if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"); err != nil {
			return
		}
	}
}

func (u *rawUpstream) seen() ([]rawRequest, string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]rawRequest(nil), u.reqs...), u.raw.String()
}

// TestRequestSmugglingIsRefused sends the classic desync requests to the
// agent's request path over a raw socket: Content-Length beside
// Transfer-Encoding, either framing hiding a second request, conflicting
// lengths, obfuscated Transfer-Encoding, bare LF in chunked framing. Each
// is refused (400/501), or read as chunked only, so that the hidden
// request is either body bytes or a request of the caller's own that the
// handler checks (here, refused for its Impersonate-User); and what
// reaches the API server is framed one way only: chunked, with no
// Content-Length, and never the hidden request.
func TestRequestSmugglingIsRefused(t *testing.T) {
	auth := "Authorization: Bearer " + callerToken
	hidden := "GET /smuggled HTTP/1.1\nHost: x\n" + auth + "\nImpersonate-User: system:admin\n\n"
	post := func(headers ...string) string {
		return "POST /api/v1/namespaces/ns/configmaps HTTP/1.1\nHost: x\n" + auth + "\n" + strings.Join(headers, "\n") + "\n\n"
	}
	tests := []struct {
		name    string
		payload string
		// codes are the statuses the caller gets, in order.
		codes []int
		// bodies are what the API server gets as the request's body (nil:
		// it gets no request).
		bodies []string
	}{
		{name: "CL.TE: chunked body ends early, the rest would start the next request",
			payload: crlf(post("Content-Length: "+fmt.Sprint(len(crlf("0\n\n"+hidden))), "Transfer-Encoding: chunked") + "0\n\n" + hidden),
			codes:   []int{200, 403}, bodies: []string{""}},
		{name: "TE.CL: Content-Length ends early, the rest is in the chunk",
			payload: crlf(post("Content-Length: 4", "Transfer-Encoding: chunked")) + fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(crlf(hidden)), crlf(hidden)),
			codes:   []int{200}, bodies: []string{crlf(hidden)}},
		{name: "TE before CL, lower case",
			payload: crlf(post("transfer-encoding: chunked", "content-length: 3") + "0\n\nGET /smuggled HTTP/1.1\nHost: x\n\n"),
			codes:   []int{200, 401}, bodies: []string{""}},
		{name: "two different Content-Lengths", payload: crlf(post("Content-Length: 0", "Content-Length: 5") + "hello"), codes: []int{400}},
		{name: "Content-Length with a sign", payload: crlf(post("Content-Length: +5") + "hello"), codes: []int{400}},
		{name: "two Transfer-Encodings", payload: crlf(post("Transfer-Encoding: chunked", "Transfer-Encoding: identity") + "0\n\n"), codes: []int{501}},
		{name: "Transfer-Encoding list", payload: crlf(post("Transfer-Encoding: chunked, identity") + "0\n\n"), codes: []int{501}},
		{name: "Transfer-Encoding xchunked", payload: crlf(post("Transfer-Encoding: xchunked", "Content-Length: 5") + "hello"), codes: []int{501}},
		{name: "space before the colon", payload: crlf(post("Transfer-Encoding : chunked") + "0\n\n"), codes: []int{400}},
		// Folded into X-Pad's value: not a Transfer-Encoding, so the body
		// is empty and "0" the start of a malformed next request.
		{name: "obs-fold Transfer-Encoding", payload: crlf(post("X-Pad: a", " Transfer-Encoding: chunked") + "0\n\n"), codes: []int{200, 400}, bodies: []string{""}},
		{name: "bare LF after the chunk size", payload: crlf(post("Transfer-Encoding: chunked")) + "5\nhello\r\n0\r\n\r\n" + crlf(hidden), codes: []int{400}},
		{name: "bare LF after the chunk data", payload: crlf(post("Transfer-Encoding: chunked")) + "5\r\nhello\n0\r\n\r\n" + crlf(hidden), codes: []int{400}},
		{name: "bare LF after the last chunk", payload: crlf(post("Transfer-Encoding: chunked")) + "5\r\nhello\r\n0\n\n" + crlf(hidden), codes: []int{400}},
		{name: "chunk size overflow", payload: crlf(post("Transfer-Encoding: chunked")) + "10000000000000005\r\nhello\r\n0\r\n\r\n", codes: []int{400}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			up := newRawUpstream(t)
			h := newHarness(t, func(c *impersonate.Config) {
				c.Upstream = &url.URL{Scheme: "http", Host: up.l.Addr().String()}
				c.Transport = &http.Transport{}
			})
			resps, bodies, closed := exchange(t, h.proxy.Listener.Addr().String(), tc.payload)
			got := codes(resps)
			if fmt.Sprint(got) != fmt.Sprint(tc.codes) {
				// A body the handler cannot read is answered 400 by the
				// server or 502 by the proxy once it started forwarding:
				// both refuse.
				if !(len(tc.codes) == 1 && tc.codes[0] == 400 && len(got) == 1 && got[0] == 502) {
					t.Fatalf("responses %v, want %v: %q", got, tc.codes, bodies)
				}
			}
			if len(tc.codes) == 1 && tc.codes[0] >= 400 && !closed {
				t.Fatal("the connection stayed open after a refused framing: the rest could be read as a request")
			}
			reqs, raw := up.seen()
			var complete []string
			for _, r := range reqs {
				if r.path == "/smuggled" {
					t.Fatalf("the hidden request reached the API server as a request:\n%s", raw)
				}
				if r.bodyErr == nil {
					complete = append(complete, r.body)
				}
			}
			if fmt.Sprint(complete) != fmt.Sprint(tc.bodies) && !(tc.bodies == nil && len(complete) == 0) {
				t.Fatalf("the API server got bodies %q, want %q:\n%s", complete, tc.bodies, raw)
			}
			if framedTwice(raw) {
				t.Fatalf("the agent forwarded both Content-Length and Transfer-Encoding:\n%s", raw)
			}
		})
	}
}

// framedTwice reports whether raw holds both a Content-Length and a
// Transfer-Encoding header line.
func framedTwice(raw string) bool {
	var cl, te bool
	for _, line := range strings.Split(strings.ToLower(raw), "\r\n") {
		cl = cl || strings.HasPrefix(line, "content-length:")
		te = te || strings.HasPrefix(line, "transfer-encoding:")
	}
	return cl && te
}

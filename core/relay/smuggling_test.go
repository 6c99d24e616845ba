package relay_test

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/relay"
)

// crlf turns the \n of a hand-written request into \r\n, leaving \\n (a
// bare LF the test means) as \n.
func crlf(s string) string {
	s = strings.ReplaceAll(s, `\n`, "\x00")
	s = strings.ReplaceAll(s, "\n", "\r\n")
	return strings.ReplaceAll(s, "\x00", "\n")
}

// request is a hand-written HTTP/1.1 request with \n line ends.
func request(method, path string, headers ...string) string {
	return method + " " + path + " HTTP/1.1\nHost: relay.test\n" + strings.Join(append(headers, ""), "\n") + "\n"
}

// exchange writes payload in one write on conn and reads the responses
// that come back until the server closes the connection or is quiet for
// 500 ms (or it switched protocols). It reports whether the server closed
// the connection.
func exchange(t *testing.T, conn net.Conn, payload string) (resps []*http.Response, bodies []string, br *bufio.Reader, closed bool) {
	t.Helper()
	if _, err := io.WriteString(conn, payload); err != nil {
		t.Fatal(err)
	}
	br = bufio.NewReader(conn)
	for {
		_ = conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			var ne net.Error
			return resps, bodies, br, !(errors.As(err, &ne) && ne.Timeout())
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			return append(resps, resp), append(bodies, ""), br, false
		}
		b, _ := io.ReadAll(resp.Body)
		resps, bodies = append(resps, resp), append(bodies, string(b))
	}
}

func statusCodes(resps []*http.Response) string {
	var c []string
	for _, r := range resps {
		c = append(c, fmt.Sprint(r.StatusCode))
	}
	return strings.Join(c, " ")
}

// TestClusterEndpointPipelinedBytesBeforeTheUpgrade: a caller of the
// cluster endpoint writes an exec upgrade and, in the same write, more
// requests before the 101: one with an Impersonate-User, one without a
// token, one with a token the relay refuses, one with another user's
// valid token. If the agent switches protocols, those bytes are never
// parsed as requests (dropped, or carried raw inside the upgraded
// stream); if it refuses the upgrade, each is judged on its own: refused
// by the relay, or forwarded on a stream opened for its own user, never
// the upgrade's.
func TestClusterEndpointPipelinedBytesBeforeTheUpgrade(t *testing.T) {
	pipelined := crlf(request("GET", "/v1/clusters/prod/k8s/api/v1/namespaces/kube-system/secrets", "Authorization: Bearer "+goodToken, "Impersonate-User: system:admin")) +
		crlf(request("GET", "/v1/clusters/prod/k8s/api/v1/namespaces/kube-system/secrets")) +
		crlf(request("GET", "/v1/clusters/prod/k8s/api/v1/namespaces/kube-system/secrets", "Authorization: Bearer not-a-token-0123456789")) +
		crlf(request("GET", "/v1/clusters/prod/k8s/api/v1/namespaces/kube-system/secrets", "Authorization: Bearer "+bobToken))
	upgrade := func(pod string) string {
		return crlf(request("POST", "/v1/clusters/prod/k8s/api/v1/namespaces/default/pods/"+pod+"/exec?stdin=true",
			"Connection: Upgrade", "Upgrade: SPDY/3.1", "Authorization: Bearer "+goodToken, "Content-Length: 0"))
	}
	t.Run("the agent switches protocols", func(t *testing.T) {
		h, agent := endpointRelay(t)
		conn, err := net.Dial("tcp", h.api.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		resps, _, br, _ := exchange(t, conn, upgrade("web")+pipelined)
		if statusCodes(resps) != "101" {
			t.Fatalf("responses %s, want 101 alone", statusCodes(resps))
		}
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.WriteString(conn, "after-101")
		_ = conn.(*net.TCPConn).CloseWrite()
		echoed, _ := io.ReadAll(br)
		if got := string(echoed); got != "after-101" && got != pipelined+"after-101" {
			t.Fatalf("the upgraded stream carried %q", got)
		}
		if got := agent.requests(); len(got) != 1 || got[0].user != "alice" || !strings.HasSuffix(got[0].path, "/exec") {
			t.Fatalf("the agent received %+v, want only the exec, for alice", got)
		}
	})
	t.Run("the agent refuses the upgrade", func(t *testing.T) {
		h, agent := endpointRelay(t)
		conn, err := net.Dial("tcp", h.api.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		resps, bodies, _, _ := exchange(t, conn, upgrade("refused")+pipelined)
		if got := statusCodes(resps); got != "403 403 401 401 200" {
			t.Fatalf("responses %s, want 403 (the agent's), 403 (Impersonate-User), 401, 401, 200 (bob's own): %q", got, bodies)
		}
		if !strings.Contains(bodies[1], "Impersonate-User header is not accepted") {
			t.Fatalf("the pipelined Impersonate-User request: %s", bodies[1])
		}
		got := agent.requests()
		if len(got) != 2 || got[0].user != "alice" || got[1].user != "bob" || got[1].auth != "Bearer "+bobToken || got[0].stream == got[1].stream {
			t.Fatalf("the agent received %+v, want alice's exec, then bob's request on a stream of its own for bob", got)
		}
	})
}

// TestRequestSmugglingIsRefusedAtTheRelay sends desync requests over raw
// sockets to the relay's API listener (TLS, as relay.Start serves it) and
// to its cluster endpoint: conflicting lengths and obfuscated
// Transfer-Encoding are refused (400, 501); a bare LF in chunked framing
// is refused and the connection closed; a request with Transfer-Encoding
// is read as chunked only, and the connection is closed after its
// response (RFC 9112, 6.3), so what a front proxy framing by
// Content-Length took for the start of the next request is never read.
// The agent receives the body as chunked and never the hidden request.
func TestRequestSmugglingIsRefusedAtTheRelay(t *testing.T) {
	hidden := crlf(request("GET", "/v1/clusters/prod/k8s/smuggled", "Authorization: Bearer "+goodToken))
	type tcase struct {
		name    string
		payload func(path string) string
		codes   string // the statuses, in order
		closed  bool   // the relay closes the connection after them
		// malformedBody is set when the headers are fine and the body's
		// framing is not: refused by whoever reads the body.
		malformedBody bool
		// body is what the agent gets as the request's body, for the
		// cluster endpoint ("-": no request).
		body string
	}
	post := func(path string, headers ...string) string {
		return crlf(request("POST", path, append([]string{"Authorization: Bearer " + goodToken}, headers...)...))
	}
	tests := []tcase{
		{name: "CL.TE", payload: func(p string) string {
			return post(p, "Content-Length: "+fmt.Sprint(len("0\r\n\r\n"+hidden)), "Transfer-Encoding: chunked") + "0\r\n\r\n" + hidden
		}, codes: "200", closed: true, body: ""},
		{name: "TE.CL", payload: func(p string) string {
			return post(p, "Content-Length: 4", "Transfer-Encoding: chunked") + fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(hidden), hidden)
		}, codes: "200", closed: true, body: hidden},
		{name: "TE then CL, lower case", payload: func(p string) string {
			return post(p, "transfer-encoding: chunked", "content-length: 3") + "0\r\n\r\n" + hidden
		}, codes: "200", closed: true, body: ""},
		{name: "two Content-Lengths", payload: func(p string) string { return post(p, "Content-Length: 0", "Content-Length: 5") + "hello" }, codes: "400", closed: true, body: "-"},
		{name: "two Transfer-Encodings", payload: func(p string) string {
			return post(p, "Transfer-Encoding: chunked", "Transfer-Encoding: identity") + "0\r\n\r\n"
		}, codes: "501", closed: true, body: "-"},
		{name: "Transfer-Encoding xchunked", payload: func(p string) string {
			return post(p, "Transfer-Encoding: xchunked", "Content-Length: 5") + "hello"
		}, codes: "501", closed: true, body: "-"},
		{name: "space before the colon", payload: func(p string) string { return post(p, "Transfer-Encoding : chunked") + "0\r\n\r\n" }, codes: "400", closed: true, body: "-"},
		{name: "bare LF after the chunk size", payload: func(p string) string {
			return post(p, "Transfer-Encoding: chunked") + "5\nhello\r\n0\r\n\r\n" + hidden
		}, codes: "400", closed: true, body: "-", malformedBody: true},
		{name: "bare LF after the chunk data", payload: func(p string) string {
			return post(p, "Transfer-Encoding: chunked") + "5\r\nhello\n0\r\n\r\n" + hidden
		}, codes: "400", closed: true, body: "-", malformedBody: true},
		{name: "bare LF after the last chunk", payload: func(p string) string {
			return post(p, "Transfer-Encoding: chunked") + "5\r\nhello\r\n0\n\n" + hidden
		}, codes: "400", closed: true, body: "-", malformedBody: true},
	}

	t.Run("API listener", func(t *testing.T) {
		dir := t.TempDir()
		r, err := relay.Start(t.Context(), relay.Options{Registry: registry.Config{Path: filepath.Join(dir, "relay.db")}, Authenticator: tokenAuthn{},
			Hostnames: []string{"127.0.0.1"}, APIAddr: "127.0.0.1:0", AgentAddr: "127.0.0.1:0", RelayID: "relay-test"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.Close() })
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				conn, err := tls.Dial("tcp", r.APIAddr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}) // the framing, not the name, is under test
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				// No such endpoint: 404 for any framing the server reads, and
				// for a malformed body too, as the handler reads none (the
				// server fails to discard it, and closes the connection).
				codes := strings.ReplaceAll(tc.codes, "200", "404")
				if tc.malformedBody {
					codes = "404"
				}
				resps, bodies, _, closed := exchange(t, conn, tc.payload("/v1/no-such-endpoint"))
				if got := statusCodes(resps); got != codes || closed != tc.closed {
					t.Fatalf("responses %q, closed %v; want %q, closed %v: %q", got, closed, codes, tc.closed, bodies)
				}
			})
		}
	})

	t.Run("cluster endpoint", func(t *testing.T) {
		h, agent := endpointRelay(t)
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				before := len(agent.requests())
				conn, err := net.Dial("tcp", h.api.Listener.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				resps, bodies, _, closed := exchange(t, conn, tc.payload("/v1/clusters/prod/k8s/api/v1/namespaces/default/configmaps"))
				got := statusCodes(resps)
				// A body that turns out malformed once the relay started
				// forwarding it is answered 502 rather than 400.
				if got == "502" && tc.codes == "400" {
					got = "400"
				}
				if got != tc.codes || closed != tc.closed {
					t.Fatalf("responses %q, closed %v; want %q, closed %v: %q", statusCodes(resps), closed, tc.codes, tc.closed, bodies)
				}
				var complete []seen
				for _, s := range agent.requests()[before:] {
					if s.path == "/smuggled" {
						t.Fatalf("the hidden request reached the agent: %+v", s)
					}
					if s.bodyErr == nil {
						complete = append(complete, s)
					}
				}
				switch {
				case tc.body == "-" && len(complete) != 0:
					t.Fatalf("the agent received %+v, want nothing", complete)
				case tc.body != "-" && (len(complete) != 1 || complete[0].body != tc.body || fmt.Sprint(complete[0].te) != "[chunked]"):
					t.Fatalf("the agent received %+v, want one chunked request with body %q", complete, tc.body)
				}
			})
		}
	})
}

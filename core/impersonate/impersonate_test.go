package impersonate_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tether-k8s/tether/core/identity"
	"github.com/tether-k8s/tether/core/impersonate"
)

const (
	callerToken = "caller-token-AAAA"
	saToken     = "caller-sa-token-BBBB"
	agentToken  = "agent-credential-CCCC"
	streamPath  = "/api/v1/namespaces/ns/pods/p/exec"
)

// upstream is a stand-in API server that records what reaches it.
type upstream struct {
	srv      *httptest.Server
	mu       sync.Mutex
	requests []*http.Request
	newConns atomic.Int32
	// upgradeReply says how to answer an upgrade: "101" (switch to the
	// requested protocol and echo), "101-other" (switch to another
	// protocol), or an HTTP status code such as "200" or "403".
	upgradeReply string
}

func newUpstream(t *testing.T) *upstream {
	u := &upstream{upgradeReply: "101"}
	u.srv = httptest.NewUnstartedServer(http.HandlerFunc(u.serve))
	u.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			u.newConns.Add(1)
		}
	}
	u.srv.Start()
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upstream) serve(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	u.requests = append(u.requests, r.Clone(context.Background()))
	u.mu.Unlock()
	switch {
	case r.Header.Get("Upgrade") != "":
		u.serveUpgrade(w, r)
	case r.URL.Path == "/watch":
		// A watch: one event, flushed, then nothing until the client leaves.
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, `{"type":"ADDED"}`+"\n")
		http.NewResponseController(w).Flush()
		<-r.Context().Done()
	default:
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"kind":"PodList"}`)
	}
}

func (u *upstream) serveUpgrade(w http.ResponseWriter, r *http.Request) {
	proto := r.Header.Get("Upgrade")
	switch u.upgradeReply {
	case "101", "101-other":
		if u.upgradeReply == "101-other" {
			proto = "h2c"
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n", proto)
		_ = brw.Flush()
		// Echo until the client half-closes.
		_, _ = io.Copy(conn, brw)
	default:
		code := 0
		fmt.Sscan(u.upgradeReply, &code)
		w.WriteHeader(code)
		_, _ = io.WriteString(w, "no upgrade for you")
	}
}

func (u *upstream) received() []*http.Request {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]*http.Request(nil), u.requests...)
}

// fakeAuthn accepts callerToken as alice and saToken as a service-account
// token to pass through; it can be told to return a given identity.
type fakeAuthn struct {
	identity  identity.Identity
	audiences []string
	calls     atomic.Int32
}

func (a *fakeAuthn) AuthenticateToken(_ context.Context, token string) (identity.Result, error) {
	a.calls.Add(1)
	switch token {
	case callerToken:
		return identity.Result{Identity: a.identity, Audiences: a.audiences}, nil
	case saToken:
		return identity.Result{Passthrough: true, Identity: identity.Identity{User: "system:serviceaccount:ns:deployer"}}, nil
	}
	return identity.Result{}, errors.New("oidc: token is expired")
}

type harness struct {
	up    *upstream
	authn *fakeAuthn
	proxy *httptest.Server
	logs  *lockedWriter
}

func newHarness(t *testing.T, mutate ...func(*impersonate.Config)) *harness {
	t.Helper()
	h := &harness{
		up: newUpstream(t),
		authn: &fakeAuthn{identity: identity.Identity{
			User: "alice@example.com", UID: "u-123", Groups: []string{"dev", "oncall"},
			Extra: map[string][]string{"tether.io/issuer": {"https://issuer.example"}},
		}},
		logs: &lockedWriter{},
	}
	target, _ := url.Parse(h.up.srv.URL)
	logger := slog.New(slog.NewJSONHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg := impersonate.Config{
		Upstream:      target,
		Transport:     h.up.srv.Client().Transport,
		Credential:    func(context.Context) (string, error) { return agentToken, nil },
		Authenticator: h.authn,
		Logger:        logger,
		Audit:         logger,
	}
	for _, m := range mutate {
		m(&cfg)
	}
	handler, err := impersonate.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.proxy = httptest.NewServer(handler)
	t.Cleanup(h.proxy.Close)
	t.Cleanup(func() {
		for _, secret := range []string{callerToken, saToken, agentToken} {
			if strings.Contains(h.logs.String(), secret) {
				t.Errorf("a token (%s) appears in the logs:\n%s", secret, h.logs.String())
			}
		}
	})
	return h
}

// lockedWriter collects log output written by the handler's goroutines.
type lockedWriter struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// eventually reports whether cond holds within two seconds: the handler
// writes its audit line after the response has reached the client.
func eventually(cond func() bool) bool {
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// raw sends a request written by hand (so that header names, order and
// repetition are exactly as given) and returns the response and connection.
func (h *harness) raw(t *testing.T, req string) (*http.Response, *bufio.Reader, net.Conn) {
	t.Helper()
	conn, err := net.Dial("tcp", h.proxy.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, strings.ReplaceAll(req, "\n", "\r\n")); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	return resp, br, conn
}

func get(path string, headers ...string) string {
	return "GET " + path + " HTTP/1.1\nHost: 127.0.0.1\n" + strings.Join(headers, "\n") + "\n\n"
}

type status struct {
	Kind    string `json:"kind"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
	Code    int    `json:"code"`
}

func readStatus(t *testing.T, resp *http.Response) status {
	t.Helper()
	defer resp.Body.Close()
	var s status
	body, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(body, &s); err != nil || s.Kind != "Status" {
		t.Fatalf("response is not a Kubernetes Status (%v): %s", err, body)
	}
	return s
}

// TestRefusals holds the checklist's attack rows: each request must be
// refused with a Status, before authentication where the request itself is
// malformed, and must never reach the API server.
func TestRefusals(t *testing.T) {
	bearer := "Authorization: Bearer " + callerToken
	tests := []struct {
		name     string
		req      string
		code     int
		message  string
		authnRun bool // whether the token was checked before the refusal
	}{
		{"Impersonate-User", get("/api/v1/pods", bearer, "Impersonate-User: system:admin"), 403, "Impersonate-User", false},
		{"impersonate-group in lower case", get("/api/v1/pods", bearer, "impersonate-group: system:masters"), 403, "Impersonate-Group", false},
		{"IMPERSONATE-UID in upper case", get("/api/v1/pods", bearer, "IMPERSONATE-UID: 0"), 403, "Impersonate-Uid", false},
		{"Impersonate-Extra-*", get("/api/v1/pods", bearer, "Impersonate-Extra-Scopes: all"), 403, "Impersonate-Extra-Scopes", false},
		{"repeated Impersonate-Group", get("/api/v1/pods", bearer, "Impersonate-Group: a", "Impersonate-Group: system:masters"), 403, "Impersonate-Group", false},
		{"Connection names Impersonate-User and Authorization", get("/api/v1/pods", bearer, "Connection: Impersonate-User, Authorization"), 400, "Connection", false},
		{"several Connection headers, the first empty", get("/api/v1/pods", bearer, "Connection:", "Connection: keep-alive, Impersonate-Group"), 400, "Connection", false},
		{"no Authorization", get("/api/v1/pods"), 401, "bearer token", false},
		{"Basic Authorization", get("/api/v1/pods", "Authorization: Basic YWxpY2U6cHc="), 401, "bearer token", false},
		{"empty bearer token", get("/api/v1/pods", "Authorization: Bearer "), 401, "bearer token", false},
		{"duplicate Authorization", get("/api/v1/pods", bearer, "Authorization: Bearer other"), 400, "Authorization", false},
		{"Proxy-Authorization", get("/api/v1/pods", bearer, "Proxy-Authorization: Basic eDp5"), 400, "Proxy-Authorization", false},
		// kube-apiserver's request-header authentication trusts these from
		// an authenticating front proxy: never from a caller.
		{"X-Remote-User", get("/api/v1/pods", bearer, "X-Remote-User: system:admin"), 403, "X-Remote-User", false},
		{"x-remote-group in lower case", get("/api/v1/pods", bearer, "x-remote-group: system:masters"), 403, "X-Remote-Group", false},
		{"X-Remote-Extra-*", get("/api/v1/pods", bearer, "X-Remote-Extra-Scopes: all"), 403, "X-Remote-Extra-Scopes", false},
		{"token over the size cap", get("/api/v1/pods", "Authorization: Bearer "+strings.Repeat("a", 17<<10)), 401, "longer than", false},
		{"token refused by the authenticator", get("/api/v1/pods", "Authorization: Bearer not-a-valid-token"), 401, "token is expired", true},
		{"Upgrade: h2c", get("/api/v1/pods", bearer, "Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAAQAAP__"), 400, "h2c", false},
		{"WebSocket upgrade on a non-streaming path", get("/api/v1/namespaces/ns/pods", bearer, "Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Protocol: v5.channel.k8s.io"), 400, "not a streaming", false},
		{"WebSocket upgrade with a foreign subprotocol", get(streamPath, bearer, "Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Protocol: chat"), 400, "subprotocol", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			resp, _, _ := h.raw(t, tc.req)
			if resp.StatusCode != tc.code {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.code)
			}
			s := readStatus(t, resp)
			if s.Code != tc.code || !strings.Contains(s.Message, tc.message) {
				t.Fatalf("Status %+v, want code %d and a message mentioning %q", s, tc.code, tc.message)
			}
			if n := len(h.up.received()); n != 0 {
				t.Fatalf("the API server received %d requests; a refused request must never reach it", n)
			}
			if ran := h.authn.calls.Load() > 0; ran != tc.authnRun {
				t.Fatalf("authenticator called: %v, want %v", ran, tc.authnRun)
			}
			if !eventually(func() bool { return strings.Contains(h.logs.String(), "refused") }) {
				t.Fatalf("refusal not logged:\n%s", h.logs.String())
			}
		})
	}
}

// TestIdentityFailsClosed: an identity that cannot be expressed safely as
// headers is refused, never truncated or escaped into something else.
func TestIdentityFailsClosed(t *testing.T) {
	tests := []struct {
		name  string
		id    identity.Identity
		allow bool
		want  string
	}{
		{"empty user", identity.Identity{}, false, "no user name"},
		{"CR LF in user", identity.Identity{User: "alice\r\nImpersonate-Group: system:masters"}, false, "user"},
		{"tab in user", identity.Identity{User: "al\tice"}, false, "user"},
		{"extra key needing percent-encoding", identity.Identity{User: "alice", Extra: map[string][]string{"example.com/a b(c)%": {"v"}}}, false, ""},
		{"NUL in group", identity.Identity{User: "alice", Groups: []string{"dev\x00"}}, false, "group"},
		{"LF in UID", identity.Identity{User: "alice", UID: "1\n2"}, false, "UID"},
		{"CR in extra value", identity.Identity{User: "alice", Extra: map[string][]string{"k": {"v\r"}}}, false, "extra"},
		{"empty extra key", identity.Identity{User: "alice", Extra: map[string][]string{"": {"v"}}}, false, "extra"},
		{"system:masters group", identity.Identity{User: "alice", Groups: []string{"system:masters"}}, false, "system:"},
		{"system:anonymous user", identity.Identity{User: "system:anonymous"}, false, "system:"},
		{"system:serviceaccount user", identity.Identity{User: "system:serviceaccount:kube-system:admin"}, false, "system:"},
		{"1,000 groups are fine", identity.Identity{User: "alice", Groups: manyGroups(1000)}, false, ""},
		{"system: allowed when configured", identity.Identity{User: "system:admin"}, true, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, func(c *impersonate.Config) { c.AllowSystemNames = tc.allow })
			h.authn.identity = tc.id
			resp, _, _ := h.raw(t, get("/api/v1/pods", "Authorization: Bearer "+callerToken))
			if tc.want == "" {
				if resp.StatusCode != 200 || len(h.up.received()) != 1 {
					t.Fatalf("status %d, %d upstream requests; want 200 and 1", resp.StatusCode, len(h.up.received()))
				}
				if got := h.up.received()[0].Header.Values("Impersonate-Group"); len(got) != len(tc.id.Groups) {
					t.Fatalf("upstream got %d groups, want %d", len(got), len(tc.id.Groups))
				}
				return
			}
			if resp.StatusCode != 403 {
				t.Fatalf("status %d, want 403", resp.StatusCode)
			}
			if s := readStatus(t, resp); !strings.Contains(s.Message, tc.want) {
				t.Fatalf("message %q, want it to mention %q", s.Message, tc.want)
			}
			if len(h.up.received()) != 0 {
				t.Fatal("the API server received the request")
			}
		})
	}
}

func manyGroups(n int) []string {
	g := make([]string, n)
	for i := range g {
		g[i] = fmt.Sprintf("group-%04d", i)
	}
	return g
}

func TestForwardsWithImpersonation(t *testing.T) {
	h := newHarness(t)
	resp, _, _ := h.raw(t, get("/api/v1/pods?labelSelector=a%3Db", "Authorization: Bearer "+callerToken,
		"X-Forwarded-For: 6.6.6.6", "X-Forwarded-Host: evil", "Forwarded: for=6.6.6.6", "X-Request-Id: spoofed"))
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != `{"kind":"PodList"}` {
		t.Fatalf("got %d %s", resp.StatusCode, body)
	}
	reqs := h.up.received()
	if len(reqs) != 1 {
		t.Fatalf("%d upstream requests", len(reqs))
	}
	got := reqs[0]
	if got.URL.RawQuery != "labelSelector=a%3Db" {
		t.Errorf("query %q not preserved", got.URL.RawQuery)
	}
	want := map[string][]string{
		"Authorization":                        {"Bearer " + agentToken},
		"Impersonate-User":                     {"alice@example.com"},
		"Impersonate-Uid":                      {"u-123"},
		"Impersonate-Group":                    {"dev", "oncall"},
		"Impersonate-Extra-Tether.io%2fissuer": {"https://issuer.example"},
	}
	for k, v := range want {
		if g := got.Header.Values(k); strings.Join(g, "|") != strings.Join(v, "|") {
			t.Errorf("upstream %s = %q, want %q", k, g, v)
		}
	}
	if id := got.Header.Get("Impersonate-Extra-Tether.io%2frequest-Id"); len(id) < 16 {
		t.Errorf("upstream request ID extra %q, want a generated ID", id)
	}
	if addr := got.Header.Get("Impersonate-Extra-Tether.io%2fclient-Address"); addr == "" {
		t.Error("upstream got no client address extra")
	}
	for _, k := range []string{"X-Forwarded-For", "X-Forwarded-Host", "Forwarded"} {
		if v := got.Header.Values(k); len(v) != 0 {
			t.Errorf("upstream got %s %q; forged forwarding headers must not pass", k, v)
		}
	}
	for k, vs := range got.Header {
		for _, v := range vs {
			if strings.Contains(v, callerToken) {
				t.Errorf("the caller's token reached the API server in %s", k)
			}
		}
	}
	audited := func() bool {
		l := h.logs.String()
		return strings.Contains(l, `"user":"alice@example.com"`) && strings.Contains(l, `"status":200`)
	}
	if !eventually(audited) {
		t.Errorf("no audit line with the caller and status:\n%s", h.logs.String())
	}
}

func TestObserveSeesEveryRequest(t *testing.T) {
	type obs struct {
		code    int
		refused bool
	}
	var mu sync.Mutex
	var seen []obs
	h := newHarness(t, func(c *impersonate.Config) {
		c.Observe = func(o impersonate.Observation) { mu.Lock(); seen = append(seen, obs{o.Code, o.Refused}); mu.Unlock() }
	})
	h.raw(t, get("/api/v1/pods", "Authorization: Bearer "+callerToken))
	h.raw(t, get("/api/v1/pods", "Authorization: Bearer "+callerToken, "Impersonate-User: x"))
	if !eventually(func() bool { mu.Lock(); defer mu.Unlock(); return len(seen) == 2 }) {
		t.Fatalf("observed %v, want two requests", seen)
	}
	mu.Lock()
	defer mu.Unlock()
	// A forwarded request is observed after its response has gone out, so
	// the two may be observed in either order.
	if !(seen[0] == obs{200, false} && seen[1] == obs{403, true}) && !(seen[0] == obs{403, true} && seen[1] == obs{200, false}) {
		t.Fatalf("observed %v, want {200 false} and {403 true}", seen)
	}
}

func TestServiceAccountTokenPassesThrough(t *testing.T) {
	h := newHarness(t)
	resp, _, _ := h.raw(t, get("/api/v1/pods", "Authorization: Bearer "+saToken))
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	got := h.up.received()[0].Header
	if got.Get("Authorization") != "Bearer "+saToken {
		t.Fatalf("upstream Authorization %q, want the caller's service-account token", got.Get("Authorization"))
	}
	for k := range got {
		if strings.HasPrefix(k, "Impersonate-") {
			t.Fatalf("service-account mode must impersonate no one, upstream got %s", k)
		}
	}
	// The agent did not verify the token: its audit line says whom it
	// claims, never that this is the user.
	if !eventually(func() bool {
		return strings.Contains(h.logs.String(), `"claimedServiceAccount":"system:serviceaccount:ns:deployer"`)
	}) ||
		strings.Contains(h.logs.String(), `"user":"system:serviceaccount:ns:deployer"`) {
		t.Fatalf("the audit line of a passed-through token:\n%s", h.logs.String())
	}
}

func TestNoCredentialNoForwarding(t *testing.T) {
	h := newHarness(t, func(c *impersonate.Config) {
		c.Credential = func(context.Context) (string, error) { return "", errors.New("token file missing") }
	})
	resp, _, _ := h.raw(t, get("/api/v1/pods", "Authorization: Bearer "+callerToken))
	if resp.StatusCode != 503 || len(h.up.received()) != 0 {
		t.Fatalf("status %d with %d upstream requests; want 503 and none", resp.StatusCode, len(h.up.received()))
	}
}

func TestWatchIsStreamed(t *testing.T) {
	h := newHarness(t)
	resp, br, _ := h.raw(t, get("/watch", "Authorization: Bearer "+callerToken))
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	_ = br // the body is read through resp
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != `{"type":"ADDED"}`+"\n" {
		t.Fatalf("first event %q, %v: a watch event must arrive while the watch is open", line, err)
	}
}

const spdyUpgrade = "Connection: Upgrade\nUpgrade: SPDY/3.1\nX-Stream-Protocol-Version: v5.channel.k8s.io"

func TestUpgradeSplicedAfter101(t *testing.T) {
	h := newHarness(t)
	resp, br, conn := h.raw(t, get(streamPath, "Authorization: Bearer "+callerToken, spdyUpgrade))
	if resp.StatusCode != 101 || !strings.EqualFold(resp.Header.Get("Upgrade"), "SPDY/3.1") {
		t.Fatalf("status %d upgrade %q, want 101 SPDY/3.1", resp.StatusCode, resp.Header.Get("Upgrade"))
	}
	if _, err := io.WriteString(conn, "ping over the upgraded stream"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len("ping over the upgraded stream"))
	if _, err := io.ReadFull(br, buf); err != nil || string(buf) != "ping over the upgraded stream" {
		t.Fatalf("echo %q, %v", buf, err)
	}
	got := h.up.received()[0].Header
	if got.Get("Impersonate-User") != "alice@example.com" || got.Get("Authorization") != "Bearer "+agentToken {
		t.Fatalf("upgrade forwarded without impersonation: %v", got)
	}
	// Exactly "Connection: Upgrade": kubelets reject an upgrade whose
	// Connection header also says close.
	if c := got.Values("Connection"); len(c) != 1 || !strings.EqualFold(c[0], "Upgrade") {
		t.Fatalf("upstream Connection %q, want exactly [Upgrade]", c)
	}
}

func TestFailedUpgradeEndsTheUpstreamConnection(t *testing.T) {
	for _, reply := range []string{"200", "302", "403"} {
		t.Run(reply, func(t *testing.T) {
			h := newHarness(t)
			h.up.upgradeReply = reply
			resp, _, _ := h.raw(t, get(streamPath, "Authorization: Bearer "+callerToken, spdyUpgrade))
			if fmt.Sprint(resp.StatusCode) != reply {
				t.Fatalf("status %d, want %s passed back", resp.StatusCode, reply)
			}
			if loc := resp.Header.Get("Location"); reply == "302" && loc != "" {
				t.Logf("redirect passed to the caller, not followed: %q", loc)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			// The next request must not reuse the upstream connection that
			// carried the failed upgrade.
			before := h.up.newConns.Load()
			resp2, _, _ := h.raw(t, get("/api/v1/pods", "Authorization: Bearer "+callerToken))
			if resp2.StatusCode != 200 {
				t.Fatalf("follow-up status %d", resp2.StatusCode)
			}
			if h.up.newConns.Load() == before {
				t.Fatal("the upstream connection that answered a failed upgrade was reused")
			}
		})
	}
}

func TestUpgradeToAnotherProtocolIsRefused(t *testing.T) {
	h := newHarness(t)
	h.up.upgradeReply = "101-other"
	resp, _, _ := h.raw(t, get(streamPath, "Authorization: Bearer "+callerToken, spdyUpgrade))
	if resp.StatusCode == 101 {
		t.Fatal("the proxy spliced a connection the API server switched to another protocol")
	}
	if resp.StatusCode != 502 {
		t.Fatalf("status %d, want 502", resp.StatusCode)
	}
}

func TestConfigValidate(t *testing.T) {
	u, _ := url.Parse("https://127.0.0.1:6443")
	good := impersonate.Config{
		Upstream: u, Transport: http.DefaultTransport, Authenticator: &fakeAuthn{},
		Credential: func(context.Context) (string, error) { return "x", nil },
	}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(*impersonate.Config){
		"Upstream":         func(c *impersonate.Config) { c.Upstream = nil },
		"Transport":        func(c *impersonate.Config) { c.Transport = nil },
		"Authenticator":    func(c *impersonate.Config) { c.Authenticator = nil },
		"Credential":       func(c *impersonate.Config) { c.Credential = nil },
		"MaxTokenBytes":    func(c *impersonate.Config) { c.MaxTokenBytes = -1 },
		"UpgradeTransport": func(c *impersonate.Config) { c.Transport = roundTripFunc(nil) },
	} {
		c := good
		mutate(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("Validate with bad %s = %v, want an error naming it", name, err)
		}
	}
}

// TestAdmitNarrowsWhoMayUseTheConnection: the agent binds a tunnel to the
// user the relay admitted; a request authenticated as anyone else on it is
// refused before it reaches the API server, and Admit never widens access.
func TestAdmitNarrowsWhoMayUseTheConnection(t *testing.T) {
	var calls atomic.Int32
	h := newHarness(t, func(c *impersonate.Config) {
		c.Admit = func(_ *http.Request, id identity.Identity) error {
			calls.Add(1)
			if id.User != "tunnel-owner" {
				return fmt.Errorf("this tunnel was opened for tunnel-owner, not %s", id.User)
			}
			return nil
		}
	})
	resp, _, _ := h.raw(t, get("/api/v1/pods", "Authorization: Bearer "+callerToken))
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("a request by another user than the tunnel's: %d, want 403", resp.StatusCode)
	}
	h.up.mu.Lock()
	n := len(h.up.requests)
	h.up.mu.Unlock()
	if n != 0 {
		t.Fatal("the refused request reached the API server")
	}
	// A bad token is refused before Admit is asked.
	before := calls.Load()
	if resp, _, _ := h.raw(t, get("/api/v1/pods", "Authorization: Bearer nope")); resp.StatusCode != http.StatusUnauthorized || calls.Load() != before {
		t.Fatalf("bad token: %d, Admit called %d times; want 401 and Admit not called", resp.StatusCode, calls.Load()-before)
	}
}

func TestCheckAudiencesRefusesTokensOfOtherHops(t *testing.T) {
	var asked [][]string
	h := newHarness(t, func(c *impersonate.Config) {
		c.CheckAudiences = func(auds []string) error {
			asked = append(asked, auds)
			if len(auds) == 1 && auds[0] == "tether:relay" {
				return errors.New("this token is for the relay's audience tether:relay")
			}
			return nil
		}
	})
	h.authn.audiences = []string{"tether:relay"}
	resp, _, _ := h.raw(t, get("/api/v1/pods", "Authorization: Bearer "+callerToken))
	st := readStatus(t, resp)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(st.Message, "for the relay's audience") {
		t.Fatalf("a token for the relay's audience: %d %q, want 403", resp.StatusCode, st.Message)
	}
	if n := len(h.up.received()); n != 0 {
		t.Fatalf("the refused request reached the API server (%d requests)", n)
	}
	h.authn.audiences = []string{"tether:cluster:prod"}
	if resp, _, _ := h.raw(t, get("/api/v1/pods", "Authorization: Bearer "+callerToken)); resp.StatusCode != http.StatusOK {
		t.Fatalf("a token for this cluster: %d, want 200", resp.StatusCode)
	}
	// A service-account token passed through is the API server's to check.
	before := len(asked)
	if resp, _, _ := h.raw(t, get("/api/v1/pods", "Authorization: Bearer "+saToken)); resp.StatusCode != http.StatusOK || len(asked) != before {
		t.Fatalf("service-account token: %d, CheckAudiences asked %d times; want 200, not asked", resp.StatusCode, len(asked)-before)
	}
}

package relay_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tether-k8s/tether/core/kstatus"
	"github.com/tether-k8s/tether/core/relay"
	"github.com/tether-k8s/tether/core/tunnel"
	"github.com/tether-k8s/tether/core/tunnel/tunneltest"
)

// seen is a request as the fake agent received it.
type seen struct {
	stream, user  string // the stream's Open.Request and Open.User
	method, path  string
	rawPath, auth string
	query         string
	header        http.Header
	// te and body are the request's Transfer-Encoding and body.
	te      []string
	body    string
	bodyErr error
}

// fakeAgent serves HTTP over TLS with an agent's certificate on every
// stream of its session, as the real agent does, and records what it got.
type fakeAgent struct {
	mu      sync.Mutex
	seen    []seen
	release chan struct{} // ends /watch
	conns   chan net.Conn
	done    chan struct{}
}

type streamConn struct {
	*tls.Conn
	st     *tunnel.Stream
	closed chan struct{}
	once   sync.Once
}

func (c *streamConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

func (a *fakeAgent) Accept() (net.Conn, error) {
	select {
	case c := <-a.conns:
		return c, nil
	case <-a.done:
		return nil, net.ErrClosed
	}
}
func (a *fakeAgent) Close() error   { return nil }
func (a *fakeAgent) Addr() net.Addr { return &net.TCPAddr{} }

type streamKey struct{}

// startAgent adds a session for cluster to the relay, whose streams are
// answered with TLS under cert (an agent's credential, maybe another
// cluster's).
func startAgent(t *testing.T, h *relayHarness, cluster string, cert tls.Certificate) *fakeAgent {
	t.Helper()
	a := &fakeAgent{release: make(chan struct{}), conns: make(chan net.Conn), done: make(chan struct{})}
	srv := &http.Server{
		Handler: http.HandlerFunc(a.serve),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, streamKey{}, c.(*streamConn).st)
		},
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(a) }()
	rs, as := tunneltest.Pair(t, tunnel.Hello{Cluster: cluster, Agent: "a"})
	tunneltest.Serve(t, as, func(st *tunnel.Stream) {
		c := &streamConn{Conn: tls.Server(st, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13, NextProtos: []string{"http/1.1"}}),
			st: st, closed: make(chan struct{})}
		select {
		case a.conns <- c:
			<-c.closed
		case <-a.done:
		}
	})
	t.Cleanup(func() { close(a.done); _ = srv.Close(); <-served })
	if err := h.router.Add(rs, nil); err != nil {
		t.Fatal(err)
	}
	return a
}

func (a *fakeAgent) serve(w http.ResponseWriter, r *http.Request) {
	st := r.Context().Value(streamKey{}).(*tunnel.Stream)
	var body []byte
	var bodyErr error
	if r.Header.Get("Upgrade") == "" {
		body, bodyErr = io.ReadAll(r.Body)
	}
	a.mu.Lock()
	a.seen = append(a.seen, seen{stream: st.Open.Request, user: st.Open.User, method: r.Method, path: r.URL.Path, rawPath: r.URL.EscapedPath(),
		auth: r.Header.Get("Authorization"), query: r.URL.RawQuery, header: r.Header.Clone(), te: r.TransferEncoding, body: string(body), bodyErr: bodyErr})
	a.mu.Unlock()
	switch {
	case r.Header.Get("Upgrade") != "" && strings.Contains(r.URL.Path, "/pods/refused/"):
		// As the API server answers an exec the user may not do.
		http.Error(w, "no exec for you", http.StatusForbidden)
	case r.URL.Path == "/watch":
		_, _ = io.WriteString(w, "event-1\n")
		http.NewResponseController(w).Flush()
		<-a.release
		_, _ = io.WriteString(w, "event-2\n")
	case r.Header.Get("Upgrade") != "":
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+r.Header.Get("Upgrade")+"\r\n\r\n")
		_, _ = io.Copy(conn, brw) // echo until the caller half-closes
	default:
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"kind":"PodList","path":%q}`, r.URL.Path)
	}
}

func (a *fakeAgent) requests() []seen {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]seen(nil), a.seen...)
}

// endpointRelay is a relay with the cluster endpoint, cluster prod (which
// grants alice) and an agent of prod with prod's credential.
func endpointRelay(t *testing.T) (*relayHarness, *fakeAgent) {
	t.Helper()
	h := newRelayWith(t, func(c *relay.ServerConfig) { c.ClusterEndpoint = &relay.ClusterEndpointConfig{} })
	cert := tunneltest.Join(t, h.reg, h.create(t, "prod"))
	return h, startAgent(t, h, "prod", cert)
}

// waitAudit waits up to 5 seconds for the audit log to contain want (the
// handler writes its line after the response) and returns the log.
func (h *relayHarness) waitAudit(want string) string {
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(h.audit.String(), want) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	return h.audit.String()
}

func (h *relayHarness) get(t *testing.T, path, token string, header http.Header) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, h.api.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v // as given: not canonicalized
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// TestClusterEndpointRefusals: the endpoint checks the caller as the tunnel
// endpoint does, refuses impersonation headers in any spelling, and nothing
// it refuses reaches the agent.
func TestClusterEndpointRefusals(t *testing.T) {
	h, agent := endpointRelay(t)
	if _, err := h.reg.CreateCluster("closed"); err != nil { // grants no one
		t.Fatal(err)
	}
	const pods = "/v1/clusters/prod/k8s/api/v1/pods"
	tests := []struct {
		name, path, token string
		header            http.Header
		code              int
		msg               string
	}{
		{"no token", pods, "", nil, 401, "bearer token is required"},
		{"bad token", pods, "stale", nil, 401, "token is expired"},
		{"two Authorization headers", pods, "", http.Header{"Authorization": {"Bearer " + goodToken, "Bearer " + goodToken}}, 401, "bearer token is required"},
		{"a caller the cluster does not grant", pods, outsiderToken, nil, 403, "mallory may not reach cluster prod"},
		{"a cluster that grants no one", "/v1/clusters/closed/k8s/api", goodToken, nil, 403, "grants access to no one"},
		{"unknown cluster", "/v1/clusters/staging/k8s/api", goodToken, nil, 404, "unknown cluster"},
		{"cluster ID %2e%2e", "/v1/clusters/%2e%2e/k8s/api", goodToken, nil, 400, "invalid cluster ID"},
		{"cluster ID in upper case", "/v1/clusters/PROD/k8s/api", goodToken, nil, 400, "invalid cluster ID"},
		{"Impersonate-User", pods, goodToken, http.Header{"Impersonate-User": {"system:admin"}}, 403, "Impersonate-User header is not accepted"},
		{"Impersonate-Group", pods, goodToken, http.Header{"Impersonate-Group": {"system:masters"}}, 403, "Impersonate-Group header is not accepted"},
		{"Impersonate-Uid", pods, goodToken, http.Header{"Impersonate-Uid": {"0"}}, 403, "Impersonate-Uid header is not accepted"},
		{"Impersonate-Extra-*", pods, goodToken, http.Header{"Impersonate-Extra-Scopes": {"all"}}, 403, "Impersonate-Extra-Scopes header is not accepted"},
		{"impersonate-group in lower case, repeated", pods, goodToken, http.Header{"impersonate-group": {"a", "system:masters"}}, 403, "Impersonate-Group header is not accepted"},
		{"IMPERSONATE-USER in upper case", pods, goodToken, http.Header{"IMPERSONATE-USER": {"system:admin"}}, 403, "Impersonate-User header is not accepted"},
		{"Upgrade: h2c", pods, goodToken, http.Header{"Connection": {"Upgrade"}, "Upgrade": {"h2c"}}, 400, "Upgrade h2c is not supported"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := h.get(t, tc.path, tc.token, tc.header)
			st, ok := kstatus.Decode([]byte(body))
			if resp.StatusCode != tc.code || !ok || st.Code != tc.code || !strings.Contains(st.Message, tc.msg) {
				t.Fatalf("got %d %s, want a Status %d mentioning %q", resp.StatusCode, body, tc.code, tc.msg)
			}
		})
	}
	if got := agent.requests(); len(got) != 0 {
		t.Fatalf("refused requests reached the agent: %+v", got)
	}
	want := `
# HELP tether_relay_cluster_requests_total Requests to the clusters' HTTPS endpoint (no tether-proxy), by result.
# TYPE tether_relay_cluster_requests_total counter
tether_relay_cluster_requests_total{result="bad_request"} 3
tether_relay_cluster_requests_total{result="forbidden"} 8
tether_relay_cluster_requests_total{result="unauthorized"} 3
tether_relay_cluster_requests_total{result="unknown_cluster"} 1
`
	if err := testutil.GatherAndCompare(h.prom, strings.NewReader(want), "tether_relay_cluster_requests_total"); err != nil {
		t.Fatal(err)
	}
}

// TestClusterEndpointForwards: an admitted request reaches the agent with
// the prefix stripped, the caller's own token and user, nothing forged, on
// a pooled connection; the audit line has the agent's request ID and no
// token.
func TestClusterEndpointForwards(t *testing.T) {
	h, agent := endpointRelay(t)
	hdr := http.Header{"Forwarded": {"for=10.0.0.1"}, "X-Forwarded-For": {"10.0.0.1"}, "Proxy-Authorization": {"Basic eA=="}}
	for i := range 2 {
		resp, body := h.get(t, "/v1/clusters/prod/k8s/api/v1/namespaces/a%2Fb/pods?labelSelector=app%3Dweb&watch=0", goodToken, hdr)
		if resp.StatusCode != 200 || !strings.Contains(body, `"path":"/api/v1/namespaces/a/b/pods"`) {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, body)
		}
	}
	got := agent.requests()
	if len(got) != 2 {
		t.Fatalf("the agent got %d requests, want 2", len(got))
	}
	for _, r := range got {
		if r.rawPath != "/api/v1/namespaces/a%2Fb/pods" || r.query != "labelSelector=app%3Dweb&watch=0" || r.auth != "Bearer "+goodToken || r.user != "alice" {
			t.Fatalf("the agent got %+v", r)
		}
		for _, k := range []string{"Forwarded", "X-Forwarded-For", "Proxy-Authorization"} {
			if v := r.header.Values(k); len(v) != 0 {
				t.Fatalf("the agent got %s: %q", k, v)
			}
		}
	}
	if got[0].stream != got[1].stream {
		t.Fatalf("two requests of one token took two streams (%s, %s): the pool did not keep the connection", got[0].stream, got[1].stream)
	}
	audit := h.waitAudit(`"request":"` + got[0].stream + `.2"`)
	for _, want := range []string{`"msg":"relay: cluster request","request":"` + got[0].stream + `.1"`, `"request":"` + got[0].stream + `.2"`,
		`"cluster":"prod","user":"alice"`, `"verb":"GET","path":"/api/v1/namespaces/a/b/pods","status":200`} {
		if !strings.Contains(audit, want) {
			t.Fatalf("audit lacks %s:\n%s", want, audit)
		}
	}
	if strings.Contains(audit, goodToken) {
		t.Fatal("the audit log holds the caller's token")
	}
}

// TestClusterEndpointStreamsAndUpgrades: a watch's first event arrives
// before the response ends, and an upgrade (exec, port-forward) carries
// bytes both ways, half-close included.
func TestClusterEndpointStreamsAndUpgrades(t *testing.T) {
	h, agent := endpointRelay(t)
	t.Run("watch", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, h.api.URL+"/v1/clusters/prod/k8s/watch", nil)
		req.Header.Set("Authorization", "Bearer "+goodToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		line, err := bufio.NewReader(resp.Body).ReadString('\n')
		if err != nil || line != "event-1\n" {
			t.Fatalf("first event: %q, %v", line, err)
		}
		close(agent.release)
	})
	for _, proto := range []string{"SPDY/3.1", "websocket"} {
		t.Run(proto, func(t *testing.T) {
			conn, err := net.Dial("tcp", h.api.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			_, _ = io.WriteString(conn, "POST /v1/clusters/prod/k8s/api/v1/namespaces/default/pods/web/exec?stdin=true HTTP/1.1\r\nHost: r\r\n"+
				"Connection: Upgrade\r\nUpgrade: "+proto+"\r\nAuthorization: Bearer "+goodToken+"\r\n\r\n")
			br := bufio.NewReader(conn)
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("upgrade: %v %v", resp, err)
			}
			msg := strings.Repeat("stdin bytes ", 10000)
			go func() { _, _ = io.WriteString(conn, msg); _ = conn.(*net.TCPConn).CloseWrite() }()
			echoed, err := io.ReadAll(br)
			if err != nil || string(echoed) != msg {
				t.Fatalf("echo through the upgrade: %d bytes of %d, %v", len(echoed), len(msg), err)
			}
		})
	}
	if a := h.waitAudit(`"status":101,"bytesIn":120000,"bytesOut":120000`); !strings.Contains(a, `"status":101,"bytesIn":120000,"bytesOut":120000`) {
		t.Fatalf("no audit line counting the upgraded bytes:\n%s", a)
	}
}

// TestClusterEndpointRefusesAnotherClustersAgent: when the relay reaches an
// agent whose certificate names another cluster (a routing fault, as the
// simulator's planted bug makes), it refuses to send the request.
func TestClusterEndpointRefusesAnotherClustersAgent(t *testing.T) {
	h := newRelayWith(t, func(c *relay.ServerConfig) { c.ClusterEndpoint = &relay.ClusterEndpointConfig{} })
	h.create(t, "prod")
	staging := tunneltest.Join(t, h.reg, h.create(t, "staging"))
	foreign, _ := tunneltest.ServerCert(t, "prod") // not from the relay's cluster CA
	for _, tc := range []struct {
		name string
		cert tls.Certificate
		msg  string
	}{
		{"staging's credential behind prod's session", staging, "reached the agent of cluster staging, not prod"},
		{"a certificate from another CA", foreign, "not from the relay's cluster CA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h.router.CloseCluster("prod")
			agent := startAgent(t, h, "prod", tc.cert)
			resp, body := h.get(t, "/v1/clusters/prod/k8s/api/v1/secrets", goodToken, nil)
			st, _ := kstatus.Decode([]byte(body))
			if resp.StatusCode != http.StatusBadGateway || !strings.Contains(st.Message, tc.msg) {
				t.Fatalf("got %d %s, want 502 mentioning %q", resp.StatusCode, body, tc.msg)
			}
			if got := agent.requests(); len(got) != 0 {
				t.Fatalf("the wrong agent got %+v", got)
			}
		})
	}
}

// TestClusterEndpointKeepsTokensApart: a pooled connection carries only the
// token that opened it, even for the same user (a refreshed token).
func TestClusterEndpointKeepsTokensApart(t *testing.T) {
	h, agent := endpointRelay(t)
	for _, tok := range []string{goodToken, refreshedToken, goodToken, refreshedToken} {
		if resp, body := h.get(t, "/v1/clusters/prod/k8s/api", tok, nil); resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
	}
	byStream := map[string]map[string]bool{}
	for _, r := range agent.requests() {
		if byStream[r.stream] == nil {
			byStream[r.stream] = map[string]bool{}
		}
		byStream[r.stream][r.auth] = true
	}
	if len(byStream) != 2 {
		t.Fatalf("%d streams for two tokens, want 2 (one each, pooled): %v", len(byStream), byStream)
	}
	for st, toks := range byStream {
		if len(toks) != 1 {
			t.Fatalf("stream %s carried %d tokens' requests", st, len(toks))
		}
	}
}

func TestClusterEndpointUnavailable(t *testing.T) {
	t.Run("switched off", func(t *testing.T) {
		h := newRelay(t)
		h.create(t, "prod")
		resp, body := h.get(t, "/v1/clusters/prod/k8s/api", goodToken, nil)
		if resp.StatusCode != 404 || !strings.Contains(body, "cluster endpoint is switched off") {
			t.Fatalf("got %d %s", resp.StatusCode, body)
		}
	})
	t.Run("no agent connected", func(t *testing.T) {
		h := newRelayWith(t, func(c *relay.ServerConfig) { c.ClusterEndpoint = &relay.ClusterEndpointConfig{} })
		h.create(t, "prod")
		resp, body := h.get(t, "/v1/clusters/prod/k8s/api", goodToken, nil)
		if resp.StatusCode != 503 || !strings.Contains(body, "cluster prod is not connected") {
			t.Fatalf("got %d %s", resp.StatusCode, body)
		}
	})
	t.Run("invalid configuration", func(t *testing.T) {
		_, err := relay.NewServer(relay.ServerConfig{ClusterEndpoint: &relay.ClusterEndpointConfig{IdleTimeout: -1}})
		if err == nil {
			t.Fatal("a negative IdleTimeout was accepted")
		}
	})
}

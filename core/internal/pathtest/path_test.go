package pathtest_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/tether-k8s/tether/core/agent"
	"github.com/tether-k8s/tether/core/identity"
	"github.com/tether-k8s/tether/core/impersonate"
	"github.com/tether-k8s/tether/core/policy"
	"github.com/tether-k8s/tether/core/proxy"
	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/relay"
	"github.com/tether-k8s/tether/core/relayapi"
	"github.com/tether-k8s/tether/core/tunnel"
)

const callerToken = "caller-token-0123456789abcdef"

type authnFunc func(string) (identity.Result, error)

func (f authnFunc) AuthenticateToken(_ context.Context, t string) (identity.Result, error) {
	return f(t)
}

const bobToken = "bob-token-0123456789abcdef"

var callers = authnFunc(func(t string) (identity.Result, error) {
	switch t {
	case callerToken:
		return identity.Result{Identity: identity.Identity{User: "alice", Groups: []string{"dev"}}}, nil
	case bobToken:
		return identity.Result{Identity: identity.Identity{User: "bob", Groups: []string{"dev"}}}, nil
	case relayAudToken:
		return identity.Result{Identity: identity.Identity{User: "alice", Groups: []string{"dev"}}, Audiences: []string{relayapi.DefaultRelayAudience}}, nil
	case prodAudToken:
		return identity.Result{Identity: identity.Identity{User: "alice", Groups: []string{"dev"}}, Audiences: []string{relayapi.ClusterAudience("prod")}}, nil
	case stagingAudToken:
		return identity.Result{Identity: identity.Identity{User: "alice", Groups: []string{"dev"}}, Audiences: []string{relayapi.ClusterAudience("staging")}}, nil
	}
	return identity.Result{}, errors.New("unknown token")
})

// path is the whole data path in one process: a stand-in API server, an
// agent for cluster "prod", a relay, and a proxy.
type path struct {
	apiserver *httptest.Server
	proxy     *proxy.Proxy
	client    *http.Client
	reg       *registry.Registry
	router    *relay.Router
	agent     *agent.Agent
	agentDir  string
	agentCfg  agent.Config
	// agentRan receives what the agent's Run returned.
	agentRan chan error
	// token is the caller's token the proxy presents; tests may change it.
	token atomic.Value
	// clusterToken, when not empty, is the token the proxy presents to the
	// agent (token then opens the tunnels at the relay only).
	clusterToken atomic.Value
	relayURL     string
	relayCA      *x509.CertPool
}

// pathOption adjusts the relay's registry or the agent before they start:
// it is called once with the registry's configuration (agent nil), then
// once with the agent's.
type pathOption func(*registry.Config, *agent.Config)

func withAgent(f func(*agent.Config)) pathOption {
	return func(_ *registry.Config, c *agent.Config) {
		if c != nil {
			f(c)
		}
	}
}

func withRegistry(f func(*registry.Config)) pathOption {
	return func(r *registry.Config, c *agent.Config) {
		if c == nil {
			f(r)
		}
	}
}

func startPath(t *testing.T, cluster string, opts ...pathOption) *path {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	p := &path{}

	// The API server echoes the identity it was asked to impersonate.
	p.apiserver = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "" {
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer conn.Close()
			_, _ = io.WriteString(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n")
			_ = brw.Flush()
			_, _ = io.Copy(conn, brw) // echo
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{
			"user": r.Header.Get("Impersonate-User"), "groups": r.Header.Values("Impersonate-Group"),
			"auth": r.Header.Get("Authorization"), "path": r.URL.Path,
		})
	}))
	t.Cleanup(p.apiserver.Close)

	// The clusters, then the relay as tether-relay serve assembles it
	// (relay.Start), with a stand-in authenticator.
	rcfg := registry.Config{Path: filepath.Join(t.TempDir(), "relay.db")}
	for _, o := range opts {
		o(&rcfg, nil)
	}
	reg, err := registry.Open(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	token, err := reg.CreateCluster("prod")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.CreateCluster("staging"); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"prod", "staging"} {
		if _, err := reg.UpdatePolicy(id, func(p policy.Policy) (policy.Policy, error) {
			return p.Add(policy.Policy{Groups: []string{"dev"}}), nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := reg.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := relay.Start(ctx, relay.Options{Registry: rcfg, Authenticator: callers, Hostnames: []string{"127.0.0.1"},
		APIAddr: "127.0.0.1:0", AgentAddr: "127.0.0.1:0", RelayID: "relay-test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	p.reg, p.router = r.Registry(), r.Router()
	apiURL := "https://" + r.APIAddr().String()
	relayCA := x509.NewCertPool()
	relayCA.AddCert(p.reg.CACertificate())

	// The agent joins "prod" and forwards with impersonation.
	upstream, _ := url.Parse(p.apiserver.URL)
	p.agentDir = t.TempDir()
	acfg := agent.Config{Cluster: "prod", Name: "agent-0", RelayAPI: apiURL, RelayAgentAddr: r.AgentAddr().String(),
		RelayCA: relayCA, CredentialDir: p.agentDir, JoinToken: token,
		Proxy: func(*http.Request) (*url.URL, error) { return nil, nil },
		Forward: impersonate.Config{Upstream: upstream, Transport: p.apiserver.Client().Transport, Authenticator: callers,
			Credential: func(context.Context) (string, error) { return "agent-sa-token", nil }}}
	for _, o := range opts {
		o(&rcfg, &acfg)
	}
	a, err := agent.New(ctx, acfg)
	if err != nil {
		t.Fatal(err)
	}
	p.agent, p.agentCfg = a, acfg
	p.agentRan = make(chan error, 1)
	ran := make(chan error, 1)
	go func() { err := a.Run(ctx); ran <- err; p.agentRan <- err }()
	t.Cleanup(func() { cancel(); <-ran })
	deadline := time.Now().Add(10 * time.Second)
	for !a.Ready() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !a.Ready() {
		t.Fatal("the agent did not connect")
	}

	// The proxy for the requested cluster.
	p.token.Store(callerToken)
	p.clusterToken.Store("")
	p.relayURL, p.relayCA = apiURL, relayCA
	p.proxy, err = proxy.New(ctx, proxy.Config{RelayURL: apiURL, RelayCA: relayCA, Cluster: cluster,
		Token: func() (string, error) { return p.token.Load().(string), nil },
		ClusterToken: func() (string, error) {
			if ct := p.clusterToken.Load().(string); ct != "" {
				return ct, nil
			}
			return p.token.Load().(string), nil
		}, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.proxy.Serve(ctx) }()
	kc, err := clientcmd.NewDefaultClientConfig(*p.proxy.Kubeconfig("tether-prod"), nil).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	tr, err := rest.TransportFor(kc)
	if err != nil {
		t.Fatal(err)
	}
	p.client = &http.Client{Transport: tr, Timeout: 10 * time.Second}
	return p
}

func (p *path) get(t *testing.T, path string, hdr ...string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("GET", "https://"+p.proxy.Addr()+path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := p.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	b, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(b, &body)
	return resp.StatusCode, body
}

func TestRequestCrossesTheWholePath(t *testing.T) {
	p := startPath(t, "prod")
	for range 3 { // several requests, over kept-alive tunnels
		code, body := p.get(t, "/api/v1/namespaces/default/pods")
		if code != 200 || body["user"] != "alice" || body["auth"] != "Bearer agent-sa-token" || body["path"] != "/api/v1/namespaces/default/pods" {
			t.Fatalf("through the path: %d %v", code, body)
		}
	}
	code, body := p.get(t, "/api/v1/pods", "Impersonate-User", "system:admin")
	if code != 403 || !strings.Contains(body["message"].(string), "--as") {
		t.Fatalf("kubectl --as through the proxy: %d %v, want 403", code, body)
	}
}

func TestProxyRefusesForeignCallers(t *testing.T) {
	p := startPath(t, "prod")
	// Without the kubeconfig's client certificate the TLS handshake fails.
	plain := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, Timeout: 5 * time.Second}
	if resp, err := plain.Get("https://" + p.proxy.Addr() + "/api"); err == nil {
		resp.Body.Close()
		t.Fatalf("a caller without the run's client certificate got %s", resp.Status)
	}
	if code, _ := p.get(t, "/api", "Origin", "https://evil.example"); code != 403 {
		t.Fatalf("browser Origin: %d, want 403", code)
	}
	req, _ := http.NewRequest("GET", "https://"+p.proxy.Addr()+"/api", nil)
	req.Host = "evil.example:47011" // DNS rebinding
	resp, err := p.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Fatalf("foreign Host: %d, want 403", resp.StatusCode)
	}
}

func TestProxyForAnUnconnectedClusterSaysSo(t *testing.T) {
	p := startPath(t, "staging") // registered, but no agent of it ever connected
	code, body := p.get(t, "/api/v1/pods")
	msg, _ := body["message"].(string)
	if code != 503 || !strings.Contains(msg, "cluster staging is not connected") {
		t.Fatalf("unconnected cluster: %d %q, want 503 saying it is not connected", code, msg)
	}
}

func TestUpgradeCrossesTheWholePath(t *testing.T) {
	startPath(t, "prod").execEcho(t)
}

// execEcho upgrades an exec request through the path (the stand-in API
// server echoes) and checks bytes go both ways.
func (p *path) execEcho(t *testing.T) {
	t.Helper()
	conn, br := openExec(t, p.proxy.Addr(), p.tlsConfig(t), 10*time.Second)
	for i := range 3 {
		msg := strings.Repeat(string(rune('a'+i)), 1000)
		if _, err := io.WriteString(conn, msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(br, got); err != nil || string(got) != msg {
			t.Fatalf("echo %d over the upgraded path: %v", i, err)
		}
	}
}

// openExec starts an exec (SPDY upgrade) of cat through the proxy at addr,
// with the proxy's client TLS cfg, and returns the upgraded connection,
// closed when the test ends, with its reader; the connection's deadline is
// within from now.
func openExec(t *testing.T, addr string, cfg *tls.Config, within time.Duration) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(within))
	_, _ = io.WriteString(conn, "POST /api/v1/namespaces/default/pods/p/exec?command=cat HTTP/1.1\r\nHost: 127.0.0.1\r\n"+
		"Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade through the path: %v %v", resp, err)
	}
	return conn, br
}

// tlsConfig is the client side of the proxy's kubeconfig, for raw requests.
func (p *path) tlsConfig(t *testing.T) *tls.Config {
	t.Helper()
	kc, err := clientcmd.NewDefaultClientConfig(*p.proxy.Kubeconfig("tether-prod"), nil).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := rest.TLSConfigFor(kc)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestAgentThroughAnHTTPSProxy: the agent reaches the relay through an
// egress proxy with CONNECT, sending the proxy's credentials.
// egressProxy is an HTTP proxy that allows CONNECT, with credentials u:p,
// only to targets allow accepts; it counts the tunnels it opened.
func egressProxy(t *testing.T, allow func(target string) bool) (*url.URL, *atomic.Int32) {
	t.Helper()
	var connects atomic.Int32
	egress := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect || r.Header.Get("Proxy-Authorization") != "Basic dTpw" {
			http.Error(w, "CONNECT with credentials only", http.StatusProxyAuthRequired)
			return
		}
		if !allow(r.Host) {
			http.Error(w, "egress to "+r.Host+" is not allowed", http.StatusForbidden)
			return
		}
		upstream, err := net.Dial("tcp", r.Host)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer upstream.Close()
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		connects.Add(1)
		_, _ = io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n\r\n")
		go func() { _, _ = io.Copy(upstream, conn) }()
		_, _ = io.Copy(conn, upstream)
	}))
	t.Cleanup(egress.Close)
	proxyURL, _ := url.Parse(egress.URL)
	proxyURL.User = url.UserPassword("u", "p")
	return proxyURL, &connects
}

func TestAgentThroughAnHTTPSProxy(t *testing.T) {
	proxyURL, connects := egressProxy(t, func(string) bool { return true })
	p := startPath(t, "prod", withAgent(func(c *agent.Config) {
		c.Proxy = func(*http.Request) (*url.URL, error) { return proxyURL, nil }
	}))
	if code, body := p.get(t, "/api/v1/pods"); code != 200 || body["user"] != "alice" {
		t.Fatalf("through the egress proxy: %d %v", code, body)
	}
	if n := connects.Load(); n < 2 {
		t.Fatalf("%d CONNECTs through the egress proxy, want one per session (2)", n)
	}
}

func TestAgentOverWebSocketWhenOnlyTheRelaysHTTPSPortIsAllowed(t *testing.T) {
	var apiHost string
	proxyURL, connects := egressProxy(t, func(target string) bool { return target == apiHost })
	p := startPath(t, "prod", withAgent(func(c *agent.Config) {
		u, _ := url.Parse(c.RelayAPI)
		apiHost = u.Host
		c.RelayWebSocketURL = "wss://" + u.Host + relayapi.AgentWebSocketPath
		c.Proxy = func(*http.Request) (*url.URL, error) { return proxyURL, nil }
	}))
	if code, body := p.get(t, "/api/v1/pods"); code != 200 || body["user"] != "alice" {
		t.Fatalf("agent over WebSocket: %d %v", code, body)
	}
	p.execEcho(t)
	// Two sessions, each a CONNECT to the API port: the agent endpoint
	// (refused by this proxy) was never needed.
	if n := connects.Load(); n < 2 {
		t.Fatalf("%d CONNECTs through the egress proxy, want one per session (2)", n)
	}
}

// serial returns the serial of the certificate the agent keeps in dir.
func serial(t *testing.T, dir string) string {
	t.Helper()
	certPEM, _, err := agent.FileStore{Dir: dir}.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(certPEM)
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(c.SerialNumber.Bytes()) // as the registry lists it
}

func TestAgentRenewsItsCredentialAndUsesTheNewOne(t *testing.T) {
	// The agent renews 2 s after joining. The renewal replaces the old
	// credential (accepted for registry.Config.RenewalGrace more): an
	// agent that kept using it would be refused (ErrRevoked) when it
	// reconnects after that.
	p := startPath(t, "prod",
		withRegistry(func(c *registry.Config) { c.CredentialTTL = 10 * time.Minute; c.MaxCredentials = 1 }),
		withAgent(func(c *agent.Config) { c.RenewBefore = 10*time.Minute - 2*time.Second; c.RenewRetry = time.Hour }))
	joined := p.reg
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := joined.Cluster("prod")
		if err != nil {
			t.Fatal(err)
		}
		// One current credential, issued by a renewal, and stored.
		var current []registry.CredentialInfo
		for _, ci := range c.Credentials {
			if ci.Current() {
				current = append(current, ci)
			}
		}
		if len(current) == 1 && current[0].RenewedFrom != "" && serial(t, p.agentDir) == current[0].Serial {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no renewal: registry %+v, stored %s", c.Credentials, serial(t, p.agentDir))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := p.agent.CredentialNotAfter(); time.Until(got) < 9*time.Minute {
		t.Fatalf("credential in use expires %s, want the renewed one (10m)", got)
	}
	// The relay drops the sessions; the agent comes back with the new
	// credential, and callers get through.
	if n := p.router.CloseCluster("prod"); n == 0 {
		t.Fatal("no session to close")
	}
	deadline = time.Now().Add(10 * time.Second)
	for p.router.Sessions("prod") == 0 {
		select {
		case err := <-p.agentRan:
			t.Fatalf("the agent stopped after renewal: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the agent did not reconnect with its renewed credential")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, body := p.get(t, "/api/v1/pods"); code != 200 || body["user"] != "alice" {
		t.Fatalf("after renewal: %d %v", code, body)
	}
}

// racyStore says it holds no credential on its first Load, as the Secret
// looked to a second replica that started with the first.
type racyStore struct {
	agent.CredentialStore
	loads int
}

func (r *racyStore) Load(ctx context.Context) ([]byte, []byte, error) {
	if r.loads++; r.loads == 1 {
		return nil, nil, agent.ErrNoCredential
	}
	return r.CredentialStore.Load(ctx)
}

func TestAgentThatLostTheJoinRaceUsesTheWinnersCredential(t *testing.T) {
	p := startPath(t, "prod")
	cfg := p.agentCfg
	cfg.CredentialDir, cfg.Store = "", &racyStore{CredentialStore: agent.FileStore{Dir: p.agentDir}}
	if _, err := agent.New(t.Context(), cfg); err != nil {
		t.Fatalf("a replica whose join lost the race: %v", err)
	}
	cfg.Store = &racyStore{CredentialStore: agent.FileStore{Dir: t.TempDir()}} // nothing stored by anyone
	if _, err := agent.New(t.Context(), cfg); err == nil || !strings.Contains(err.Error(), "join refused") {
		t.Fatalf("a spent token and no stored credential: %v, want the join's refusal", err)
	}
}

// TestATunnelCarriesOnlyItsOwnUsersRequests: the relay admitted alice's
// tunnel; bob's token on it is refused by the agent, so nobody rides a
// tunnel past the relay's access policy.
func TestATunnelCarriesOnlyItsOwnUsersRequests(t *testing.T) {
	p := startPath(t, "prod")
	u, _ := url.Parse(p.relayURL)
	raw, err := tls.Dial("tcp", u.Host, &tls.Config{RootCAs: p.relayCA, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
	conn, err := relayapi.DialTunnel(raw, u.Host, "prod", callerToken) // admitted as alice
	if err != nil {
		t.Fatal(err)
	}
	agentTLS := tls.Client(conn, &tls.Config{RootCAs: p.relayCA, ServerName: "prod", InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}) // the agent's name is checked by the proxy; here only the refusal matters
	br := bufio.NewReader(agentTLS)
	for _, tc := range []struct {
		token string
		code  int
	}{{callerToken, 200}, {bobToken, 403}, {callerToken, 200}} {
		_, _ = io.WriteString(agentTLS, "GET /api/v1/pods HTTP/1.1\r\nHost: cluster.tether\r\nAuthorization: Bearer "+tc.token+"\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code {
			t.Fatalf("token %s… on alice's tunnel: %d %s, want %d", tc.token[:4], resp.StatusCode, body, tc.code)
		}
		if tc.code == 403 && !strings.Contains(string(body), "opened for alice") {
			t.Fatalf("refusal: %s", body)
		}
	}
	// Through the proxy, a new token gets a tunnel of its own: bob gets in.
	p.token.Store(bobToken)
	if code, body := p.get(t, "/api/v1/pods"); code != 200 || body["user"] != "bob" {
		t.Fatalf("bob through the proxy after alice: %d %v", code, body)
	}
}

func TestOversizedTokenIsRefusedWithItsSize(t *testing.T) {
	p := startPath(t, "prod")
	for _, n := range []int{proxy.MaxTokenBytes + 1, 1 << 20} {
		p.token.Store(strings.Repeat("a", n))
		code, body := p.get(t, "/api/v1/pods")
		msg, _ := body["message"].(string)
		if code != http.StatusUnauthorized || !strings.Contains(msg, "bytes") || !strings.Contains(msg, "smaller token") {
			t.Fatalf("a %d-byte token: %d %q, want 401 saying the token is too large", n, code, msg)
		}
		if strings.Contains(msg, "aaaaaaaa") {
			t.Fatalf("the refusal contains the token: %q", msg)
		}
	}
	// Right at the cap, the token is passed on (and refused by the relay's
	// authentication, which knows no such token).
	p.token.Store(strings.Repeat("a", proxy.MaxTokenBytes))
	if code, body := p.get(t, "/api/v1/pods"); code == http.StatusUnauthorized && strings.Contains(body["message"].(string), "smaller token") {
		t.Fatalf("a token at the cap was refused by the proxy: %v", body)
	}
}

// TestReplicasSharingACredentialRenewItOnce: two agents share one stored
// credential (the chart's Secret). The first to renew stores the new one;
// the other finds it there and uses it rather than renew with a key of its
// own, which the relay takes for theft (and revokes both).
func TestReplicasSharingACredentialRenewItOnce(t *testing.T) {
	p := startPath(t, "prod",
		withRegistry(func(c *registry.Config) { c.CredentialTTL = 10 * time.Minute }),
		withAgent(func(c *agent.Config) { c.RenewBefore = 10*time.Minute - 2*time.Second; c.RenewRetry = time.Hour }))
	cfg := p.agentCfg
	cfg.RenewBefore = 10*time.Minute - 8*time.Second
	b, err := agent.New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- b.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-ran })
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := p.reg.Cluster("prod")
		if err != nil {
			t.Fatal(err)
		}
		var current []registry.CredentialInfo
		for _, ci := range c.Credentials {
			if ci.Current() {
				current = append(current, ci)
			}
		}
		if len(current) != 1 {
			t.Fatalf("current credentials %+v, want exactly one (a second renewal revokes the chain)", c.Credentials)
		}
		renewed := current[0].RenewedFrom != ""
		if renewed && b.CredentialNotAfter().Equal(p.agent.CredentialNotAfter()) && time.Until(b.CredentialNotAfter()) > 9*time.Minute+50*time.Second {
			break
		}
		select {
		case err := <-ran:
			t.Fatalf("the second replica stopped: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the second replica did not take up the renewed credential: registry %+v, replica A's expires %s, B's %s", c.Credentials, p.agent.CredentialNotAfter(), b.CredentialNotAfter())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Past B's own renewal time, still one chain, nothing revoked.
	time.Sleep(9 * time.Second)
	c, _ := p.reg.Cluster("prod")
	for _, ci := range c.Credentials {
		if ci.Current() && ci.RenewedFrom == "" {
			t.Fatalf("after both replicas' renewal times: %+v", c.Credentials)
		}
	}
	if len(c.Credentials) == 0 {
		t.Fatal("every credential was revoked: the replicas renewed twice")
	}
	if code, body := p.get(t, "/api/v1/pods"); code != 200 {
		t.Fatalf("after the renewal: %d %v", code, body)
	}
}

// TestRotatedAgentRejoinsWithTheNewToken: after `tether-relay cluster
// rotate`, the agent's stored credential is revoked; an agent given the
// rotate's new join token (a restarted pod with the new Secret) joins
// again with it and serves, instead of failing on the stored credential.
// An agent given only a spent token says what to do.
func TestRotatedAgentRejoinsWithTheNewToken(t *testing.T) {
	p := startPath(t, "prod")
	newToken, err := p.reg.Rotate("prod")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.agentRan:
		if !errors.Is(err, tunnel.ErrRevoked) {
			t.Fatalf("the agent's Run after the rotate: %v, want ErrRevoked", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the agent kept running on a revoked credential")
	}

	// Restarted with the spent token: refused, saying which token to give.
	spent := p.agentCfg
	b, err := agent.New(t.Context(), spent)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "latest `tether-relay cluster rotate`") {
		t.Fatalf("Run with a revoked credential and a spent token: %v", err)
	}

	// Restarted with the new token: joins again, serves.
	cfg := p.agentCfg
	cfg.JoinToken = newToken
	c, err := agent.New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	ran := make(chan error, 1)
	go func() { ran <- c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-ran })
	deadline := time.Now().Add(15 * time.Second)
	for !c.Ready() {
		select {
		case err := <-ran:
			t.Fatalf("the agent given the new token stopped: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the agent given the new token did not connect")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, body := p.get(t, "/api/v1/pods"); code != http.StatusOK {
		t.Fatalf("a request after the rejoin: %d %v", code, body)
	}
}

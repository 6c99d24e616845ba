package relay_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tether-k8s/tether/core/identity"
	"github.com/tether-k8s/tether/core/policy"
	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/relay"
	"github.com/tether-k8s/tether/core/relayapi"
	"github.com/tether-k8s/tether/core/tunnel"
	"github.com/tether-k8s/tether/core/tunnel/tunneltest"
)

const (
	goodToken     = "caller-token-0123456789"
	outsiderToken = "outsider-token-0123456789"
	// audToken is alice's token for audience tether:strict only.
	audToken = "aud-token-0123456789"
	// adminToken is root's, in group relay-admins, for the admin audience.
	adminToken = "admin-token-0123456789"
	// rootCallerToken is root's too, for the callers' audience: what every
	// agent root reached with kubectl has seen.
	rootCallerToken = "root-caller-token-0123456789"
	// aliceAdminAudToken is alice's for the admin audience: it must never
	// open a tunnel, or the agent at its end could replay it at the admin
	// API.
	aliceAdminAudToken = "alice-admin-aud-token-0123456789"
	// shortToken is alice's, expiring a second after it is authenticated.
	shortToken = "short-token-0123456789"
	// refreshedToken is another valid token of alice's (a refresh).
	refreshedToken = "caller-token-refreshed-0123456789"
	// bobToken is bob's, in group dev like alice.
	bobToken = "bob-token-0123456789"
	// clusterAudToken is alice's for cluster prod's audience: prod's agent
	// saw it, so the relay must refuse it, or that agent could open
	// tunnels as alice to every other cluster she may reach.
	clusterAudToken = "cluster-aud-token-0123456789"
	// sharedAudToken is alice's for the relay's audience and prod's at once.
	sharedAudToken = "shared-aud-token-0123456789"
)

// expiredJWT is a JWT whose exp (2026-01-01) has passed; tokenAuthn refuses
// it as every other unknown token.
var expiredJWT = "eyJhbGciOiJSUzI1NiJ9." + base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"alice","exp":1767225600}`)) + ".c2ln"

type tokenAuthn struct{}

func (tokenAuthn) AuthenticateToken(_ context.Context, tok string) (identity.Result, error) {
	switch tok {
	case goodToken, refreshedToken:
		return identity.Result{Identity: identity.Identity{User: "alice", Groups: []string{"dev"}}, Audiences: []string{"tether"}}, nil
	case bobToken:
		return identity.Result{Identity: identity.Identity{User: "bob", Groups: []string{"dev"}}, Audiences: []string{"tether"}}, nil
	case adminToken:
		return identity.Result{Identity: identity.Identity{User: "root", Groups: []string{"ops", "relay-admins"}}, Audiences: []string{"tether-admin"}}, nil
	case shortToken:
		return identity.Result{Identity: identity.Identity{User: "alice", Groups: []string{"dev"}}, Audiences: []string{"tether"}, Expires: time.Now().Add(time.Second)}, nil
	case aliceAdminAudToken:
		return identity.Result{Identity: identity.Identity{User: "alice", Groups: []string{"dev"}}, Audiences: []string{"tether", "tether-admin"}}, nil
	case rootCallerToken:
		return identity.Result{Identity: identity.Identity{User: "root", Groups: []string{"ops", "relay-admins"}}, Audiences: []string{"tether"}}, nil
	case audToken:
		return identity.Result{Identity: identity.Identity{User: "alice", Groups: []string{"dev"}}, Audiences: []string{"tether:strict"}}, nil
	case clusterAudToken:
		return identity.Result{Identity: identity.Identity{User: "alice", Groups: []string{"dev"}}, Audiences: []string{"tether:cluster:prod"}}, nil
	case sharedAudToken:
		return identity.Result{Identity: identity.Identity{User: "alice", Groups: []string{"dev"}}, Audiences: []string{"tether:relay", "tether:cluster:prod"}}, nil
	case outsiderToken:
		return identity.Result{Identity: identity.Identity{User: "mallory", Groups: []string{"contractors"}}}, nil
	}
	return identity.Result{}, errors.New("oidc: token is expired")
}

// create creates a cluster that grants group dev (alice), and returns its
// join token.
func (h *relayHarness) create(t *testing.T, id string) string {
	t.Helper()
	tok, err := h.reg.CreateCluster(id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.reg.UpdatePolicy(id, func(p policy.Policy) (policy.Policy, error) {
		return p.Add(policy.Policy{Groups: []string{"dev"}}), nil
	}); err != nil {
		t.Fatal(err)
	}
	return tok
}

// createClosedAndStrict creates "closed", which grants no one, and
// "strict", which grants group dev only with a token for its own audience
// (tether:strict).
func (h *relayHarness) createClosedAndStrict(t *testing.T) {
	t.Helper()
	if _, err := h.reg.CreateCluster("closed"); err != nil {
		t.Fatal(err)
	}
	h.create(t, "strict")
	if _, err := h.reg.UpdatePolicy("strict", func(p policy.Policy) (policy.Policy, error) {
		return p.Add(policy.Policy{Audiences: []string{"tether:strict"}}), nil
	}); err != nil {
		t.Fatal(err)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

type relayHarness struct {
	prom   *prometheus.Registry
	reg    *registry.Registry
	router *relay.Router
	srv    *relay.Server
	api    *httptest.Server
	audit  *syncBuffer
}

func newRelay(t *testing.T, opts ...func(*relay.ServerConfig)) *relayHarness {
	t.Helper()
	return newRelayWith(t, func(c *relay.ServerConfig) {
		for _, o := range opts {
			o(c)
		}
	})
}

// newRelayWith is newRelay with the server's configuration adjusted by set.
func newRelayWith(t *testing.T, set func(*relay.ServerConfig)) *relayHarness {
	t.Helper()
	return newRelayRouted(t, relay.RouterConfig{}, set)
}

// newRelayRouted is newRelayWith with a router configured by rcfg.
func newRelayRouted(t *testing.T, rcfg relay.RouterConfig, set func(*relay.ServerConfig)) *relayHarness {
	t.Helper()
	reg, err := registry.Open(registry.Config{Path: filepath.Join(t.TempDir(), "reg.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	router := newRouter(t, rcfg)
	t.Cleanup(func() { _ = router.Close() })
	h := &relayHarness{reg: reg, router: router, audit: &syncBuffer{}, prom: prometheus.NewRegistry()}
	metrics, err := relay.NewMetrics(h.prom, router, reg)
	if err != nil {
		t.Fatal(err)
	}
	cfg := relay.ServerConfig{Registry: reg, Router: router, Authenticator: tokenAuthn{},
		Audit: slog.New(slog.NewJSONHandler(h.audit, nil)), Metrics: metrics}
	set(&cfg)
	h.srv, err = relay.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.srv.Close() })
	h.api = httptest.NewServer(h.srv.Handler())
	t.Cleanup(h.api.Close)
	return h
}

func (h *relayHarness) dialTunnel(t *testing.T, cluster, token string) (net.Conn, error) {
	t.Helper()
	conn, err := net.Dial("tcp", h.api.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	return relayapi.DialTunnel(conn, "relay.test", cluster, token)
}

func TestTunnelSplicesToTheClustersAgent(t *testing.T) {
	h := newRelay(t)
	h.create(t, "prod")
	rs, as := tunneltest.Pair(t, tunnel.Hello{Cluster: "prod", Agent: "a"})
	tunneltest.Serve(t, as, func(st *tunnel.Stream) {
		_, _ = io.Copy(st, st) // echo until the caller half-closes
	})
	if err := h.router.Add(rs, nil); err != nil {
		t.Fatal(err)
	}
	conn, err := h.dialTunnel(t, "prod", goodToken)
	if err != nil {
		t.Fatal(err)
	}
	msg := bytes.Repeat([]byte("kubectl bytes "), 10000)
	go func() { _, _ = conn.Write(msg); _ = conn.(*net.TCPConn).CloseWrite() }()
	got, err := io.ReadAll(conn)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo through the tunnel: %d bytes, %v", len(got), err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(h.audit.String(), `"bytesIn":140000`) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if a := h.audit.String(); !strings.Contains(a, `"user":"alice"`) || !strings.Contains(a, `"bytesOut":140000`) || strings.Contains(a, goodToken) {
		t.Fatalf("audit line: %s", a)
	}
	want := `
# HELP tether_relay_agent_sessions Agent sessions held now.
# TYPE tether_relay_agent_sessions gauge
tether_relay_agent_sessions 1
# HELP tether_relay_tunnel_bytes_total Bytes spliced through tunnels, by direction (in: caller to agent).
# TYPE tether_relay_tunnel_bytes_total counter
tether_relay_tunnel_bytes_total{direction="in"} 140000
tether_relay_tunnel_bytes_total{direction="out"} 140000
# HELP tether_relay_tunnels_total Callers' tunnel requests, by result.
# TYPE tether_relay_tunnels_total counter
tether_relay_tunnels_total{result="opened"} 1
`
	if err := testutil.GatherAndCompare(h.prom, strings.NewReader(want), "tether_relay_agent_sessions", "tether_relay_tunnel_bytes_total", "tether_relay_tunnels_total"); err != nil {
		t.Fatal(err)
	}
}

func TestTunnelRefusals(t *testing.T) {
	h := newRelay(t)
	h.create(t, "prod")
	h.createClosedAndStrict(t)
	tests := []struct {
		name, cluster, token string
		code                 int
		msg                  string
	}{
		{"no token", "prod", "", 401, "bearer token is required"},
		{"bad token", "prod", "stale", 401, "token is expired"},
		{"an expired JWT: the caller is told to log in again", "prod", expiredJWT, 401, "it expired at 2026-01-01T00:00:00Z: log in again (tether-proxy login), or fetch a fresh token"},
		{"unknown cluster", "staging", goodToken, 404, "cluster staging: unknown cluster (tether-proxy clusters lists the clusters you may reach)"},
		{"cluster ID %2e%2e", "%2e%2e", goodToken, 400, "invalid cluster ID"},
		{"cluster ID in upper case", "PROD", goodToken, 400, "invalid cluster ID"},
		{"a caller the cluster does not grant", "prod", outsiderToken, 403, "mallory may not reach cluster prod"},
		{"a cluster that grants no one", "closed", goodToken, 403, "grants access to no one"},
		{"a granted caller with a token for another cluster's audience", "strict", goodToken, 403, "token is for audience [tether], not [tether:strict]"},
		{"a token for the audience of the cluster: admitted", "strict", audToken, 503, "not connected"},
		{"a token for the admin audience (an agent would see it)", "prod", aliceAdminAudToken, 403, "is for the admin audience tether-admin"},
		{"attack: a token for a cluster's audience (that cluster's agent saw it)", "prod", clusterAudToken, 403, "tether:cluster:prod, a cluster's audience"},
		{"attack: the same token, for another cluster", "strict", clusterAudToken, 403, "a cluster's audience"},
		{"attack: a token for the relay's and a cluster's audience at once", "prod", sharedAudToken, 403, "also for tether:cluster:prod"},
		{"not connected", "prod", goodToken, 503, "not connected"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.dialTunnel(t, tc.cluster, tc.token)
			var te *relayapi.TunnelError
			if !errors.As(err, &te) || te.Status.Code != tc.code || !strings.Contains(te.Status.Message, tc.msg) {
				t.Fatalf("got %v, want Status %d mentioning %q", err, tc.code, tc.msg)
			}
		})
	}
	t.Run("metrics count each refusal", func(t *testing.T) {
		want := `
# HELP tether_relay_tunnels_total Callers' tunnel requests, by result.
# TYPE tether_relay_tunnels_total counter
tether_relay_tunnels_total{result="bad_request"} 2
tether_relay_tunnels_total{result="forbidden"} 7
tether_relay_tunnels_total{result="not_connected"} 2
tether_relay_tunnels_total{result="unauthorized"} 3
tether_relay_tunnels_total{result="unknown_cluster"} 1
# HELP tether_relay_shared_audience_tokens_total Callers' tokens refused because they were for the relay's audience and a cluster's at once (an issuer configured to share audiences).
# TYPE tether_relay_shared_audience_tokens_total counter
tether_relay_shared_audience_tokens_total 1
`
		if err := testutil.GatherAndCompare(h.prom, strings.NewReader(want), "tether_relay_tunnels_total", "tether_relay_shared_audience_tokens_total"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("cluster details refused to whom the cluster does not grant", func(t *testing.T) {
		req, _ := http.NewRequest("GET", h.api.URL+"/v1/clusters/prod", nil)
		req.Header.Set("Authorization", "Bearer "+outsiderToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("status %d, want 403", resp.StatusCode)
		}
	})
	t.Run("no upgrade", func(t *testing.T) {
		resp, err := http.Get(h.api.URL + "/v1/clusters/prod/tunnel")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUpgradeRequired {
			t.Fatalf("status %d, want 426", resp.StatusCode)
		}
	})
}

func TestTunnelRefusesBytesSentBeforeThe101(t *testing.T) {
	h := newRelay(t)
	h.create(t, "prod")
	rs, as := tunneltest.Pair(t, tunnel.Hello{Cluster: "prod", Agent: "a"})
	got := make(chan string, 1)
	tunneltest.Serve(t, as, func(st *tunnel.Stream) { b, _ := io.ReadAll(st); got <- string(b) })
	if err := h.router.Add(rs, nil); err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", h.api.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = io.WriteString(conn, "GET /v1/clusters/prod/tunnel HTTP/1.1\r\nHost: r\r\nConnection: Upgrade\r\nUpgrade: "+relayapi.TunnelProtocol+
		"\r\nAuthorization: Bearer "+goodToken+"\r\n\r\nGET /api/v1/secrets HTTP/1.1\r\n\r\n")
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	reply, _ := io.ReadAll(conn)
	if strings.Contains(string(reply), "101") {
		t.Fatalf("the relay opened a tunnel for a caller that pipelined bytes: %q", reply)
	}
	select {
	case b := <-got:
		if b != "" {
			t.Fatalf("pipelined bytes reached the agent: %q", b)
		}
	case <-time.After(5 * time.Second):
	}
}

func csrDER(t *testing.T) ([]byte, *ecdsa.PrivateKey) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

func postJoin(t *testing.T, h *relayHarness, body any) (*http.Response, relayapi.JoinResponse) {
	t.Helper()
	b, _ := json.Marshal(body)
	resp, err := http.Post(h.api.URL+"/v1/join", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var jr relayapi.JoinResponse
	_ = json.NewDecoder(resp.Body).Decode(&jr)
	return resp, jr
}

func TestJoin(t *testing.T) {
	h := newRelay(t)
	tok, err := h.reg.CreateCluster("prod")
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := csrDER(t)
	resp, jr := postJoin(t, h, relayapi.JoinRequest{Token: tok, CSR: csr})
	if resp.StatusCode != 200 || jr.Cluster != "prod" || !strings.Contains(jr.Certificate, "BEGIN CERTIFICATE") {
		t.Fatalf("join: %d %+v", resp.StatusCode, jr)
	}
	if resp, _ := postJoin(t, h, relayapi.JoinRequest{Token: tok, CSR: csr}); resp.StatusCode != 401 {
		t.Fatalf("replayed join token: %d, want 401", resp.StatusCode)
	}
	tok2, _ := h.reg.Rotate("prod")
	if resp, _ := postJoin(t, h, relayapi.JoinRequest{Token: tok2, CSR: []byte("junk")}); resp.StatusCode != 400 {
		t.Fatalf("bad CSR: %d, want 400", resp.StatusCode)
	}
	if resp, _ := postJoin(t, h, "not an object"); resp.StatusCode != 400 {
		t.Fatalf("bad body: %d, want 400", resp.StatusCode)
	}
}

// TestServeAgents runs the agent endpoint with real mutual TLS.
func TestServeAgents(t *testing.T) {
	h := newRelay(t)
	serverCert, serverPool := tunneltest.ServerCert(t, "relay.test")
	l, err := tls.Listen("tcp", "127.0.0.1:0", h.srv.AgentTLSConfig(serverCert))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- h.srv.ServeAgents(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("ServeAgents: %v", err)
		}
	})

	credFor := func(cluster string) tls.Certificate {
		tok, err := h.reg.CreateCluster(cluster)
		if err != nil {
			tok, _ = h.reg.Rotate(cluster)
		}
		return tunneltest.Join(t, h.reg, tok)
	}
	connect := func(cert *tls.Certificate, claim string) (*tunnel.AgentSession, error) {
		cfg := &tls.Config{RootCAs: serverPool, ServerName: "relay.test", NextProtos: []string{tunnel.SessionALPN}, MinVersion: tls.VersionTLS13}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		conn, err := tls.Dial("tcp", l.Addr().String(), cfg)
		if err != nil {
			return nil, err
		}
		s, err := tunnel.ConnectAgent(t.Context(), conn, tunnel.AgentConfig{Hello: tunnel.Hello{Cluster: claim, Agent: "a"}})
		if s != nil {
			t.Cleanup(func() { _ = s.Close() })
		}
		return s, err
	}

	renew := func(cert tls.Certificate) (tunnel.Renewed, error) {
		conn, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{RootCAs: serverPool, ServerName: "relay.test",
			NextProtos: []string{tunnel.RenewALPN}, MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}})
		if err != nil {
			return tunnel.Renewed{}, err
		}
		defer conn.Close()
		csr, _ := csrDER(t)
		if err := tunnel.WriteFrame(conn, &tunnel.Renew{CSR: csr}); err != nil {
			return tunnel.Renewed{}, err
		}
		var res tunnel.Renewed
		return res, tunnel.ReadFrame(conn, &res)
	}

	prod := credFor("prod")
	credFor("staging")
	if res, err := renew(prod); err != nil || !res.OK || !strings.Contains(res.Certificate, "BEGIN CERTIFICATE") {
		t.Fatalf("renewing a current credential: %+v, %v", res, err)
	}
	if _, err := connect(&prod, "prod"); err != nil {
		t.Fatalf("agent with a prod credential: %v", err)
	}
	waitRouted(t, h.router, "prod", 1)

	var ref *tunnel.RefusedError
	if _, err := connect(&prod, "staging"); !errors.As(err, &ref) || ref.Reason != tunnel.ReasonClusterMismatch {
		t.Fatalf("prod credential claiming staging: %v, want ClusterMismatch", err)
	}
	if h.router.Sessions("staging") != 0 {
		t.Fatal("a prod credential got a staging session")
	}
	if _, err := connect(nil, "prod"); err == nil {
		t.Fatal("an agent without a certificate got a session")
	}
	if _, err := h.reg.Rotate("prod"); err != nil {
		t.Fatal(err)
	}
	if _, err := connect(&prod, "prod"); !errors.As(err, &ref) || ref.Reason != tunnel.ReasonRevoked {
		t.Fatalf("rotated credential: %v, want Revoked", err)
	}
	if res, err := renew(prod); err != nil || res.OK || res.Reason != tunnel.ReasonRevoked {
		t.Fatalf("renewing a rotated credential: %+v, %v; want Revoked", res, err)
	}

	// A draining relay sends every agent elsewhere, even a valid one.
	staging := credFor("staging")
	done, dcancel := context.WithCancel(t.Context())
	dcancel()
	h.srv.Drain(done)
	if _, err := connect(&staging, "staging"); !errors.As(err, &ref) || ref.Reason != tunnel.ReasonDraining {
		t.Fatalf("agent connecting to a draining relay: %v, want Draining", err)
	}
}

// echoRelay is a relay with cluster prod and one agent session that echoes.
func echoRelay(t *testing.T) (*relayHarness, *tunnel.AgentSession) {
	t.Helper()
	h := newRelay(t)
	h.create(t, "prod")
	rs, as := tunneltest.Pair(t, tunnel.Hello{Cluster: "prod", Agent: "a"})
	tunneltest.Serve(t, as, func(st *tunnel.Stream) { _, _ = io.Copy(st, st) })
	if err := h.router.Add(rs, nil); err != nil {
		t.Fatal(err)
	}
	return h, as
}

func TestDrainMovesAgentsAndWaitsForTunnels(t *testing.T) {
	h, as := echoRelay(t)
	echo := func(c net.Conn, msg string) {
		t.Helper()
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo %q: got %q, %v", msg, buf, err)
		}
	}
	inflight, err := h.dialTunnel(t, "prod", goodToken)
	if err != nil {
		t.Fatal(err)
	}
	echo(inflight, "before")

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	drained := make(chan time.Time, 1)
	go func() { h.srv.Drain(ctx); drained <- time.Now() }()
	select {
	case <-as.GoAwayChan():
	case <-time.After(5 * time.Second):
		t.Fatal("the agent got no GoAway")
	}
	if g := as.GoAwayNotice(); g.Reason != tunnel.ReasonDraining || g.GraceMillis <= 0 || g.GraceMillis > 10000 {
		t.Fatalf("GoAway %+v: want Draining with the drain's grace", g)
	}
	if !h.srv.Draining() {
		t.Fatal("Draining() = false while draining")
	}
	// Callers are still served: the tunnel in flight, and a new one on the
	// draining session because there is no other.
	echo(inflight, "during")
	late, err := h.dialTunnel(t, "prod", goodToken)
	if err != nil {
		t.Fatalf("a tunnel while draining with no other session: %v", err)
	}
	echo(late, "late")
	select {
	case <-drained:
		t.Fatal("Drain returned with two tunnels open")
	case <-time.After(200 * time.Millisecond):
	}
	_ = inflight.Close()
	_ = late.Close()
	closed := time.Now()
	select {
	case at := <-drained:
		if d := at.Sub(closed); d > 2*time.Second {
			t.Fatalf("Drain returned %s after the last tunnel closed", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Drain did not return after the last tunnel closed")
	}
}

func TestDrainGivesUpAtItsDeadline(t *testing.T) {
	h, _ := echoRelay(t)
	if _, err := h.dialTunnel(t, "prod", goodToken); err != nil { // a watch that never ends
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	h.srv.Drain(ctx)
	if d := time.Since(start); d < 250*time.Millisecond || d > 3*time.Second {
		t.Fatalf("Drain with an endless tunnel returned after %s, want its 300ms deadline", d)
	}
}

// TestJoinsAreRateLimited: issue 15, hole 9. The join endpoint is
// unauthenticated: a flood of made-up tokens from one client is refused
// with 429 and Retry-After before it reaches the registry.
func TestJoinsAreRateLimited(t *testing.T) {
	h := newRelay(t, func(c *relay.ServerConfig) { c.JoinLimit = registry.JoinLimitConfig{PerClient: 0.1, PerClientBurst: 3} })
	csr, _ := csrDER(t)
	var codes []int
	var retry string
	for range 6 {
		resp, _ := postJoin(t, h, relayapi.JoinRequest{Token: "tether-join.made-up", CSR: csr})
		codes = append(codes, resp.StatusCode)
		if resp.StatusCode == http.StatusTooManyRequests {
			retry = resp.Header.Get("Retry-After")
		}
	}
	want := []int{401, 401, 401, 429, 429, 429}
	if fmt.Sprint(codes) != fmt.Sprint(want) || retry == "" {
		t.Fatalf("statuses %v (Retry-After %q), want %v with a Retry-After", codes, retry, want)
	}
}

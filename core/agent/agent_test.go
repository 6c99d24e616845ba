package agent_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tether-k8s/tether/core/agent"
	"github.com/tether-k8s/tether/core/clustercert"
	"github.com/tether-k8s/tether/core/identity"
	"github.com/tether-k8s/tether/core/impersonate"
	"github.com/tether-k8s/tether/core/kstatus"
	"github.com/tether-k8s/tether/core/relayapi"
)

type nobody struct{}

func (nobody) AuthenticateToken(context.Context, string) (identity.Result, error) {
	return identity.Result{}, errors.New("no one")
}

// forward is a valid request path to nowhere: these tests never send a
// request through it.
func forward() impersonate.Config {
	u, _ := url.Parse("https://apiserver.invalid")
	return impersonate.Config{Upstream: u, Transport: &http.Transport{}, Authenticator: nobody{},
		Credential: func(context.Context) (string, error) { return "sa-token", nil }}
}

// joinRelay is a stand-in for the relay's join endpoint: it signs the CSR
// for cluster (which may differ from what the agent serves), or refuses
// with a Status when refuse is set.
type joinRelay struct {
	srv     *httptest.Server
	pool    *x509.CertPool
	cluster string
	refuse  string
	// busy is how many joins to answer 429 with Retry-After first.
	busy int
	// agentAddr is a listener standing for the relay's agent endpoint.
	agentAddr string
	mu        sync.Mutex
	joins     int
}

func newJoinRelay(t *testing.T, cluster string) *joinRelay {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test relay CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	ca, _ := x509.ParseCertificate(caDER)
	j := &joinRelay{cluster: cluster}
	j.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		j.mu.Lock()
		j.joins++
		j.mu.Unlock()
		if r.URL.Path != relayapi.JoinPath || r.Method != http.MethodPost {
			kstatus.Write(w, http.StatusNotFound, kstatus.ReasonNotFound, "no such endpoint")
			return
		}
		j.mu.Lock()
		busy := j.busy > 0
		if busy {
			j.busy--
		}
		j.mu.Unlock()
		if busy {
			w.Header().Set("Retry-After", "1")
			kstatus.Write(w, http.StatusTooManyRequests, kstatus.ReasonTooManyRequests, "too many join attempts from this address: retry in 1 s")
			return
		}
		if j.refuse != "" {
			kstatus.Write(w, http.StatusUnauthorized, kstatus.ReasonUnauthorized, j.refuse)
			return
		}
		var req relayapi.JoinRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			kstatus.Write(w, http.StatusBadRequest, kstatus.ReasonBadRequest, err.Error())
			return
		}
		csr, err := x509.ParseCertificateRequest(req.CSR)
		if err != nil {
			kstatus.Write(w, http.StatusBadRequest, kstatus.ReasonBadRequest, err.Error())
			return
		}
		u, _ := clustercert.URI(j.cluster)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: j.cluster}, URIs: []*url.URL{u},
			NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, csr.PublicKey, caKey)
		if err != nil {
			kstatus.Write(w, http.StatusInternalServerError, kstatus.ReasonInternalError, err.Error())
			return
		}
		_ = json.NewEncoder(w).Encode(relayapi.JoinResponse{Cluster: j.cluster,
			Certificate: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
			CA:          string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})), NotAfter: tmpl.NotAfter})
	}))
	t.Cleanup(j.srv.Close)
	// The agent endpoint: it only needs to answer the agent's check that
	// it is reachable before the join token is spent.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	j.agentAddr = l.Addr().String()
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	t.Cleanup(func() { _ = l.Close(); <-accepted })
	j.pool = x509.NewCertPool()
	j.pool.AddCert(j.srv.Certificate())
	return j
}

func (j *joinRelay) config(dir string) agent.Config {
	return agent.Config{Cluster: "prod", Name: "agent-test", RelayAPI: j.srv.URL, RelayAgentAddr: j.agentAddr, RelayCA: j.pool,
		CredentialDir: dir, JoinToken: "tether-join.test", Forward: forward(),
		Proxy: func(*http.Request) (*url.URL, error) { return nil, nil }}
}

func TestConfigValidate(t *testing.T) {
	j := newJoinRelay(t, "prod")
	tests := []struct {
		name    string
		change  func(*agent.Config)
		wantErr string
	}{
		{name: "valid", change: func(*agent.Config) {}},
		{name: "bad cluster", change: func(c *agent.Config) { c.Cluster = "../prod" }, wantErr: "Config.Cluster"},
		{name: "no relay endpoint", change: func(c *agent.Config) { c.RelayAgentAddr = "" }, wantErr: "RelayAgentAddr"},
		{name: "no pinned CA", change: func(c *agent.Config) { c.RelayCA = nil }, wantErr: "must be pinned"},
		{name: "no store", change: func(c *agent.Config) { c.CredentialDir = "" }, wantErr: "CredentialDir and Store"},
		{name: "stream window too small", change: func(c *agent.Config) { c.StreamWindow = 1024 }, wantErr: "StreamWindow"},
		{name: "negative renewal", change: func(c *agent.Config) { c.RenewBefore = -time.Second }, wantErr: "RenewBefore"},
		{name: "no request path", change: func(c *agent.Config) { c.Forward = impersonate.Config{} }, wantErr: "Config.Forward"},
		{name: "Admit is the agent's own", change: func(c *agent.Config) {
			c.Forward.Admit = func(*http.Request, identity.Identity) error { return nil }
		}, wantErr: "the agent's own"},
		{name: "RequestID is the agent's own", change: func(c *agent.Config) {
			c.Forward.RequestID = func(*http.Request) string { return "x" }
		}, wantErr: "the agent's own"},
		{name: "attack: an audience check that admits everything is the agent's own", change: func(c *agent.Config) {
			c.Forward.CheckAudiences = func([]string) error { return nil }
		}, wantErr: "the agent's own"},
		{name: "attack: the relay's audience set to a cluster's", change: func(c *agent.Config) { c.RelayAudience = "tether:cluster:prod" }, wantErr: "is a cluster's audience"},
		{name: "attack: the cluster's audience set to the relay's", change: func(c *agent.Config) { c.ClusterAudience = "tether:relay" }, wantErr: "must not accept the same tokens"},
		{name: "custom audiences", change: func(c *agent.Config) {
			c.RelayAudience, c.ClusterAudience = "https://relay.example", "https://prod.example"
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := j.config(t.TempDir())
			tc.change(&c)
			err := c.Validate()
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("Validate: %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestJoinKeepsTheCredentialAndReusesIt(t *testing.T) {
	j := newJoinRelay(t, "prod")
	dir := t.TempDir()
	a, err := agent.New(t.Context(), j.config(dir))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if left := time.Until(a.CredentialNotAfter()); left < 50*time.Minute {
		t.Fatalf("credential expires in %s", left)
	}
	for _, f := range []string{agent.CertFile, agent.KeyFile} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f, st.Mode().Perm())
		}
	}
	// A second start needs no token: the stored credential is used.
	cfg := j.config(dir)
	cfg.JoinToken = ""
	if _, err := agent.New(t.Context(), cfg); err != nil {
		t.Fatalf("New with the stored credential: %v", err)
	}
	if j.joins != 1 {
		t.Fatalf("%d joins, want 1: the stored credential must be reused", j.joins)
	}
}

// An agent that cannot reach the relay's agent endpoint (a relay on another
// agent port, say) does not spend its one-time join token, and says which
// flag fixes it.
func TestJoinWaitsForTheAgentEndpoint(t *testing.T) {
	j := newJoinRelay(t, "prod")
	cfg := j.config(t.TempDir())
	cfg.RelayAgentAddr = "127.0.0.1:1"
	_, err := agent.New(t.Context(), cfg)
	if err == nil || !strings.Contains(err.Error(), "--relay-agent-addr") || !strings.Contains(err.Error(), "the join token was not used") {
		t.Fatalf("New with an unreachable agent endpoint: %v", err)
	}
	if j.joins != 0 {
		t.Fatalf("%d joins: the token was spent on a relay the agent cannot hold sessions with", j.joins)
	}
}

// A relay rate-limiting joins (many agents behind one address) answers 429
// with Retry-After: the agent waits as told and joins, instead of failing.
func TestJoinWaitsOutTheRateLimit(t *testing.T) {
	j := newJoinRelay(t, "prod")
	j.busy = 2
	start := time.Now()
	if _, err := agent.New(t.Context(), j.config(t.TempDir())); err != nil {
		t.Fatalf("New behind a rate limit: %v", err)
	}
	if j.joins != 3 || time.Since(start) < 2*time.Second {
		t.Fatalf("%d join requests in %s, want 3 after waiting 1 s twice", j.joins, time.Since(start))
	}
}

func TestJoinRefusals(t *testing.T) {
	t.Run("a token for another cluster", func(t *testing.T) {
		j := newJoinRelay(t, "dev")
		_, err := agent.New(t.Context(), j.config(t.TempDir()))
		if err == nil || !strings.Contains(err.Error(), "the join token is for cluster dev, but this agent serves prod") {
			t.Fatalf("New: %v", err)
		}
	})
	t.Run("the relay refuses", func(t *testing.T) {
		j := newJoinRelay(t, "prod")
		j.refuse = "the join token was used already"
		_, err := agent.New(t.Context(), j.config(t.TempDir()))
		if err == nil || !strings.Contains(err.Error(), "join refused: the join token was used already") {
			t.Fatalf("New: %v", err)
		}
	})
	t.Run("no token and no credential", func(t *testing.T) {
		j := newJoinRelay(t, "prod")
		cfg := j.config(t.TempDir())
		cfg.JoinToken = ""
		_, err := agent.New(t.Context(), cfg)
		if err == nil || !strings.Contains(err.Error(), "tether-relay cluster create prod") {
			t.Fatalf("New: %v", err)
		}
	})
	t.Run("a stored credential for another cluster", func(t *testing.T) {
		j := newJoinRelay(t, "dev")
		dir := t.TempDir()
		// Store dev's credential by joining as an agent of dev.
		cfg := j.config(dir)
		cfg.Cluster = "dev"
		if _, err := agent.New(t.Context(), cfg); err != nil {
			t.Fatal(err)
		}
		cfg.Cluster, cfg.JoinToken = "prod", ""
		_, err := agent.New(t.Context(), cfg)
		if err == nil || !strings.Contains(err.Error(), "the credential is for cluster dev, but this agent serves prod") {
			t.Fatalf("New: %v", err)
		}
	})
}

// TestLogLinesNameTheClusterOnce reads the agent's JSON log lines while it
// tries to reach a relay that is not there: each line names the cluster
// once (a duplicate key breaks log pipelines that decode JSON strictly).
func TestLogLinesNameTheClusterOnce(t *testing.T) {
	j := newJoinRelay(t, "prod")
	var buf syncBuffer
	cfg := j.config(t.TempDir())
	cfg.Logger = slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a, err := agent.New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 1500*time.Millisecond)
	defer cancel()
	_ = a.Run(ctx)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) < 2 {
		t.Fatalf("%d log lines, want the join and reconnect attempts:\n%s", len(lines), buf.String())
	}
	for _, line := range lines {
		if n := strings.Count(line, `"cluster":`); n != 1 {
			t.Errorf("%d cluster keys in %s", n, line)
		}
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

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestHealthEndpointCutsSlowClients: issue 15, hole 5, on the agent's
// health listener: a request whose body trickles in is cut at the request
// limit (10 s); there was no limit on bodies.
func TestHealthEndpointCutsSlowClients(t *testing.T) {
	j := newJoinRelay(t, "prod")
	cfg := j.config(t.TempDir())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.HealthAddr = l.Addr().String()
	_ = l.Close()
	a, err := agent.New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	ran := make(chan error, 1)
	go func() { ran <- a.Run(ctx) }()
	defer func() { cancel(); <-ran }()
	var conn net.Conn
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if conn, err = net.Dial("tcp", cfg.HealthAddr); err == nil {
			break
		}
	}
	if conn == nil {
		t.Fatalf("the health endpoint did not listen: %v", err)
	}
	defer conn.Close()
	start := time.Now()
	_, _ = conn.Write([]byte("POST /readyz HTTP/1.1\r\nHost: agent\r\nContent-Length: 100000\r\n\r\n"))
	done := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, conn); done <- err }()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-done:
			if took := time.Since(start); took > 13*time.Second {
				t.Fatalf("the trickling request was cut after %s, want about 10 s", took.Round(time.Millisecond))
			}
			return
		case <-tick.C:
			if time.Since(start) > 20*time.Second {
				t.Fatal("the trickling request is still open after 20 s")
			}
			_, _ = conn.Write([]byte("x"))
		}
	}
}

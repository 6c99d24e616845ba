package agent_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tether-k8s/tether/core/agent"
	"github.com/tether-k8s/tether/core/tunnel"
)

// impostor is a CA other than the relay's, and a server certificate it
// issued for 127.0.0.1: a relay answering at the right address with a
// certificate that looks valid, but not from the pinned CA.
type impostor struct {
	caPEM []byte
	cert  tls.Certificate
	// what the impostor saw on its connections
	mu          sync.Mutex
	handshakes  int
	clientCerts int
	bytesRead   int
	upgrades    int
}

// impostorCA is made once per test process: Go loads the system roots
// once, so a second run of the test (-count=2) must trust the same CA.
var impostorCA = sync.OnceValues(func() (*ecdsa.PrivateKey, []byte) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "a public-looking CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		panic(err)
	}
	return caKey, caDER
})

func newImpostor(t *testing.T) *impostor {
	t.Helper()
	caKey, caDER := impostorCA()
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames: []string{"localhost"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return &impostor{caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}}
}

// trustedBySystem makes the impostor's CA one of the system's roots (as a
// publicly trusted CA is), by SSL_CERT_FILE, and checks it took.
func (im *impostor) trustedBySystem(t *testing.T) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "roots.pem")
	if err := os.WriteFile(f, im.caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SSL_CERT_FILE", f)
	t.Setenv("SSL_CERT_DIR", t.TempDir())
	roots, err := x509.SystemCertPool()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := im.cert.Leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "127.0.0.1"}); err != nil {
		t.Fatalf("the impostor's CA is not among the system roots (loaded before SSL_CERT_FILE was set?): %v", err)
	}
}

// serveTLS answers TLS with the impostor's certificate on c, asking for a
// client certificate, and notes what arrives.
func (im *impostor) serveTLS(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{im.cert}, ClientAuth: tls.RequestClientCert,
		NextProtos: []string{tunnel.SessionALPN, tunnel.RenewALPN, "http/1.1"}})
	err := tc.Handshake()
	n := 0
	if err == nil {
		_ = tc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		b, _ := io.ReadAll(tc)
		n = len(b)
	}
	im.mu.Lock()
	defer im.mu.Unlock()
	im.handshakes++
	im.clientCerts += len(tc.ConnectionState().PeerCertificates)
	im.bytesRead += n
}

// agentWithCredential returns the configuration of an agent holding a
// credential of the real relay, whose CA it pins, and its log.
func agentWithCredential(t *testing.T) (agent.Config, *syncBuffer) {
	t.Helper()
	j := newJoinRelay(t, "prod")
	dir := t.TempDir()
	if _, err := agent.New(t.Context(), j.config(dir)); err != nil {
		t.Fatal(err)
	}
	cfg := j.config(dir)
	cfg.JoinToken = ""
	var buf syncBuffer
	cfg.Logger = slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return cfg, &buf
}

// runBriefly runs the agent for d and returns whether it was ever ready.
func runBriefly(t *testing.T, cfg agent.Config, d time.Duration) bool {
	t.Helper()
	a, err := agent.New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), d)
	defer cancel()
	ready := false
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			ready = ready || a.Ready()
			time.Sleep(10 * time.Millisecond)
		}
	}()
	_ = a.Run(ctx)
	<-done
	return ready
}

// TestAgentPinsTheRelaysCA: an agent reaching a relay whose certificate
// is from another CA, even one the system trusts, refuses it, whether it
// joins, opens a session over TCP, or over WebSocket (where the outer TLS
// may be publicly trusted but the session's TLS inside is pinned). It says
// so, and the impostor gets neither the join token nor the agent's client
// certificate nor a byte of the session.
func TestAgentPinsTheRelaysCA(t *testing.T) {
	im := newImpostor(t)
	im.trustedBySystem(t)
	const unknownCA = "certificate signed by unknown authority"

	t.Run("join", func(t *testing.T) {
		var requests int
		var mu sync.Mutex
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
			mu.Lock()
			requests++
			mu.Unlock()
		}))
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{im.cert}}
		srv.StartTLS()
		t.Cleanup(srv.Close)
		cfg := newJoinRelay(t, "prod").config(t.TempDir()) // pins the real relay's CA
		cfg.RelayAPI = srv.URL
		_, err := agent.New(t.Context(), cfg)
		if err == nil || !strings.Contains(err.Error(), unknownCA) || !strings.Contains(err.Error(), "join the relay at "+srv.URL) {
			t.Fatalf("join at an impostor: %v, want a refusal of its certificate", err)
		}
		if strings.Contains(err.Error(), cfg.JoinToken) {
			t.Fatal("the error contains the join token")
		}
		mu.Lock()
		defer mu.Unlock()
		if requests != 0 {
			t.Fatalf("the impostor received %d requests: the join token went to it", requests)
		}
	})

	t.Run("session over TCP", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				wg.Go(func() { im.serveTLS(c) })
			}
		})
		t.Cleanup(func() { _ = l.Close(); wg.Wait() })
		cfg, logs := agentWithCredential(t)
		cfg.RelayAgentAddr = l.Addr().String()
		if runBriefly(t, cfg, 1500*time.Millisecond) {
			t.Fatal("the agent held a session with the impostor")
		}
		im.checkRefused(t, logs.String(), unknownCA, "TLS with the relay")
	})

	t.Run("session over WebSocket", func(t *testing.T) {
		var wg sync.WaitGroup
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c, err := tunnel.AcceptWebSocket(w, r)
			if err != nil {
				return
			}
			im.mu.Lock()
			im.upgrades++
			im.mu.Unlock()
			im.serveTLS(c)
		}))
		// The outer TLS: a certificate the system trusts, which the agent
		// accepts for the WebSocket (it may be a public one).
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{im.cert}}
		srv.StartTLS()
		t.Cleanup(func() { srv.Close(); wg.Wait() })
		im.mu.Lock()
		im.handshakes, im.clientCerts, im.bytesRead = 0, 0, 0
		im.mu.Unlock()
		cfg, logs := agentWithCredential(t)
		cfg.RelayWebSocketURL = "wss://" + srv.Listener.Addr().String() + "/v1/agents/connect"
		if runBriefly(t, cfg, 1500*time.Millisecond) {
			t.Fatal("the agent held a session with the impostor")
		}
		im.mu.Lock()
		upgrades := im.upgrades
		im.mu.Unlock()
		if upgrades == 0 {
			t.Fatalf("no WebSocket reached the impostor: the outer TLS (system roots) should have been accepted; logs:\n%s", logs)
		}
		im.checkRefused(t, logs.String(), unknownCA, "TLS with the relay")
	})
}

// checkRefused checks that the impostor's TLS handshakes all failed, with
// no client certificate and no byte received, and that the agent's log
// says why.
func (im *impostor) checkRefused(t *testing.T, logs string, want ...string) {
	t.Helper()
	im.mu.Lock()
	defer im.mu.Unlock()
	if im.handshakes == 0 {
		t.Fatalf("the agent never reached the impostor; logs:\n%s", logs)
	}
	if im.clientCerts != 0 || im.bytesRead != 0 {
		t.Fatalf("the impostor got %d client certificates and %d bytes over %d connections", im.clientCerts, im.bytesRead, im.handshakes)
	}
	for _, w := range want {
		if !strings.Contains(logs, w) {
			t.Fatalf("the agent's log does not say %q:\n%s", w, logs)
		}
	}
	if strings.Contains(logs, "tether-join.test") {
		t.Fatal("the join token is in the log")
	}
}

package relay_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/relay"
	"github.com/tether-k8s/tether/core/tunnel"
	"github.com/tether-k8s/tether/core/tunnel/tunneltest"
)

// agentRelay is a relay assembled by relay.Start, with its agent endpoint on
// real mutual TLS, for tests of what it does with agents' sessions.
type agentRelay struct {
	r    *relay.Relay
	pool *x509.CertPool
}

func startAgentRelay(t *testing.T, set func(*relay.Options)) *agentRelay {
	t.Helper()
	opts := relay.Options{Registry: registry.Config{Path: filepath.Join(t.TempDir(), "relay.db")}, Authenticator: tokenAuthn{},
		Hostnames: []string{"127.0.0.1"}, APIAddr: "127.0.0.1:0", AgentAddr: "127.0.0.1:0", RelayID: "relay-test"}
	if set != nil {
		set(&opts)
	}
	r, err := relay.Start(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	pool := x509.NewCertPool()
	pool.AddCert(r.Registry().CACertificate())
	return &agentRelay{r: r, pool: pool}
}

// credential creates cluster (or rotates it) and joins it.
func (a *agentRelay) credential(t *testing.T, cluster string) tls.Certificate {
	t.Helper()
	tok, err := a.r.Registry().CreateCluster(cluster)
	if err != nil {
		if tok, err = a.r.Registry().Rotate(cluster); err != nil {
			t.Fatal(err)
		}
	}
	return tunneltest.Join(t, a.r.Registry(), tok)
}

func (a *agentRelay) dial(t *testing.T, cert tls.Certificate, alpn string) *tls.Conn {
	t.Helper()
	conn, err := tls.Dial("tcp", a.r.AgentAddr().String(), &tls.Config{RootCAs: a.pool, ServerName: "127.0.0.1",
		NextProtos: []string{alpn}, MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

// connect opens an agent session for cluster with cert.
func (a *agentRelay) connect(t *testing.T, cert tls.Certificate, cluster string) (*tunnel.AgentSession, error) {
	t.Helper()
	s, err := tunnel.ConnectAgent(t.Context(), a.dial(t, cert, tunnel.SessionALPN), tunnel.AgentConfig{Hello: tunnel.Hello{Cluster: cluster, Agent: "a"}})
	if s != nil {
		t.Cleanup(func() { _ = s.Close() })
	}
	return s, err
}

// renew trades cert for a new credential, as the agent does.
func (a *agentRelay) renew(t *testing.T, cert tls.Certificate) tls.Certificate {
	t.Helper()
	conn := a.dial(t, cert, tunnel.RenewALPN)
	defer conn.Close()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err := tunnel.WriteFrame(conn, &tunnel.Renew{CSR: csr}); err != nil {
		t.Fatal(err)
	}
	var res tunnel.Renewed
	if err := tunnel.ReadFrame(conn, &res); err != nil || !res.OK {
		t.Fatalf("renew: %v %+v", err, res)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	next, err := tls.X509KeyPair([]byte(res.Certificate), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	if err != nil {
		t.Fatal(err)
	}
	return next
}

// routed waits up to 5 s for the relay to route n sessions of cluster (a
// session is routed just after its agent read the Welcome).
func (a *agentRelay) routed(t *testing.T, cluster string, n int) {
	t.Helper()
	waitRouted(t, a.r.Router(), cluster, n)
}

// waitRouted waits up to 5 s for router to route n sessions of cluster: an
// agent's ConnectAgent returns when it reads the Welcome, just before the
// relay routes the session, so a tunnel dialled at once may find none.
func waitRouted(t *testing.T, router *relay.Router, cluster string, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); router.Sessions(cluster) != n; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions of %s routed, want %d", router.Sessions(cluster), cluster, n)
		}
	}
}

// ended waits up to d for s to end, and reports whether it did.
func ended(s *tunnel.AgentSession, d time.Duration) bool {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := s.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	select {
	case <-done:
		return true
	case <-time.After(d):
		_ = s.Close()
		<-done
		return false
	}
}

// TestSessionCaps: issue 15, hole 2. One credential held 100 sessions over
// real mutual TLS; now a credential and a cluster hold at most their caps,
// and the agent over a cap is told why.
func TestSessionCaps(t *testing.T) {
	t.Run("per credential", func(t *testing.T) {
		a := startAgentRelay(t, func(o *relay.Options) { o.Router.MaxSessionsPerCredential = 2 })
		cert := a.credential(t, "prod")
		for i := range 2 {
			if _, err := a.connect(t, cert, "prod"); err != nil {
				t.Fatalf("session %d: %v", i, err)
			}
			a.routed(t, "prod", i+1)
		}
		_, err := a.connect(t, cert, "prod")
		var ref *tunnel.RefusedError
		if !errors.As(err, &ref) || ref.Reason != tunnel.ReasonTooManySessions || !strings.Contains(ref.Message, "--max-sessions-per-credential") {
			t.Fatalf("third session: %v, want a TooManySessions refusal naming --max-sessions-per-credential", err)
		}
		if n := a.r.Router().Sessions("prod"); n != 2 {
			t.Fatalf("%d sessions routed, want 2", n)
		}
	})
	t.Run("per cluster", func(t *testing.T) {
		a := startAgentRelay(t, func(o *relay.Options) { o.Router.MaxSessionsPerCluster = 3 })
		cert := a.credential(t, "prod")
		for i := range 3 {
			if _, err := a.connect(t, cert, "prod"); err != nil {
				t.Fatalf("session %d: %v", i, err)
			}
			a.routed(t, "prod", i+1)
		}
		_, err := a.connect(t, cert, "prod")
		var ref *tunnel.RefusedError
		if !errors.As(err, &ref) || ref.Reason != tunnel.ReasonTooManySessions || !strings.Contains(ref.Message, "--max-sessions-per-cluster") {
			t.Fatalf("fourth session: %v, want a TooManySessions refusal naming --max-sessions-per-cluster", err)
		}
	})
	t.Run("the defaults bound a credential opening 100", func(t *testing.T) {
		a := startAgentRelay(t, nil)
		cert := a.credential(t, "prod")
		refused := 0
		for range 100 {
			if _, err := a.connect(t, cert, "prod"); err != nil {
				refused++
			}
		}
		if n := a.r.Router().Sessions("prod"); n != relay.DefaultMaxSessionsPerCredential || refused != 100-n {
			t.Fatalf("%d sessions routed and %d refused, want %d routed", n, refused, relay.DefaultMaxSessionsPerCredential)
		}
	})
}

// TestRenewalMovesTheOldCredentialsSessions: issue 15, hole 8. A session
// was checked once, at its handshake; the credential it presented can stop
// being current while it runs (renewed away, revoked). Its session is told
// to move (GoAway) and ended after the relay's grace, well before the
// registry's renewal grace would end it.
func TestRenewalMovesTheOldCredentialsSessions(t *testing.T) {
	a := startAgentRelay(t, func(o *relay.Options) { o.Router.SupersededGrace = 200 * time.Millisecond })
	old := a.credential(t, "prod")
	s, err := a.connect(t, old, "prod")
	if err != nil {
		t.Fatal(err)
	}
	// The renewal supersedes the presenting credential: it holds only for
	// the registry's renewal grace.
	cur := a.renew(t, old)
	if _, until, err := a.r.Registry().VerifyPeerUntil(old.Leaf); err == nil && !until.Before(old.Leaf.NotAfter) {
		t.Fatalf("the old credential still holds until %s, its expiry", until)
	}
	select {
	case <-s.GoAwayChan():
	case <-time.After(5 * time.Second):
		t.Fatal("the session on the superseded credential was not told to move")
	}
	if !ended(s, 5*time.Second) {
		t.Fatal("the session on the superseded credential still runs after its grace")
	}
	// The current credential holds a session.
	if _, err := a.connect(t, cur, "prod"); err != nil {
		t.Fatalf("a session on the current credential: %v", err)
	}
}

// TestRotateBetweenAuthorizationAndRouting: issue 15, hole 8's window. A
// session authorized just before a rotate, and routed just after it, must
// not survive: the relay checks the credential again once it is routed.
func TestRotateBetweenAuthorizationAndRouting(t *testing.T) {
	var a *agentRelay
	a = startAgentRelay(t, func(o *relay.Options) {
		o.OnAgentSession = func(s *tunnel.RelaySession) {
			// Between the session's authorization and its routing.
			if _, err := a.r.Registry().Rotate(s.Hello.Cluster); err != nil {
				t.Error(err)
			}
		}
	})
	cert := a.credential(t, "prod")
	s, err := a.connect(t, cert, "prod")
	if err == nil && !ended(s, 5*time.Second) {
		t.Fatal("a session whose credential was revoked before it was routed still runs")
	}
	a.routed(t, "prod", 0)
}

// TestExpiredCredentialEndsItsSession: the credential's expiry ends the
// session it opened.
func TestExpiredCredentialEndsItsSession(t *testing.T) {
	// The registry's clock runs 10 minutes minus 2 s behind: the credential
	// it issues (10 minutes, the shortest) expires 2 s from now.
	behind := 10*time.Minute - 2*time.Second
	a := startAgentRelay(t, func(o *relay.Options) {
		o.Registry.CredentialTTL = 10 * time.Minute
		o.Registry.Now = func() time.Time { return time.Now().Add(-behind) }
	})
	cert := a.credential(t, "prod")
	if left := time.Until(cert.Leaf.NotAfter); left > 3*time.Second {
		t.Fatalf("the credential expires in %s", left)
	}
	s, err := a.connect(t, cert, "prod")
	if err != nil {
		t.Fatal(err)
	}
	if !ended(s, 10*time.Second) {
		t.Fatal("the session outlived its credential")
	}
}

// TestRegistryChangesReachLiveSessions: the relay follows the registry's
// change feed, so a rotate or delete made on the store (by another
// replica, or tether-relay's offline commands) ends the sessions this relay
// holds, not only one made through its own admin API.
func TestRegistryChangesReachLiveSessions(t *testing.T) {
	for _, change := range []string{"rotate", "delete"} {
		t.Run(change, func(t *testing.T) {
			a := startAgentRelay(t, nil)
			cert := a.credential(t, "prod")
			s, err := a.connect(t, cert, "prod")
			if err != nil {
				t.Fatal(err)
			}
			if change == "rotate" {
				_, err = a.r.Registry().Rotate("prod")
			} else {
				err = a.r.Registry().DeleteCluster("prod")
			}
			if err != nil {
				t.Fatal(err)
			}
			if !ended(s, 5*time.Second) {
				t.Fatalf("the session survived a %s made on the registry", change)
			}
		})
	}
}

package tunneltest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/tunnel"
)

// Pair returns the relay's and the agent's ends of a session for an agent
// that says hello, joined by net.Pipe. Both are closed when the test ends.
func Pair(t testing.TB, hello tunnel.Hello) (*tunnel.RelaySession, *tunnel.AgentSession) {
	t.Helper()
	return PairWindow(t, hello, 0)
}

// PairWindow is Pair with a yamux stream window of window bytes on both
// ends (zero: tunnel.DefaultStreamWindow).
func PairWindow(t testing.TB, hello tunnel.Hello, window uint32) (*tunnel.RelaySession, *tunnel.AgentSession) {
	t.Helper()
	relayEnd, agentEnd := net.Pipe()
	type res struct {
		s   *tunnel.AgentSession
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := tunnel.ConnectAgent(context.Background(), agentEnd, tunnel.AgentConfig{Hello: hello, Yamux: tunnel.YamuxConfig(window)})
		ch <- res{s, err}
	}()
	rs, err := tunnel.AcceptAgent(context.Background(), relayEnd, tunnel.RelayConfig{
		Authorize: func(context.Context, *tunnel.Hello, tls.ConnectionState) error { return nil },
		Yamux:     tunnel.YamuxConfig(window),
	})
	r := <-ch
	if err != nil || r.err != nil {
		t.Fatalf("tunneltest: handshake: relay %v, agent %v", err, r.err)
	}
	t.Cleanup(func() { _ = rs.Close(); _ = r.s.Close() })
	return rs, r.s
}

// Serve answers every stream of s with reply (then closes it), until s
// ends. It returns when the test ends.
func Serve(t testing.TB, s *tunnel.AgentSession, reply func(st *tunnel.Stream)) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := s.Accept()
			if err != nil {
				return
			}
			go func() { reply(c.(*tunnel.Stream)); _ = c.Close() }()
		}
	}()
	t.Cleanup(func() { _ = s.Close(); <-done })
}

// ServerCert returns a self-signed TLS server certificate for name, and a
// pool that trusts it, valid for an hour.
func ServerCert(t testing.TB, name string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}

// Join trades token on reg for a cluster credential with a fresh P-256
// key, as an agent does, and returns it with its Leaf parsed.
func Join(t testing.TB, reg *registry.Registry, token string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	cred, err := reg.Join(token, csr)
	if err != nil {
		t.Fatalf("tunneltest: join: %v", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(cred.CertPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

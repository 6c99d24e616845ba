package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/tunnel/tunneltest"
)

// credential joins cluster on a fresh registry and returns the agent's
// certificate and the registry.
func credential(t *testing.T, cluster string) (*x509.Certificate, *registry.Registry) {
	t.Helper()
	reg, err := registry.Open(registry.Config{Path: filepath.Join(t.TempDir(), "r.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	tok, err := reg.CreateCluster(cluster)
	if err != nil {
		t.Fatal(err)
	}
	cert := tunneltest.Join(t, reg, tok).Leaf
	return cert, reg
}

// TestVerifyAgent: the proxy talks only to an agent whose certificate
// chains to the relay's cluster CA and names the cluster it asked for, so
// neither a routing mistake nor a relay playing agent can answer for it.
func TestVerifyAgent(t *testing.T) {
	prodCert, reg := credential(t, "prod")
	foreignCert, _ := credential(t, "prod") // same name, another relay's CA
	pool := x509.NewCertPool()
	pool.AddCert(reg.CACertificate())
	serving, err := reg.ServingCertificate([]string{"relay.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	relayLeaf, _ := x509.ParseCertificate(serving.Certificate[0])

	tests := []struct {
		name    string
		cluster string
		peer    []*x509.Certificate
		want    string
	}{
		{"the requested cluster's agent", "prod", []*x509.Certificate{prodCert}, ""},
		{"another cluster's agent", "staging", []*x509.Certificate{prodCert}, "not staging"},
		{"an agent certified by another CA", "prod", []*x509.Certificate{foreignCert}, "not from the relay's cluster CA"},
		{"the relay's own serving certificate", "prod", []*x509.Certificate{relayLeaf}, "not from the relay's cluster CA"},
		{"no certificate", "prod", nil, "no certificate"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := &Proxy{cfg: Config{Cluster: tc.cluster}, clusterCA: pool}
			err := p.verifyAgent(tls.ConnectionState{PeerCertificates: tc.peer})
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want a refusal mentioning %q", err, tc.want)
			}
		})
	}
}

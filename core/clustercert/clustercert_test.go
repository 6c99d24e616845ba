package clustercert_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tether-k8s/tether/core/clustercert"
	"github.com/tether-k8s/tether/core/clusterid"
)

// ca is a throwaway CA that signs test leaves.
type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newCA(t testing.TB) *ca {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &ca{cert: cert, key: key, pool: pool}
}

// leaf signs a certificate with the given common name, URI SANs and usage.
func (c *ca) leaf(t testing.TB, cn string, uris []string, usage x509.ExtKeyUsage) *x509.Certificate {
	t.Helper()
	cert, err := c.sign(cn, uris, usage)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// sign is leaf returning its error: a fuzzed name may not be encodable.
func (c *ca) sign(cn string, uris []string, usage x509.ExtKeyUsage) (*x509.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}}
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			return nil, err
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, key.Public(), c.key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func TestURI(t *testing.T) {
	u, err := clustercert.URI("prod")
	if err != nil || u.String() != "tether://cluster/prod" {
		t.Fatalf("URI(prod) = %v, %v", u, err)
	}
	for _, bad := range []string{"", "../x", "Prod", "prod.", "%2e%2e", "a/b"} {
		if _, err := clustercert.URI(bad); err == nil {
			t.Errorf("URI(%q) accepted", bad)
		}
	}
}

func TestClusterID(t *testing.T) {
	c := newCA(t)
	tests := []struct {
		name    string
		cn      string
		uris    []string
		want    string
		wantErr string
	}{
		{name: "credential", cn: "prod", uris: []string{"tether://cluster/prod"}, want: "prod"},
		{name: "no URI", cn: "prod", wantErr: "0 URI SANs"},
		{name: "two URIs", cn: "prod", uris: []string{"tether://cluster/prod", "tether://cluster/dev"}, wantErr: "2 URI SANs"},
		{name: "other scheme", cn: "prod", uris: []string{"https://cluster/prod"}, wantErr: "does not start with"},
		{name: "common name differs", cn: "dev", uris: []string{"tether://cluster/prod"}, wantErr: "differs"},
		{name: "dot-dot", cn: "..", uris: []string{"tether://cluster/.."}, wantErr: "not a tether cluster credential"},
		{name: "path in ID", cn: "a/b", uris: []string{"tether://cluster/a/b"}, wantErr: "not a tether cluster credential"},
		{name: "upper case", cn: "Prod", uris: []string{"tether://cluster/Prod"}, wantErr: "not a tether cluster credential"},
		{name: "trailing dot", cn: "prod.", uris: []string{"tether://cluster/prod."}, wantErr: "not a tether cluster credential"},
		{name: "escaped", cn: "%70rod", uris: []string{"tether://cluster/%70rod"}, wantErr: "not a tether cluster credential"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := clustercert.ClusterID(c.leaf(t, tc.cn, tc.uris, x509.ExtKeyUsageClientAuth))
			if tc.wantErr == "" {
				if err != nil || got != tc.want {
					t.Fatalf("ClusterID = %q, %v; want %q", got, err, tc.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, clustercert.ErrNotClusterCredential) {
				t.Fatalf("ClusterID = %q, %v; want ErrNotClusterCredential with %q", got, err, tc.wantErr)
			}
		})
	}
	if _, err := clustercert.ClusterID(nil); !errors.Is(err, clustercert.ErrNotClusterCredential) {
		t.Fatalf("ClusterID(nil) = %v", err)
	}
}

func TestVerifyAgent(t *testing.T) {
	c, other := newCA(t), newCA(t)
	prod := c.leaf(t, "prod", []string{"tether://cluster/prod"}, x509.ExtKeyUsageClientAuth)
	tests := []struct {
		name    string
		roots   *x509.CertPool
		chain   []*x509.Certificate
		cluster string
		wantErr string
	}{
		{name: "the cluster's agent", roots: c.pool, chain: []*x509.Certificate{prod}, cluster: "prod"},
		{name: "another cluster's agent", roots: c.pool, chain: []*x509.Certificate{prod}, cluster: "dev", wantErr: clustercert.WrongAgentMessage + " prod, not dev"},
		{name: "another relay's CA", roots: other.pool, chain: []*x509.Certificate{prod}, cluster: "prod", wantErr: "not from the relay's cluster CA"},
		{name: "a server certificate", roots: c.pool, chain: []*x509.Certificate{c.leaf(t, "prod", []string{"tether://cluster/prod"}, x509.ExtKeyUsageServerAuth)}, cluster: "prod", wantErr: "not from the relay's cluster CA"},
		{name: "no certificate", roots: c.pool, cluster: "prod", wantErr: "no certificate"},
		{name: "not a credential", roots: c.pool, chain: []*x509.Certificate{c.leaf(t, "prod", nil, x509.ExtKeyUsageClientAuth)}, cluster: "prod", wantErr: "URI SANs"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := clustercert.VerifyAgent(tc.roots, tc.cluster, tc.chain)
			if tc.wantErr == "" && err != nil {
				t.Fatalf("VerifyAgent: %v", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("VerifyAgent: %v, want %q", err, tc.wantErr)
			}
		})
	}
}

// FuzzClusterID signs certificates with fuzzed common names and URI SANs:
// ClusterID accepts only the one shape a credential has, and then gives a
// valid cluster ID equal to both.
//
//tether:fuzztime 20000x
func FuzzClusterID(f *testing.F) {
	c := newCA(f)
	for _, s := range []struct{ cn, uri string }{{"prod", "tether://cluster/prod"}, {"..", "tether://cluster/.."}, {"a", "tether://cluster/a/b"},
		{"x", "tether://cluster/x?y"}, {"x", "tether://cluster/x#y"}, {"x", "TETHER://cluster/x"}, {"x", "tether://Cluster/x"}, {"", ""}} {
		f.Add(s.cn, s.uri)
	}
	f.Fuzz(func(t *testing.T, cn, uri string) {
		var uris []string
		if uri != "" {
			uris = []string{uri}
		}
		cert, err := c.sign(cn, uris, x509.ExtKeyUsageClientAuth)
		if err != nil {
			return // not encodable in a certificate: nothing to check
		}
		id, err := clustercert.ClusterID(cert)
		if err != nil {
			return
		}
		if clusterid.Validate(id) != nil || id != cn || cert.URIs[0].String() != clustercert.URIPrefix+id {
			t.Fatalf("accepted %q (cn %q, uri %q)", id, cn, uri)
		}
	})
}

// FuzzVerifyAgent signs agent certificates with fuzzed names, by the
// relay's CA or another, for client or server use, and verifies them for a
// fuzzed cluster: VerifyAgent accepts only a client certificate from the
// relay's CA whose one URI SAN and common name are the cluster asked for.
//
//tether:fuzztime 20000x
func FuzzVerifyAgent(f *testing.F) {
	relayCA, other := newCA(f), newCA(f)
	f.Add("prod", "tether://cluster/prod", "prod", false, false)
	f.Add("prod", "tether://cluster/prod", "dev", false, false)
	f.Add("prod", "tether://cluster/prod", "prod", true, false)
	f.Add("prod", "tether://cluster/prod", "prod", false, true)
	f.Add("prod", "tether://cluster/prod/", "prod/", false, false)
	f.Add("Prod", "tether://cluster/Prod", "Prod", false, false)
	f.Add("", "", "", false, false)
	f.Fuzz(func(t *testing.T, cn, uri, cluster string, byOther, serverAuth bool) {
		signer, usage := relayCA, x509.ExtKeyUsageClientAuth
		if byOther {
			signer = other
		}
		if serverAuth {
			usage = x509.ExtKeyUsageServerAuth
		}
		var uris []string
		if uri != "" {
			uris = []string{uri}
		}
		leaf, err := signer.sign(cn, uris, usage)
		if err != nil {
			return
		}
		if err := clustercert.VerifyAgent(relayCA.pool, cluster, []*x509.Certificate{leaf}); err != nil {
			return
		}
		// The URI as the certificate holds it: x509 parses URI SANs with
		// url.Parse, which lowercases the scheme (RFC 3986 section 3.1: a
		// scheme is case-insensitive), so "tethEr://cluster/prod" is the
		// same URI as tether://cluster/prod. Anything else must match
		// exactly.
		if byOther || serverAuth || cluster != cn || len(leaf.URIs) != 1 || leaf.URIs[0].String() != clustercert.URIPrefix+cluster ||
			!strings.EqualFold(uri, clustercert.URIPrefix+cluster) || clusterid.Validate(cluster) != nil {
			t.Fatalf("accepted for cluster %q: cn %q, uri %q, by another CA %v, server auth %v", cluster, cn, uri, byOther, serverAuth)
		}
	})
}

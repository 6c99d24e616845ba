package registry

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/tether-k8s/tether/core/clustercert"
)

// FuzzCSR parses fuzzed certificate signing requests as a join or a
// renewal does: an accepted CSR is signed and has a key of an accepted
// type and strength, and the certificate the relay signs for it names the
// cluster it is signed for and nothing the CSR asked for (no other URI,
// DNS name, address or e-mail, no CA, client use only), so it verifies as
// that cluster's agent and no other's.
func FuzzCSR(f *testing.F) {
	u, _ := url.Parse("tether://cluster/other")
	req := &x509.CertificateRequest{Subject: pkix.Name{CommonName: "other"}, URIs: []*url.URL{u}, DNSNames: []string{"relay.example"},
		IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}, EmailAddresses: []string{"a@b.c"}}
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	for _, k := range []crypto.Signer{p256, p224, ed, rsa1024} {
		der, err := x509.CreateCertificateRequest(rand.Reader, req, k)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(der)
	}
	f.Add([]byte{})
	f.Add([]byte("not a CSR"))
	certDER, keyDER, err := newAuthorityKeyPair(time.Now(), time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	ca, err := loadAuthority(certDER, keyDER)
	if err != nil {
		f.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	f.Fuzz(func(t *testing.T, der []byte) {
		csr, err := parseCSR(der)
		if err != nil {
			return
		}
		if len(der) > maxCSRBytes || csr.CheckSignature() != nil {
			t.Fatal("accepted an oversized or badly signed CSR")
		}
		switch k := csr.PublicKey.(type) {
		case *ecdsa.PublicKey:
			if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
				t.Fatalf("accepted curve %s", k.Curve.Params().Name)
			}
		case *rsa.PublicKey:
			if k.N.BitLen() < 3072 {
				t.Fatalf("accepted a %d-bit RSA key", k.N.BitLen())
			}
		case ed25519.PublicKey:
		default:
			t.Fatalf("accepted a %T", k)
		}
		out, err := ca.sign("prod", csr, big.NewInt(7), time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
		if err != nil {
			t.Fatalf("an accepted CSR cannot be signed: %v", err)
		}
		cert, err := x509.ParseCertificate(out)
		if err != nil {
			t.Fatal(err)
		}
		if len(cert.URIs) != 1 || cert.URIs[0].String() != clustercert.URIPrefix+"prod" || len(cert.DNSNames)+len(cert.IPAddresses)+len(cert.EmailAddresses) != 0 ||
			cert.IsCA || !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
			t.Fatalf("signed %v %v %v %v CA %v usage %v", cert.URIs, cert.DNSNames, cert.IPAddresses, cert.EmailAddresses, cert.IsCA, cert.ExtKeyUsage)
		}
		if err := clustercert.VerifyAgent(roots, "prod", []*x509.Certificate{cert}); err != nil {
			t.Fatalf("the signed credential does not verify for its cluster: %v", err)
		}
		if clustercert.VerifyAgent(roots, "other", []*x509.Certificate{cert}) == nil {
			t.Fatal("the signed credential verifies for the cluster the CSR named")
		}
	})
}

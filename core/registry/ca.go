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
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/tether-k8s/tether/core/clustercert"
)

// ErrBadCSR is wrapped by Join and Renew when the certificate signing request
// is malformed, badly signed or uses a weak key.
var ErrBadCSR = errors.New("bad certificate signing request")

// maxCSRBytes bounds the CSR accepted from an agent.
const maxCSRBytes = 16 << 10

// authority is the relay's certificate authority.
type authority struct {
	cert    *x509.Certificate
	certDER []byte
	key     crypto.Signer
}

// newAuthorityKeyPair creates a self-signed CA certificate and its key, both
// DER encoded (the key as PKCS #8).
func newAuthorityKeyPair(now time.Time, validity time.Duration) (certDER, keyDER []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("registry: generate CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "tether relay cluster CA", Organization: []string{"tether"}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	certDER, err = x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("registry: create CA certificate: %w", err)
	}
	keyDER, err = x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("registry: encode CA key: %w", err)
	}
	return certDER, keyDER, nil
}

func loadAuthority(certDER, keyDER []byte) (*authority, error) {
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return nil, fmt.Errorf("registry: parse stored CA certificate: %w", err)
	}
	k, err := x509.ParsePKCS8PrivateKey(keyDER)
	if err != nil {
		return nil, fmt.Errorf("registry: parse stored CA key: %w", err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("registry: stored CA key of type %T cannot sign", k)
	}
	return &authority{cert: cert, certDER: certDER, key: signer}, nil
}

// sign issues a client certificate for clusterID to the key in csr.
func (a *authority) sign(clusterID string, csr *x509.CertificateRequest, serial *big.Int, notBefore, notAfter time.Time) ([]byte, error) {
	u, err := clustercert.URI(clusterID)
	if err != nil {
		return nil, fmt.Errorf("registry: cluster URI: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: clusterID, Organization: []string{"tether cluster"}},
		URIs:         []*url.URL{u},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, csr.PublicKey, a.key)
	if err != nil {
		return nil, fmt.Errorf("registry: sign credential for cluster %s: %w", clusterID, err)
	}
	return der, nil
}

// parseCSR parses and checks an agent's certificate signing request: its
// signature, and a key of at least 128-bit strength. Its subject and
// extensions are ignored: the registry decides what the certificate says.
func parseCSR(der []byte) (*x509.CertificateRequest, error) {
	if len(der) == 0 || len(der) > maxCSRBytes {
		return nil, fmt.Errorf("%w: %d bytes, want 1 to %d", ErrBadCSR, len(der), maxCSRBytes)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature: %w", ErrBadCSR, err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, fmt.Errorf("%w: ECDSA curve %s; use P-256 or P-384", ErrBadCSR, k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if k.N.BitLen() < 3072 {
			return nil, fmt.Errorf("%w: %d-bit RSA key; use ECDSA P-256, Ed25519 or RSA of at least 3072 bits", ErrBadCSR, k.N.BitLen())
		}
	default:
		return nil, fmt.Errorf("%w: unsupported key type %T", ErrBadCSR, k)
	}
	return csr, nil
}

func randomSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("registry: random serial: %w", err)
	}
	return serial.Add(serial, big.NewInt(1)), nil
}

package clustercert

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/tether-k8s/tether/core/clusterid"
)

// WrongAgentMessage starts the error VerifyAgent returns when the peer is
// the agent of another cluster than the one asked for (its certificate
// names it): a routing bug that the TLS to the agent stops. The simulator
// looks for it.
const WrongAgentMessage = "reached the agent of cluster"

// AgentClientTLS returns the TLS configuration for speaking to a cluster's
// agent inside a relay stream, as tether-proxy and the relay's cluster
// endpoint do: TLS 1.3, HTTP/1.1, and the agent's certificate, which is its
// cluster credential, verified with VerifyAgent against roots (the relay's
// cluster CA) and cluster, not against a host name.
func AgentClientTLS(roots *x509.CertPool, cluster string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{"http/1.1"},
		// Verified by VerifyConnection below, against the cluster CA and
		// the requested cluster: the agent has no host name.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return VerifyAgent(roots, cluster, cs.PeerCertificates)
		},
	}
}

// VerifyAgent accepts only a certificate chain whose leaf chains to roots
// (the relay's cluster CA), is a client certificate, and names cluster.
func VerifyAgent(roots *x509.CertPool, cluster string, chain []*x509.Certificate) error {
	if len(chain) == 0 {
		return errors.New("the agent presented no certificate")
	}
	leaf := chain[0]
	if err := verifyChain(roots, chain, x509.ExtKeyUsageClientAuth); err != nil {
		return fmt.Errorf("the agent's certificate is not from the relay's cluster CA: %w", err)
	}
	id, err := ClusterID(leaf)
	if err != nil {
		return err
	}
	if id != cluster {
		return fmt.Errorf("%s %s, not %s: refusing", WrongAgentMessage, id, cluster)
	}
	return nil
}

// ErrNotClusterCredential is wrapped by ClusterID when a certificate does
// not name exactly one valid cluster.
var ErrNotClusterCredential = errors.New("not a tether cluster credential")

// URIPrefix starts the one URI SAN of a cluster credential; the cluster ID
// follows it.
const URIPrefix = "tether://cluster/"

// URI returns the URI SAN a credential for cluster id carries. It refuses an
// invalid cluster ID.
func URI(id string) (*url.URL, error) {
	if err := clusterid.Validate(id); err != nil {
		return nil, fmt.Errorf("clustercert: %w", err)
	}
	return url.Parse(URIPrefix + id)
}

// ClusterID returns the cluster a credential names: its one URI SAN
// tether://cluster/ID, whose ID must be valid and equal the subject's common
// name. It checks nothing about the signature or validity period: the TLS
// handshake (against the relay's CA) and the relay's registry do, and
// VerifyAgent does for callers.
func ClusterID(cert *x509.Certificate) (string, error) {
	return oneURI(cert, URIPrefix, clusterid.Validate, ErrNotClusterCredential, "cluster")
}

// oneURI returns the ID in cert's one URI SAN prefix+ID, which valid
// accepts and which equals the subject's common name; what else is wrapped
// in notThat.
func oneURI(cert *x509.Certificate, prefix string, valid func(string) error, notThat error, what string) (string, error) {
	if cert == nil {
		return "", fmt.Errorf("%w: no certificate", notThat)
	}
	if len(cert.URIs) != 1 {
		return "", fmt.Errorf("%w: %d URI SANs, want exactly 1", notThat, len(cert.URIs))
	}
	raw := cert.URIs[0].String()
	id, ok := strings.CutPrefix(raw, prefix)
	if !ok {
		return "", fmt.Errorf("%w: URI SAN %q does not start with %s", notThat, raw, prefix)
	}
	if err := valid(id); err != nil {
		return "", fmt.Errorf("%w: %w", notThat, err)
	}
	if cert.Subject.CommonName != id {
		return "", fmt.Errorf("%w: common name %q differs from URI SAN %s %q", notThat, cert.Subject.CommonName, what, id)
	}
	return id, nil
}

// ErrNotRelayPeer is wrapped by RelayID when a certificate is not a relay
// replica's peer certificate.
var ErrNotRelayPeer = errors.New("not a tether relay peer certificate")

// RelayURIPrefix starts the one URI SAN of a relay replica's peer
// certificate (replica-to-replica mutual TLS); the replica's ID follows.
// No cluster credential carries it, and the relay's serving certificate
// carries no URI, so neither an agent nor anything serving callers can
// present itself as a replica.
const RelayURIPrefix = "tether://relay/"

// ValidateRelayID accepts a replica ID of 1 to 63 letters, digits, '.', '_'
// and '-', starting with a letter or digit (a host name or a pod's name).
func ValidateRelayID(id string) error {
	if id == "" || len(id) > 63 {
		return fmt.Errorf("relay replica ID %q: want 1 to 63 characters", id)
	}
	for i, r := range id {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || i > 0 && (r == '.' || r == '_' || r == '-')
		if !ok {
			return fmt.Errorf("relay replica ID %q: want letters, digits, '.', '_' and '-', starting with a letter or digit", id)
		}
	}
	return nil
}

// RelayURI returns the URI SAN of replica id's peer certificate.
func RelayURI(id string) (*url.URL, error) {
	if err := ValidateRelayID(id); err != nil {
		return nil, fmt.Errorf("clustercert: %w", err)
	}
	return url.Parse(RelayURIPrefix + id)
}

// RelayID returns the replica a peer certificate names: its one URI SAN
// tether://relay/ID, equal to the subject's common name. Like ClusterID it
// checks no signature: the peer's TLS handshake does, against the relay's
// CA.
func RelayID(cert *x509.Certificate) (string, error) {
	return oneURI(cert, RelayURIPrefix, ValidateRelayID, ErrNotRelayPeer, "replica")
}

// VerifyRelayPeer accepts only a chain whose leaf chains to roots (the
// relay's CA) for usage (client or server authentication) and is a peer
// certificate; it returns the replica's ID. want, when not empty, is the
// replica the caller meant to reach.
func VerifyRelayPeer(roots *x509.CertPool, chain []*x509.Certificate, usage x509.ExtKeyUsage, want string) (string, error) {
	if len(chain) == 0 {
		return "", errors.New("the replica presented no certificate")
	}
	if err := verifyChain(roots, chain, usage); err != nil {
		return "", fmt.Errorf("the replica's certificate is not from the relay's CA: %w", err)
	}
	id, err := RelayID(chain[0])
	if err != nil {
		return "", err
	}
	if want != "" && id != want {
		return "", fmt.Errorf("reached replica %s, not %s: refusing", id, want)
	}
	return id, nil
}

// verifyChain checks that chain's leaf chains to roots, through the rest of
// chain, for usage.
func verifyChain(roots *x509.CertPool, chain []*x509.Certificate, usage x509.ExtKeyUsage) error {
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}

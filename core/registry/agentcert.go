package registry

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
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
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("the agent's certificate is not from the relay's cluster CA: %w", err)
	}
	id, err := ClusterIDFromCert(leaf)
	if err != nil {
		return err
	}
	if id != cluster {
		return fmt.Errorf("%s %s, not %s: refusing", WrongAgentMessage, id, cluster)
	}
	return nil
}

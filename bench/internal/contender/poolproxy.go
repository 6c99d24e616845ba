package contender

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"

	"github.com/tether-k8s/tether/bench/internal/node"
	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/relay"
)

// poolProxyArgs are the arguments of the tether-proxy-pool role.
type poolProxyArgs struct {
	tetherProxyArgs
	// IdleTunnels is the proxy transport's MaxIdleConnsPerHost (core/proxy
	// has 16).
	IdleTunnels int
}

// poolProxyRole is tether-proxy for an A/B of its pool of idle tunnels: the
// same request path as core/proxy.Serve (ReverseProxy with Rewrite, a
// tunnel per connection through relay.DialTunnel, TLS to the agent checked
// against the cluster CA and the cluster's ID), assembled by the harness
// because core/proxy takes no pool size. Its local TLS certificates are
// the harness's own. The guard against foreign Host, Origin and
// Impersonate-* headers is left out: the harness sends none.
func poolProxyRole(ctx context.Context, raw json.RawMessage, c *node.Child) error {
	var args poolProxyArgs
	if err := json.Unmarshal(raw, &args); err != nil {
		return fmt.Errorf("tether-proxy-pool: arguments: %w", err)
	}
	relayCA := x509.NewCertPool()
	if !relayCA.AppendCertsFromPEM([]byte(args.CA)) {
		return errors.New("tether-proxy-pool: no relay CA")
	}
	// The relay's CA also signs the agents' credentials (the cluster CA
	// core/proxy fetches from /v1/clusters/{id}).
	clusterCA := relayCA
	u, err := url.Parse(args.RelayURL)
	if err != nil {
		return fmt.Errorf("tether-proxy-pool: relay URL: %w", err)
	}
	relayHost := u.Host
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 15 * time.Second, KeepAlive: 30 * time.Second},
			Config: &tls.Config{RootCAs: relayCA, ServerName: u.Hostname(), MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}}
		raw, err := d.DialContext(ctx, "tcp", relayHost)
		if err != nil {
			return nil, fmt.Errorf("reach the relay: %w", err)
		}
		conn, err := relay.DialTunnel(raw, relayHost, args.Cluster, callerToken)
		if err != nil {
			_ = raw.Close()
			return nil, err
		}
		agent := tls.Client(conn, &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{"http/1.1"}, InsecureSkipVerify: true,
			VerifyConnection: func(cs tls.ConnectionState) error { return verifyAgent(cs, clusterCA, args.Cluster) }})
		if err := agent.HandshakeContext(ctx); err != nil {
			_ = raw.Close()
			return nil, fmt.Errorf("TLS to the agent: %w", err)
		}
		return agent, nil
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(&url.URL{Scheme: "https", Host: "cluster.tether"})
			pr.Out.Header.Set("Authorization", "Bearer "+callerToken)
		},
		Transport:     &http.Transport{DialTLSContext: dial, MaxIdleConnsPerHost: args.IdleTunnels, IdleConnTimeout: 90 * time.Second},
		FlushInterval: -1,
	}
	ca, err := newAuthority()
	if err != nil {
		return err
	}
	srvCert, srvKey, err := ca.issue("tether-proxy", []string{"127.0.0.1"}, false)
	if err != nil {
		return err
	}
	cliCert, cliKey, err := ca.issue("tether-proxy-user", nil, true)
	if err != nil {
		return err
	}
	serving, err := tls.X509KeyPair(srvCert, srvKey)
	if err != nil {
		return fmt.Errorf("tether-proxy-pool: %w", err)
	}
	clients := x509.NewCertPool()
	clients.AddCert(ca.cert)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("tether-proxy-pool: %w", err)
	}
	srv := &http.Server{Handler: rp, ReadHeaderTimeout: 30 * time.Second, MaxHeaderBytes: 1 << 20,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{serving}, ClientAuth: tls.RequireAndVerifyClientCert,
			ClientCAs: clients, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}}
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(l, "", "") }()
	err = c.Ready(tetherProxyReady{Addr: l.Addr().String(), CA: string(ca.pem), ClientCert: string(cliCert), Key: string(cliKey)})
	if err == nil {
		<-ctx.Done()
	}
	_ = srv.Close()
	if serr := <-served; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	return err
}

// verifyAgent is core/proxy's check of the agent: its certificate chains
// to the cluster CA and names the requested cluster.
func verifyAgent(cs tls.ConnectionState, clusterCA *x509.CertPool, cluster string) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("the agent presented no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	leaf := cs.PeerCertificates[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: clusterCA, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("the agent's certificate: %w", err)
	}
	id, err := registry.ClusterIDFromCert(leaf)
	if err != nil {
		return fmt.Errorf("the agent's certificate: %w", err)
	}
	if id != cluster {
		return fmt.Errorf("reached the agent of cluster %s, not %s", id, cluster)
	}
	return nil
}

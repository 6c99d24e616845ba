package relayapi

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/tether-k8s/tether/core/kstatus"
)

// Paths and protocols of the relay's API.
const (
	// TunnelProtocol is the Upgrade token a caller's proxy asks for to open
	// a tunnel to a cluster (GET /v1/clusters/{id}/tunnel).
	TunnelProtocol = "tether-tunnel/1"
	// JoinPath is where an agent trades its join token for a credential.
	JoinPath = "/v1/join"
	// AgentWebSocketPath is where agents hold sessions over WebSocket.
	AgentWebSocketPath = "/v1/agents/connect"
	// LoginPath is where the relay publishes its LoginSettings.
	LoginPath = "/v1/login"
	// ClusterEndpointPath is the path of a cluster's endpoint on the
	// relay's API (no local process), with the cluster ID for %s.
	ClusterEndpointPath = "/v1/clusters/%s/k8s"
)

// JoinRequest is the body of POST /v1/join.
type JoinRequest struct {
	// Token is the join token `tether-relay cluster create` printed.
	Token string `json:"token"`
	// CSR is a DER certificate signing request for the agent's key.
	CSR []byte `json:"csr"`
}

// JoinResponse is the answer to a join.
type JoinResponse struct {
	// Cluster is the cluster the join token was for.
	Cluster string `json:"cluster"`
	// Certificate is the agent's credential (PEM).
	Certificate string `json:"certificate"`
	// CA is the relay's CA (PEM), which signed it.
	CA string `json:"ca"`
	// NotAfter is when the credential expires.
	NotAfter time.Time `json:"notAfter"`
}

// ClusterInfo is the answer to GET /v1/clusters/{id}.
type ClusterInfo struct {
	// Cluster is the cluster's ID.
	Cluster string `json:"cluster"`
	// Connected reports whether an agent of the cluster holds a session.
	Connected bool `json:"connected"`
	// CA verifies the cluster's agents (the relay's cluster CA), for the
	// caller's end-to-end TLS with the agent.
	CA string `json:"ca"`
}

// LoginSettings say where callers log in: the OpenID provider and the
// public client registered for tether there. They are no secret.
type LoginSettings struct {
	// Issuer is the provider's issuer URL; it must be one the
	// authentication configuration trusts, with ClientID among its
	// audiences.
	Issuer string `json:"issuer"`
	// ClientID is the public client (no secret) callers log in as.
	ClientID string `json:"clientID"`
}

// Validate checks l: both fields or neither, and an https issuer.
func (l LoginSettings) Validate() error {
	if l.Issuer == "" && l.ClientID == "" {
		return nil
	}
	if l.Issuer == "" || l.ClientID == "" {
		return errors.New("relay: the login issuer and client ID go together")
	}
	if u, err := url.Parse(l.Issuer); err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("relay: login issuer %q: want an https URL", l.Issuer)
	}
	return nil
}

// DialTunnel opens a tunnel to cluster through the relay at host over conn
// (already connected, TLS to the relay), with the caller's token. It returns
// conn positioned after the 101, or the relay's refusal as a *TunnelError
// carrying its Status.
func DialTunnel(conn net.Conn, host, cluster, token string) (net.Conn, error) {
	req := "GET /v1/clusters/" + cluster + "/tunnel HTTP/1.1\r\nHost: " + host +
		"\r\nConnection: Upgrade\r\nUpgrade: " + TunnelProtocol + "\r\nAuthorization: Bearer " + token + "\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		return nil, fmt.Errorf("relay: request tunnel: %w", err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, fmt.Errorf("relay: read tunnel response: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if st, ok := kstatus.Decode(body); ok {
			return nil, &TunnelError{Status: st}
		}
		return nil, fmt.Errorf("relay: tunnel refused: %s", resp.Status)
	}
	if br.Buffered() > 0 {
		return nil, errors.New("relay: the relay sent data before the tunnel opened")
	}
	return conn, nil
}

// TunnelError is a relay's refusal to open a tunnel.
type TunnelError struct{ Status kstatus.Status }

func (e *TunnelError) Error() string { return e.Status.Message }

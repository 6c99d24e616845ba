package relayapi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
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
	// WhoamiPath is where a caller reads who the relay takes it for and
	// which clusters it may reach (Whoami).
	WhoamiPath = "/v1/whoami"
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
	// Audience is the relay's own audience: the login's tokens for the
	// relay hop must be for it (an OAuth 2.0 token exchange, RFC 8693, of
	// the login's ID token at Issuer). Empty: the relay predates audiences
	// per hop, and the ID token is presented everywhere.
	Audience string `json:"audience,omitempty"`
	// ClusterAudiencePrefix starts each cluster's audience (the prefix,
	// then the cluster's name): the login's tokens for a cluster's agent
	// are for it. Empty with Audience.
	ClusterAudiencePrefix string `json:"clusterAudiencePrefix,omitempty"`
}

// ClusterAudience returns cluster's audience as l publishes it, or "" when
// l publishes none.
func (l LoginSettings) ClusterAudience(cluster string) string {
	if l.ClusterAudiencePrefix == "" {
		return ""
	}
	return l.ClusterAudiencePrefix + cluster
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

// Whoami is the answer to GET /v1/whoami: the caller as the relay's
// authentication maps its token, and the clusters whose policy admits it.
type Whoami struct {
	// User and Groups are the mapped identity (with prefixes: oidc:alice).
	User   string   `json:"user"`
	Groups []string `json:"groups,omitempty"`
	// Audiences are the token's audiences.
	Audiences []string `json:"audiences,omitempty"`
	// Expires is when the token expires (zero: unknown).
	Expires time.Time `json:"expires,omitzero"`
	// Clusters are the clusters the caller may reach, sorted by ID.
	Clusters []ReachableCluster `json:"clusters"`
}

// ReachableCluster is one cluster a caller may reach, and its state.
type ReachableCluster struct {
	// Cluster is the cluster's ID.
	Cluster string `json:"cluster"`
	// Sessions is how many agent sessions the relay holds for it; 0 means
	// not connected.
	Sessions int `json:"sessions"`
	// Agents are the connected agents' versions (their Hello's software),
	// each once.
	Agents []string `json:"agents,omitempty"`
}

// GetWhoami asks the relay at relayURL who token is and where it may go.
// A refusal is returned as the relay's message.
func GetWhoami(ctx context.Context, client *http.Client, relayURL, token string) (*Whoami, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(relayURL, "/")+WhoamiPath, nil)
	if err != nil {
		return nil, fmt.Errorf("relay URL %q: %w", relayURL, err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("reach the relay at %s: %w", relayURL, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if resp.StatusCode != http.StatusOK {
		if st, ok := kstatus.Decode(body); ok {
			return nil, errors.New(st.Message)
		}
		return nil, fmt.Errorf("the relay at %s answered %s (is it a tether relay of this version or newer?)", relayURL, resp.Status)
	}
	var w Whoami
	if err := json.Unmarshal(body, &w); err != nil {
		return nil, fmt.Errorf("the relay's answer to %s: %w", WhoamiPath, err)
	}
	return &w, nil
}

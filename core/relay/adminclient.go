package relay

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/tether-k8s/tether/core/kstatus"
	"github.com/tether-k8s/tether/core/policy"
)

// ErrNoRelay is returned by AdminClient when no relay serves the socket.
var ErrNoRelay = errors.New("no relay is serving the admin socket")

// AdminClient calls a running relay's admin API: over its Unix socket, or
// over its public API when URL is set (the relay started with
// --admin-group, and Token a member's).
type AdminClient struct {
	// Socket is the path of the relay's admin socket.
	Socket string
	// URL, when not empty, is the relay's public API (https://host:port),
	// used instead of Socket.
	URL string
	// RootCAs verifies the relay at URL. Nil means the system's roots.
	RootCAs *x509.CertPool
	// Token returns the caller's token for URL.
	Token func() (string, error)
}

var _ Admin = AdminClient{}

// Live implements Admin: the client reaches a running relay.
func (AdminClient) Live() bool { return true }

func (a AdminClient) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	if a.URL != "" {
		return a.doRemote(ctx, method, path, rd, out)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://relay"+path, rd)
	if err != nil {
		return err
	}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "unix", a.Socket)
			if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
				return nil, fmt.Errorf("%w (%s): %w", ErrNoRelay, a.Socket, err)
			}
			return c, err
		},
	}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Do(req)
	if err != nil {
		if errors.Is(err, ErrNoRelay) {
			return fmt.Errorf("%w (%s)", ErrNoRelay, a.Socket)
		}
		return fmt.Errorf("relay admin API at %s: %w", a.Socket, err)
	}
	return decodeAdmin(resp, out)
}

// doRemote calls the admin API at a.URL with a.Token.
func (a AdminClient) doRemote(ctx context.Context, method, path string, body io.Reader, out any) error {
	if a.Token == nil {
		return errors.New("relay admin API: no token to call " + a.URL + " with")
	}
	tok, err := a.Token()
	if err != nil {
		return fmt.Errorf("relay admin API: read your token: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(a.URL, "/")+path, body)
	if err != nil {
		return fmt.Errorf("relay admin API: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: a.RootCAs, MinVersion: tls.VersionTLS12}}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("relay admin API at %s: %w", a.URL, err)
	}
	return decodeAdmin(resp, out)
}

// decodeAdmin reads an admin API answer into out (a *[]byte takes it raw),
// or the Status it refused with.
func decodeAdmin(resp *http.Response, out any) error {
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("relay admin API: read the answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		if st, ok := kstatus.Decode(raw); ok {
			return errors.New(st.Message)
		}
		return fmt.Errorf("relay admin API: %s", resp.Status)
	}
	if p, ok := out.(*[]byte); ok {
		*p = raw
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("relay admin API: decode the answer: %w", err)
	}
	return nil
}

// Clusters lists the clusters with their live session counts.
func (a AdminClient) Clusters(ctx context.Context) ([]ClusterStatus, error) {
	var out []ClusterStatus
	return out, a.do(ctx, http.MethodGet, "/v1/admin/clusters", nil, &out)
}

// Create creates a cluster and returns its join token.
func (a AdminClient) Create(ctx context.Context, name string) (AdminResult, error) {
	var out AdminResult
	return out, a.do(ctx, http.MethodPost, "/v1/admin/clusters", CreateClusterRequest{Name: name}, &out)
}

// Rotate revokes a cluster's credentials, ends its sessions and returns a
// new join token.
func (a AdminClient) Rotate(ctx context.Context, id string) (AdminResult, error) {
	var out AdminResult
	return out, a.do(ctx, http.MethodPost, "/v1/admin/clusters/"+url.PathEscape(id)+"/rotate", nil, &out)
}

// Delete forgets a cluster and ends its sessions.
func (a AdminClient) Delete(ctx context.Context, id string) (AdminResult, error) {
	var out AdminResult
	return out, a.do(ctx, http.MethodDelete, "/v1/admin/clusters/"+url.PathEscape(id), nil, &out)
}

// Policy returns a cluster's access policy.
func (a AdminClient) Policy(ctx context.Context, id string) (PolicyChange, error) {
	var out PolicyChange
	return out, a.do(ctx, http.MethodGet, "/v1/admin/clusters/"+url.PathEscape(id)+"/policy", nil, &out)
}

// Grant adds p's users, groups and rules to a cluster's policy.
func (a AdminClient) Grant(ctx context.Context, id string, p policy.Policy) (PolicyChange, error) {
	var out PolicyChange
	return out, a.do(ctx, http.MethodPost, "/v1/admin/clusters/"+url.PathEscape(id)+"/grant", p, &out)
}

// Revoke removes p's users, groups and rules from a cluster's policy.
func (a AdminClient) Revoke(ctx context.Context, id string, p policy.Policy) (PolicyChange, error) {
	var out PolicyChange
	return out, a.do(ctx, http.MethodPost, "/v1/admin/clusters/"+url.PathEscape(id)+"/revoke", p, &out)
}

// CA returns the relay's CA certificate (PEM).
func (a AdminClient) CA(ctx context.Context) ([]byte, error) {
	var out []byte
	return out, a.do(ctx, http.MethodGet, "/v1/admin/ca", nil, &out)
}

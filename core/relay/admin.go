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

	"github.com/tether-k8s/tether/core/clusterid"
	"github.com/tether-k8s/tether/core/kstatus"
	"github.com/tether-k8s/tether/core/policy"
	"github.com/tether-k8s/tether/core/registry"
)

// ClusterStatus is one cluster in the admin API's list.
type ClusterStatus struct {
	ID        string    `json:"id"`
	CreatedAt time.Time `json:"createdAt"`
	// Credentials is how many agent certificates are current (not replaced
	// by a renewal).
	Credentials int `json:"credentials"`
	// Sessions is how many agent sessions this relay holds for it now.
	Sessions int `json:"sessions"`
	// Grants is how many users, groups and rules its policy lists.
	Grants int `json:"grants"`
}

// PolicyChange is the answer to grant and revoke.
type PolicyChange struct {
	Cluster string        `json:"cluster"`
	Policy  policy.Policy `json:"policy"`
	// Removed is how many entries a revoke removed.
	Removed int `json:"removed"`
}

// CreateClusterRequest is the body of POST /v1/admin/clusters.
type CreateClusterRequest struct {
	Name string `json:"name"`
}

// AdminResult is the answer of the admin API's changes.
type AdminResult struct {
	Cluster string `json:"cluster"`
	// JoinToken is the new one-time join token (create, rotate). It is
	// shown once and stored only hashed.
	JoinToken string `json:"joinToken,omitempty"`
	// SessionsClosed is how many live agent sessions the change ended
	// (rotate, delete).
	SessionsClosed int `json:"sessionsClosed"`
}

// AdminHandler returns the relay's local admin API, which the cluster
// commands of tether-relay use while the relay runs (the registry file is
// locked by the running relay). It has no authentication of its own: serve
// it only on a Unix socket that only the relay's user can open.
//
//	GET    /v1/admin/clusters              list, with live session counts
//	POST   /v1/admin/clusters              create {"name"}; answers the join token
//	POST   /v1/admin/clusters/{id}/rotate  revoke credentials, end sessions, new join token
//	DELETE /v1/admin/clusters/{id}         forget the cluster, end its sessions
//	GET    /v1/admin/clusters/{id}/policy  who may reach the cluster
//	POST   /v1/admin/clusters/{id}/grant   add users, groups, rules {"users", "groups", "rules"}
//	POST   /v1/admin/clusters/{id}/revoke  remove them
//	GET    /v1/admin/ca                    the relay's CA (PEM)
func (s *Server) AdminHandler() http.Handler {
	reg, router := s.cfg.Registry, s.cfg.Router
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/admin/clusters", func(w http.ResponseWriter, _ *http.Request) {
		cs, err := reg.Clusters()
		if err != nil {
			adminError(w, err)
			return
		}
		out := make([]ClusterStatus, 0, len(cs))
		for _, c := range cs {
			out = append(out, ClusterStatus{ID: c.ID, CreatedAt: c.CreatedAt, Credentials: len(c.CurrentCredentials()), Sessions: router.Sessions(c.ID),
				Grants: len(c.Policy.Users) + len(c.Policy.Groups) + len(c.Policy.Rules)})
		}
		writeJSON(w, out)
	})
	mux.HandleFunc("POST /v1/admin/clusters", func(w http.ResponseWriter, r *http.Request) {
		var req CreateClusterRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&req); err != nil {
			kstatus.Write(w, http.StatusBadRequest, kstatus.ReasonBadRequest, `tether: the body is JSON {"name": "..."}: `+err.Error())
			return
		}
		tok, err := reg.CreateCluster(req.Name)
		if err != nil {
			adminError(w, err)
			return
		}
		s.log.Info("relay: cluster created (admin API)", "cluster", req.Name)
		writeJSON(w, AdminResult{Cluster: req.Name, JoinToken: tok})
	})
	mux.HandleFunc("POST /v1/admin/clusters/{id}/rotate", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		tok, err := reg.Rotate(id)
		if err != nil {
			adminError(w, err)
			return
		}
		n := router.CloseCluster(id)
		s.log.Info("relay: cluster rotated (admin API); its sessions ended", "cluster", id, "sessions", n)
		writeJSON(w, AdminResult{Cluster: id, JoinToken: tok, SessionsClosed: n})
	})
	mux.HandleFunc("DELETE /v1/admin/clusters/{id}", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		if err := reg.DeleteCluster(id); err != nil {
			adminError(w, err)
			return
		}
		n := router.CloseCluster(id)
		s.log.Info("relay: cluster deleted (admin API); its sessions ended", "cluster", id, "sessions", n)
		writeJSON(w, AdminResult{Cluster: id, SessionsClosed: n})
	})
	mux.HandleFunc("GET /v1/admin/clusters/{id}/policy", func(w http.ResponseWriter, r *http.Request) {
		c, err := reg.Cluster(r.PathValue("id"))
		if err != nil {
			adminError(w, err)
			return
		}
		writeJSON(w, PolicyChange{Cluster: c.ID, Policy: c.Policy})
	})
	for _, verb := range []string{"grant", "revoke"} {
		mux.HandleFunc("POST /v1/admin/clusters/{id}/"+verb, func(w http.ResponseWriter, r *http.Request) {
			var req policy.Policy
			if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil {
				kstatus.Write(w, http.StatusBadRequest, kstatus.ReasonBadRequest, `tether: the body is a policy {"users", "groups", "rules", "audiences"}: `+err.Error())
				return
			}
			id, removed := r.PathValue("id"), 0
			p, err := reg.UpdatePolicy(id, func(p policy.Policy) (policy.Policy, error) {
				if verb == "grant" {
					return p.Add(req), nil
				}
				p, removed = p.Remove(req)
				return p, nil
			})
			if err != nil {
				adminError(w, err)
				return
			}
			s.log.Info("relay: access policy changed (admin API)", "cluster", id, "change", verb, "users", req.Users, "groups", req.Groups, "rules", len(req.Rules), "audiences", req.Audiences)
			writeJSON(w, PolicyChange{Cluster: id, Policy: p, Removed: removed})
		})
	}
	mux.HandleFunc("GET /v1/admin/ca", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/x-pem-file")
		_, _ = w.Write(reg.CAPEM())
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		kstatus.Write(w, http.StatusNotFound, kstatus.ReasonNotFound, "tether: no such admin endpoint: "+r.Method+" "+r.URL.Path)
	})
	return mux
}

func adminError(w http.ResponseWriter, err error) {
	code, reason := http.StatusInternalServerError, kstatus.ReasonInternalError
	switch {
	case errors.Is(err, registry.ErrUnknownCluster):
		code, reason = http.StatusNotFound, kstatus.ReasonNotFound
	case errors.Is(err, registry.ErrClusterExists):
		code, reason = http.StatusConflict, kstatus.ReasonAlreadyExists
	case errors.Is(err, clusterid.ErrInvalid), errors.Is(err, policy.ErrInvalid):
		code, reason = http.StatusBadRequest, kstatus.ReasonBadRequest
	}
	kstatus.Write(w, code, reason, "tether: "+err.Error())
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// ListenAdmin listens on the Unix socket path for the admin API, with mode
// 0600. A socket file left by a relay that crashed is replaced; one that a
// running relay answers on is an error.
func ListenAdmin(path string) (net.Listener, error) {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		_ = c.Close()
		return nil, fmt.Errorf("relay: admin socket %s: another relay is serving on it", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("relay: admin socket %s: remove the stale socket: %w", path, err)
	}
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("relay: admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = l.Close()
		return nil, fmt.Errorf("relay: admin socket %s: %w", path, err)
	}
	return l, nil
}

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

package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/tether-k8s/tether/core/clusterid"
	"github.com/tether-k8s/tether/core/kstatus"
	"github.com/tether-k8s/tether/core/policy"
	"github.com/tether-k8s/tether/core/registry"
)

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
func (s *Server) AdminHandler() http.Handler { return AdminHTTP(s.admin) }

// AdminHTTP serves a over HTTP, as AdminHandler describes.
func AdminHTTP(a Admin) http.Handler {
	mux := http.NewServeMux()
	answer := func(w http.ResponseWriter, v any, err error) {
		if err != nil {
			adminError(w, err)
			return
		}
		writeJSON(w, v)
	}
	mux.HandleFunc("GET /v1/admin/clusters", func(w http.ResponseWriter, r *http.Request) {
		cs, err := a.Clusters(r.Context())
		answer(w, cs, err)
	})
	mux.HandleFunc("POST /v1/admin/clusters", func(w http.ResponseWriter, r *http.Request) {
		var req CreateClusterRequest
		if err := decodeBody(w, r, 4096, &req); err != nil {
			kstatus.Write(w, http.StatusBadRequest, kstatus.ReasonBadRequest, `tether: the body is JSON {"name": "..."}: `+err.Error())
			return
		}
		res, err := a.Create(r.Context(), req.Name)
		answer(w, res, err)
	})
	mux.HandleFunc("POST /v1/admin/clusters/{id}/rotate", func(w http.ResponseWriter, r *http.Request) {
		res, err := a.Rotate(r.Context(), r.PathValue("id"))
		answer(w, res, err)
	})
	mux.HandleFunc("DELETE /v1/admin/clusters/{id}", func(w http.ResponseWriter, r *http.Request) {
		res, err := a.Delete(r.Context(), r.PathValue("id"))
		answer(w, res, err)
	})
	mux.HandleFunc("GET /v1/admin/clusters/{id}/policy", func(w http.ResponseWriter, r *http.Request) {
		res, err := a.Policy(r.Context(), r.PathValue("id"))
		answer(w, res, err)
	})
	for verb, change := range map[string]func(context.Context, string, policy.Policy) (PolicyChange, error){"grant": a.Grant, "revoke": a.Revoke} {
		mux.HandleFunc("POST /v1/admin/clusters/{id}/"+verb, func(w http.ResponseWriter, r *http.Request) {
			var req policy.Policy
			if err := decodeBody(w, r, 1<<20, &req); err != nil {
				kstatus.Write(w, http.StatusBadRequest, kstatus.ReasonBadRequest, `tether: the body is a policy {"users", "groups", "rules", "audiences"}: `+err.Error())
				return
			}
			res, err := change(r.Context(), r.PathValue("id"), req)
			answer(w, res, err)
		})
	}
	mux.HandleFunc("GET /v1/admin/ca", func(w http.ResponseWriter, r *http.Request) {
		pem, err := a.CA(r.Context())
		if err != nil {
			adminError(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/x-pem-file")
		_, _ = w.Write(pem)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		kstatus.Write(w, http.StatusNotFound, kstatus.ReasonNotFound, "tether relay: no such admin endpoint: "+r.Method+" "+r.URL.Path)
	})
	return mux
}

// decodeBody decodes the request's body, at most limit bytes, as exactly
// one JSON object of v's fields: an unknown field (a typo such as "group")
// or a second value is an error, since applying the rest would do something
// other than what the administrator asked.
func decodeBody(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("the body must hold one JSON object and nothing after it")
	}
	return nil
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
	kstatus.Write(w, code, reason, "tether relay: "+err.Error())
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
	l, err := listenPrivate(path)
	if err != nil {
		return nil, fmt.Errorf("relay: admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = l.Close()
		return nil, fmt.Errorf("relay: admin socket %s: %w", path, err)
	}
	return l, nil
}

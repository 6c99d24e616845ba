package relay

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/tether-k8s/tether/core/kstatus"
	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/relayapi"
)

// maxJoinBody bounds a join request.
const maxJoinBody = 64 << 10

// join trades a join token and a CSR for the agent's credential
// (POST /v1/join).
func (s *Server) join(w http.ResponseWriter, r *http.Request) {
	var req relayapi.JoinRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxJoinBody)).Decode(&req); err != nil {
		kstatus.Write(w, http.StatusBadRequest, kstatus.ReasonBadRequest, "tether: a join request is JSON {token, csr}: "+err.Error())
		return
	}
	cred, err := s.cfg.Registry.Join(req.Token, req.CSR)
	if err != nil {
		code, reason := http.StatusUnauthorized, kstatus.ReasonUnauthorized
		if errors.Is(err, registry.ErrBadCSR) {
			code, reason = http.StatusBadRequest, kstatus.ReasonBadRequest
		}
		s.cfg.Metrics.join(false)
		s.log.Warn("relay: join refused", "client", r.RemoteAddr, "error", err)
		kstatus.Write(w, code, reason, "tether: "+err.Error())
		return
	}
	s.cfg.Metrics.join(true)
	s.log.Info("relay: agent joined", "cluster", cred.ClusterID, "client", r.RemoteAddr)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(relayapi.JoinResponse{Cluster: cred.ClusterID, Certificate: string(cred.CertPEM), CA: string(cred.CAPEM), NotAfter: cred.NotAfter})
}

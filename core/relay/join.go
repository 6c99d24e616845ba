package relay

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"

	"github.com/tether-k8s/tether/core/kstatus"
	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/relayapi"
)

// maxJoinBody bounds a join request.
const maxJoinBody = 64 << 10

// join trades a join token and a CSR for the agent's credential
// (POST /v1/join).
func (s *Server) join(w http.ResponseWriter, r *http.Request) {
	// Before anything is read or looked up: joins are unauthenticated.
	if ok, wait := s.joins.Allow(r.RemoteAddr); !ok {
		s.cfg.Metrics.join(false)
		secs := max(1, int(math.Ceil(wait.Seconds())))
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		kstatus.Write(w, http.StatusTooManyRequests, kstatus.ReasonTooManyRequests,
			fmt.Sprintf("tether relay: too many join attempts from this address: retry in %d s", secs))
		return
	}
	var req relayapi.JoinRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxJoinBody)).Decode(&req); err != nil {
		kstatus.Write(w, http.StatusBadRequest, kstatus.ReasonBadRequest, "tether relay: a join request is JSON {token, csr}: "+err.Error())
		return
	}
	cred, err := s.cfg.Registry.Join(req.Token, req.CSR)
	if err != nil {
		code, reason := http.StatusUnauthorized, kstatus.ReasonUnauthorized
		switch {
		case errors.Is(err, registry.ErrBadCSR):
			code, reason = http.StatusBadRequest, kstatus.ReasonBadRequest
		case errors.Is(err, registry.ErrStoreUnavailable):
			// Not the token's fault: the agent retries, and its token is
			// not spent.
			code, reason = http.StatusServiceUnavailable, kstatus.ReasonServiceUnavailable
		}
		s.cfg.Metrics.join(false)
		s.log.Warn("relay: join refused", "client", r.RemoteAddr, "error", err)
		kstatus.Write(w, code, reason, "tether relay: "+err.Error())
		return
	}
	s.cfg.Metrics.join(true)
	s.log.Info("relay: agent joined", "cluster", cred.ClusterID, "client", r.RemoteAddr)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(relayapi.JoinResponse{Cluster: cred.ClusterID, Certificate: string(cred.CertPEM), CA: string(cred.CAPEM), NotAfter: cred.NotAfter})
}

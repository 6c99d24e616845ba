package relay

import (
	"encoding/json"
	"net/http"

	"github.com/tether-k8s/tether/core/kstatus"
	"github.com/tether-k8s/tether/core/relayapi"
)

// login publishes where callers log in (GET /v1/login), unauthenticated:
// the settings are no secret. They name the relay's audience and the
// clusters' audience prefix, so the login asks its issuer for a token per
// hop.
func (s *Server) login(w http.ResponseWriter, _ *http.Request) {
	if s.cfg.Login.Issuer == "" {
		kstatus.Write(w, http.StatusNotFound, kstatus.ReasonNotFound,
			"tether relay: this relay publishes no login settings (it was started without --login-issuer); pass --issuer and --client-id to tether-proxy login, or ask the relay's operator for them")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	l := s.cfg.Login
	l.Audience, l.ClusterAudiencePrefix = s.cfg.RelayAudience, relayapi.ClusterAudiencePrefix
	_ = json.NewEncoder(w).Encode(l)
}

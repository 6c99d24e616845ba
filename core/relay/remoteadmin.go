package relay

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/tether-k8s/tether/core/kstatus"
	"github.com/tether-k8s/tether/core/tokensource"
)

// remoteAdmin serves AdminHandler on the public API to members of
// ServerConfig.AdminGroups, authenticated as callers are, and audits every
// request with the caller's name.
func (s *Server) remoteAdmin() http.Handler {
	admin := s.AdminHandler()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(s.cfg.AdminGroups) == 0 {
			kstatus.Write(w, http.StatusNotFound, kstatus.ReasonNotFound,
				"tether relay: the remote admin API is off on this relay: use its local admin socket, or start it with --admin-group GROUP")
			return
		}
		begin := time.Now()
		token, ok := bearer(r)
		if !ok {
			kstatus.Write(w, http.StatusUnauthorized, kstatus.ReasonUnauthorized, "tether relay: a bearer token is required for the admin API")
			s.audit.Warn("relay: admin request", "user", "", "client", r.RemoteAddr, "method", r.Method, "path", r.URL.Path, "status", http.StatusUnauthorized)
			return
		}
		res, err := s.cfg.Authenticator.AuthenticateToken(r.Context(), token)
		if err != nil {
			why := strings.ReplaceAll(err.Error(), token, "<token>")
			kstatus.Write(w, http.StatusUnauthorized, kstatus.ReasonUnauthorized, "tether relay: the bearer token was refused: "+why+tokensource.ExpiredHint(token, time.Now()))
			s.audit.Warn("relay: admin request", "user", "", "client", r.RemoteAddr, "method", r.Method, "path", r.URL.Path,
				"status", http.StatusUnauthorized, "why", why)
			return
		}
		user := res.Identity.User
		if !s.isAdmin(res.Identity.Groups) {
			kstatus.Write(w, http.StatusForbidden, kstatus.ReasonForbidden, fmt.Sprintf(
				"tether relay: %s is not in an admin group of this relay (%s); an administrator can run the command on the relay's host instead",
				user, strings.Join(s.cfg.AdminGroups, ", ")))
			s.audit.Warn("relay: admin request", "user", user, "client", r.RemoteAddr, "method", r.Method, "path", r.URL.Path, "status", http.StatusForbidden)
			return
		}
		if !slices.Contains(res.Audiences, s.cfg.AdminAudience) {
			kstatus.Write(w, http.StatusForbidden, kstatus.ReasonForbidden, fmt.Sprintf(
				"tether relay: the admin API accepts only tokens for its own audience, %s; this token is for %v, which agents may have seen: "+
					"present a token your identity provider issued for %s (docs/security.md, \"The admin audience\")",
				s.cfg.AdminAudience, res.Audiences, s.cfg.AdminAudience))
			s.audit.Warn("relay: admin request", "user", user, "client", r.RemoteAddr, "method", r.Method, "path", r.URL.Path,
				"status", http.StatusForbidden, "why", "token for another audience", "audiences", res.Audiences)
			return
		}
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		admin.ServeHTTP(sw, r)
		s.audit.Info("relay: admin request", "user", user, "client", r.RemoteAddr, "method", r.Method, "path", r.URL.Path,
			"status", sw.status, "duration", time.Since(begin).Round(time.Millisecond))
	})
}

// statusWriter records the status a handler answered with.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

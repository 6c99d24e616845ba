package relay

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tether-k8s/tether/core/clusterid"
	"github.com/tether-k8s/tether/core/copybuf"
	"github.com/tether-k8s/tether/core/identity"
	"github.com/tether-k8s/tether/core/kstatus"
	"github.com/tether-k8s/tether/core/policy"
	"github.com/tether-k8s/tether/core/relayapi"
	"github.com/tether-k8s/tether/core/tokensource"
	"github.com/tether-k8s/tether/core/tunnel"
)

// caller authenticates the request's bearer token, checks the cluster ID
// in the path and the cluster's access policy, and returns the cluster, the
// caller and the token. It writes the refusal itself, counts it with count
// (a result label) and returns ok=false.
func (s *Server) caller(w http.ResponseWriter, r *http.Request, count func(result string)) (id string, who identity.Result, token string, ok bool) {
	id = r.PathValue("id")
	if err := clusterid.Validate(id); err != nil {
		count(ResultBadRequest)
		kstatus.Write(w, http.StatusBadRequest, kstatus.ReasonBadRequest, "tether relay: "+err.Error())
		return "", who, "", false
	}
	who, token, ok = s.authenticate(w, r, id, count)
	if !ok {
		return "", who, "", false
	}
	c, err := s.cfg.Registry.Cluster(id)
	if err != nil {
		count(ResultUnknown)
		kstatus.Write(w, http.StatusNotFound, kstatus.ReasonNotFound, "tether relay: "+err.Error()+" (tether-proxy clusters lists the clusters you may reach)")
		return "", who, "", false
	}
	if err := policy.CheckAudience(c.Policy, who.Audiences); err != nil {
		count(ResultForbidden)
		s.log.Warn("relay: caller refused: token for another audience", "cluster", id, "user", who.Identity.User, "client", r.RemoteAddr, "why", err)
		kstatus.Write(w, http.StatusForbidden, kstatus.ReasonForbidden, fmt.Sprintf("tether relay: cluster %s refuses this token: %v", id, err))
		return "", who, "", false
	}
	d, perr := policy.Check(c.Policy, who.Identity)
	if !d.Allowed {
		count(ResultForbidden)
		s.log.Warn("relay: caller refused by the cluster's policy", "cluster", id, "user", who.Identity.User, "groups", len(who.Identity.Groups),
			"client", r.RemoteAddr, "why", d.Why, "ruleErrors", perr)
		kstatus.Write(w, http.StatusForbidden, kstatus.ReasonForbidden, fmt.Sprintf("tether relay: %s may not reach cluster %s: %s (an administrator grants access with: tether-relay cluster grant %s --user|--group|--rule)",
			who.Identity.User, id, d.Why, id))
		return "", who, "", false
	}
	return id, who, token, true
}

// authenticate checks the request's bearer token: one, verified by the
// relay's authenticator, not for the admin audience (an agent would see
// it), and not for any cluster's audience (an agent saw it). id names the
// cluster for logs ("" when the request is for none).
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request, id string, count func(result string)) (who identity.Result, token string, ok bool) {
	token, found := bearer(r)
	if !found {
		count(ResultUnauthorized)
		kstatus.Write(w, http.StatusUnauthorized, kstatus.ReasonUnauthorized, "tether relay: a bearer token is required to reach a cluster")
		return who, "", false
	}
	res, err := s.cfg.Authenticator.AuthenticateToken(r.Context(), token)
	if err != nil {
		count(ResultUnauthorized)
		why := strings.ReplaceAll(err.Error(), token, "<token>")
		s.log.Warn("relay: caller refused", "cluster", id, "client", r.RemoteAddr, "why", why)
		kstatus.Write(w, http.StatusUnauthorized, kstatus.ReasonUnauthorized, "tether relay: the bearer token was refused: "+why+tokensource.ExpiredHint(token, time.Now()))
		return who, "", false
	}
	if slices.Contains(res.Audiences, s.cfg.AdminAudience) {
		count(ResultForbidden)
		s.log.Warn("relay: caller refused: a token for the admin audience", "cluster", id, "user", res.Identity.User, "client", r.RemoteAddr)
		kstatus.Write(w, http.StatusForbidden, kstatus.ReasonForbidden, fmt.Sprintf(
			"tether relay: this token is for the admin audience %s, and the cluster's agent would see it: reach clusters with a token for the callers' audience, and keep admin tokens for the admin API",
			s.cfg.AdminAudience))
		return who, "", false
	}
	if shared, err := relayapi.CheckRelayAudiences(res.Audiences, s.cfg.RelayAudience); err != nil {
		count(ResultForbidden)
		if shared {
			s.cfg.Metrics.sharedAudience()
		}
		s.log.Warn("relay: caller refused: a token for a cluster's audience", "cluster", id, "user", res.Identity.User, "client", r.RemoteAddr,
			"audiences", res.Audiences, "shared", shared)
		kstatus.Write(w, http.StatusForbidden, kstatus.ReasonForbidden, "tether relay: "+err.Error())
		return who, "", false
	}
	return res, token, true
}

// whoami answers a caller who its token maps to and which clusters admit
// it (the audience and policy checks of a tunnel, without opening one).
// Clusters that would refuse the caller are not listed: a caller learns
// nothing of clusters it may not reach.
func (s *Server) whoami(w http.ResponseWriter, r *http.Request) {
	who, _, ok := s.authenticate(w, r, "", func(string) {})
	if !ok {
		return
	}
	all, err := s.cfg.Registry.Clusters()
	if err != nil {
		WriteError(w, err)
		return
	}
	out := relayapi.Whoami{User: who.Identity.User, Groups: who.Identity.Groups, Audiences: who.Audiences, Expires: who.Expires,
		Clusters: []relayapi.ReachableCluster{}}
	for _, c := range all {
		if policy.CheckAudience(c.Policy, who.Audiences) != nil {
			continue
		}
		if d, _ := policy.Check(c.Policy, who.Identity); !d.Allowed {
			continue
		}
		out.Clusters = append(out.Clusters, relayapi.ReachableCluster{Cluster: c.ID, Sessions: s.cfg.Router.AllSessions(c.ID), Agents: s.cfg.Router.Agents(c.ID)})
	}
	slices.SortFunc(out.Clusters, func(a, b relayapi.ReachableCluster) int { return strings.Compare(a.Cluster, b.Cluster) })
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

// bearer returns the request's one bearer token.
func bearer(r *http.Request) (string, bool) {
	auth := r.Header.Values("Authorization")
	if len(auth) != 1 {
		return "", false
	}
	token, found := strings.CutPrefix(auth[0], "Bearer ")
	if !found || token == "" {
		return "", false
	}
	return token, true
}

func (s *Server) clusterInfo(w http.ResponseWriter, r *http.Request) {
	id, _, _, ok := s.caller(w, r, s.cfg.Metrics.tunnel)
	if !ok {
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(relayapi.ClusterInfo{Cluster: id, Connected: s.cfg.Router.AllSessions(id) > 0, CA: string(s.cfg.Registry.CAPEM())})
}

// tunnel authenticates the caller, opens a stream to one of the cluster's
// agents, answers 101 and splices bytes until either side ends.
func (s *Server) tunnel(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), relayapi.TunnelProtocol) || !headerHasToken(r.Header, "Connection", "upgrade") {
		kstatus.Write(w, http.StatusUpgradeRequired, kstatus.ReasonBadRequest, "tether relay: this endpoint needs Connection: Upgrade and Upgrade: "+relayapi.TunnelProtocol)
		return
	}
	id, res, _, ok := s.caller(w, r, s.cfg.Metrics.tunnel)
	if !ok {
		return
	}
	reqID := newID()
	start := time.Now()
	who := res.Identity
	st, err := s.cfg.Router.Open(r.Context(), &tunnel.Open{Cluster: id, Request: reqID, Client: r.RemoteAddr, User: who.User}, ownerOf(res))
	if err != nil {
		s.log.Warn("relay: tunnel not opened", "cluster", id, "request", reqID, "error", err)
		var nc *NotConnectedError
		switch {
		case errors.As(err, &nc):
			s.cfg.Metrics.tunnel(ResultNotConnected)
		case errors.Is(err, ErrTooManyStreams):
			s.cfg.Metrics.tunnel(ResultTooMany)
		default:
			s.cfg.Metrics.tunnel(ResultFailed)
		}
		WriteError(w, err)
		return
	}
	defer st.Close()
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		s.log.Error("relay: hijack", "error", err)
		kstatus.Write(w, http.StatusInternalServerError, kstatus.ReasonInternalError, "tether relay: cannot take over the connection")
		return
	}
	s.track(conn)
	defer s.untrack(conn)
	defer conn.Close()
	if brw.Reader.Buffered() > 0 {
		// The caller sent bytes before the 101: they belong to no one.
		s.log.Warn("relay: caller sent data before the tunnel opened; closed", "cluster", id, "request", reqID)
		return
	}
	_ = conn.SetDeadline(time.Time{})
	if _, err := io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+relayapi.TunnelProtocol+"\r\n\r\n"); err != nil {
		return
	}
	s.cfg.Metrics.tunnel(ResultOpened)
	s.audit.Info("relay: tunnel opened", "request", reqID, "cluster", id, "user", who.User, "client", r.RemoteAddr)
	in, out := splice(conn, st)
	s.cfg.Metrics.spliced(in, out)
	s.audit.Info("relay: tunnel", "request", reqID, "cluster", id, "user", who.User, "client", r.RemoteAddr,
		"bytesIn", in, "bytesOut", out, "durationMs", time.Since(start).Milliseconds())
}

// splice copies both ways until both directions end, passing a half-close
// on; it returns the bytes sent caller→agent and agent→caller. An idle
// tunnel (a watch) holds copybuf.IdleSize per direction, not 32 KiB.
func splice(caller, agent net.Conn) (in, out int64) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		in, _ = copybuf.Copy(agent, caller)
		closeWrite(agent)
	}()
	out, _ = copybuf.Copy(caller, agent)
	closeWrite(caller)
	wg.Wait()
	return in, out
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

func newID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// ownerOf is whom a caller's stream is for.
func ownerOf(res identity.Result) StreamOwner {
	return StreamOwner{Identity: res.Identity, Audiences: res.Audiences, Expires: res.Expires}
}

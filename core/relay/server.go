package relay

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tether-k8s/tether/core/clusterid"
	"github.com/tether-k8s/tether/core/copybuf"
	"github.com/tether-k8s/tether/core/identity"
	"github.com/tether-k8s/tether/core/kstatus"
	"github.com/tether-k8s/tether/core/policy"
	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/relayapi"
	"github.com/tether-k8s/tether/core/tunnel"
)

// maxJoinBody bounds a join request.
const maxJoinBody = 64 << 10

// ServerConfig configures a Server.
type ServerConfig struct {
	// Registry holds the clusters and signs agents' credentials. Required.
	Registry *registry.Registry
	// Router routes callers' tunnels to agent sessions. Required.
	Router *Router
	// Authenticator checks callers' tokens before a tunnel opens. The agent
	// checks them again, itself, on every request. Required.
	Authenticator identity.Authenticator
	// RelayID names this replica in Welcome frames and logs. Zero means
	// "relay".
	RelayID string
	// Logger receives operational events; Audit one line per tunnel. Nil
	// discards.
	Logger, Audit *slog.Logger
	// Metrics, if not nil, counts tunnels, bytes and joins.
	Metrics *Metrics
	// Login, when its Issuer is set, is published unauthenticated at
	// GET /v1/login, so that `tether-proxy login --relay URL` needs no
	// other setting. Zero: that endpoint answers 404.
	Login relayapi.LoginSettings
	// AgentCertificate is the relay's certificate for agents (signed by
	// the registry's CA). When set, Handler also accepts agents' sessions
	// over WebSocket, for clusters whose egress passes only HTTP(S).
	AgentCertificate *tls.Certificate
	// AdminGroups, when not empty, serves the admin API (see AdminHandler)
	// on the public API too, under /v1/admin/, to callers whose token the
	// relay authenticates and whose mapped groups include one of these.
	// Empty (the default) serves it only on the local admin socket.
	AdminGroups []string
	// ClusterEndpoint, if not nil, serves each cluster's HTTPS endpoint,
	// /v1/clusters/{id}/k8s/..., where kubectl talks to the relay without
	// a local tether-proxy: the relay terminates the caller's TLS and sees
	// the requests in clear. Nil switches the endpoint off.
	ClusterEndpoint *ClusterEndpointConfig
}

// Server is the relay's public face: the HTTP API for callers and joining
// agents, and the endpoint where agents hold their sessions.
type Server struct {
	cfg      ServerConfig
	log      *slog.Logger
	audit    *slog.Logger
	conns    sync.WaitGroup
	draining atomic.Bool
	endpoint *clusterEndpoint // nil when ServerConfig.ClusterEndpoint is
}

// NewServer validates cfg and returns a Server.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Registry == nil || cfg.Router == nil || cfg.Authenticator == nil {
		return nil, errors.New("relay: ServerConfig.Registry, Router and Authenticator are required")
	}
	if err := cfg.Login.Validate(); err != nil {
		return nil, err
	}
	if cfg.RelayID == "" {
		cfg.RelayID = "relay"
	}
	if cfg.ClusterEndpoint != nil {
		if err := cfg.ClusterEndpoint.Validate(); err != nil {
			return nil, err
		}
	}
	discard := slog.New(slog.DiscardHandler)
	s := &Server{cfg: cfg, log: discard, audit: discard}
	if cfg.Logger != nil {
		s.log = cfg.Logger
	}
	if cfg.Audit != nil {
		s.audit = cfg.Audit
	}
	if cfg.ClusterEndpoint != nil {
		s.endpoint = newClusterEndpoint(s, *cfg.ClusterEndpoint)
	}
	return s, nil
}

// Close closes the cluster endpoint's idle connections to agents. The
// connections in use end with their requests, or when the router closes
// the sessions under them.
func (s *Server) Close() error {
	if s.endpoint != nil {
		s.endpoint.closeIdle()
	}
	return nil
}

func slogLogger(log *slog.Logger) *stdlog.Logger {
	// A stream cut mid-body (kubectl going away, an agent restarting) is
	// routine: logged quietly.
	return slog.NewLogLogger(log.Handler(), slog.LevelDebug)
}

// Handler returns the HTTP API:
//
//	POST /v1/join                      an agent trades a join token for its credential
//	GET  /v1/clusters/{id}             a caller reads a cluster's connection details
//	GET  /v1/clusters/{id}/tunnel      a caller's proxy opens a tunnel (Upgrade: tether-tunnel/1)
//	*    /v1/clusters/{id}/k8s/...     kubectl's requests to the cluster, forwarded to its agent (with ClusterEndpoint)
//	GET  /v1/agents/connect            an agent's session over WebSocket (with AgentCertificate)
//	GET  /v1/login                     where callers log in (relayapi.LoginSettings), unauthenticated
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+relayapi.AgentWebSocketPath, s.agentWebSocket)
	mux.HandleFunc("POST /v1/join", s.join)
	mux.HandleFunc("GET /v1/clusters/{id}", s.clusterInfo)
	mux.HandleFunc("GET /v1/clusters/{id}/tunnel", s.tunnel)
	mux.Handle("/v1/admin/", s.remoteAdmin())
	if s.endpoint != nil {
		mux.Handle("/v1/clusters/{id}/k8s/", s.endpoint)
	} else {
		mux.HandleFunc("/v1/clusters/{id}/k8s/", func(w http.ResponseWriter, _ *http.Request) {
			kstatus.Write(w, http.StatusNotFound, kstatus.ReasonNotFound,
				"tether: this relay's cluster endpoint is switched off (tether-relay serve --cluster-endpoint=false): reach the cluster with tether-proxy")
		})
	}
	mux.HandleFunc("GET "+relayapi.LoginPath, s.login)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		kstatus.Write(w, http.StatusNotFound, kstatus.ReasonNotFound, "tether: no such relay endpoint: "+r.Method+" "+r.URL.Path)
	})
	return mux
}

func (s *Server) login(w http.ResponseWriter, _ *http.Request) {
	if s.cfg.Login.Issuer == "" {
		kstatus.Write(w, http.StatusNotFound, kstatus.ReasonNotFound,
			"tether: this relay publishes no login settings (it was started without --login-issuer); pass --issuer and --client-id to tether-proxy login, or ask the relay's operator for them")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(s.cfg.Login)
}

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

// caller authenticates the request's bearer token, checks the cluster ID
// in the path and the cluster's access policy, and returns the cluster, the
// caller and the token. It writes the refusal itself, counts it with count
// (a result label) and returns ok=false.
func (s *Server) caller(w http.ResponseWriter, r *http.Request, count func(result string)) (id string, who identity.Identity, token string, ok bool) {
	id = r.PathValue("id")
	if err := clusterid.Validate(id); err != nil {
		count(ResultBadRequest)
		kstatus.Write(w, http.StatusBadRequest, kstatus.ReasonBadRequest, "tether: "+err.Error())
		return "", who, "", false
	}
	token, found := bearer(r)
	if !found {
		count(ResultUnauthorized)
		kstatus.Write(w, http.StatusUnauthorized, kstatus.ReasonUnauthorized, "tether: a bearer token is required to reach a cluster")
		return "", who, "", false
	}
	res, err := s.cfg.Authenticator.AuthenticateToken(r.Context(), token)
	if err != nil {
		count(ResultUnauthorized)
		why := strings.ReplaceAll(err.Error(), token, "<token>")
		s.log.Warn("relay: caller refused", "cluster", id, "client", r.RemoteAddr, "why", why)
		kstatus.Write(w, http.StatusUnauthorized, kstatus.ReasonUnauthorized, "tether: the bearer token was refused: "+why)
		return "", who, "", false
	}
	c, err := s.cfg.Registry.Cluster(id)
	if err != nil {
		count(ResultUnknown)
		kstatus.Write(w, http.StatusNotFound, kstatus.ReasonNotFound, "tether: "+err.Error())
		return "", who, "", false
	}
	if err := policy.CheckAudience(c.Policy, res.Audiences); err != nil {
		count(ResultForbidden)
		s.log.Warn("relay: caller refused: token for another audience", "cluster", id, "user", res.Identity.User, "client", r.RemoteAddr, "why", err)
		kstatus.Write(w, http.StatusForbidden, kstatus.ReasonForbidden, fmt.Sprintf("tether: cluster %s refuses this token: %v", id, err))
		return "", who, "", false
	}
	d, perr := policy.Check(c.Policy, res.Identity)
	if !d.Allowed {
		count(ResultForbidden)
		s.log.Warn("relay: caller refused by the cluster's policy", "cluster", id, "user", res.Identity.User, "groups", len(res.Identity.Groups),
			"client", r.RemoteAddr, "why", d.Why, "ruleErrors", perr)
		kstatus.Write(w, http.StatusForbidden, kstatus.ReasonForbidden, fmt.Sprintf("tether: %s may not reach cluster %s: %s (an administrator grants access with: tether-relay cluster grant %s --user|--group|--rule)",
			res.Identity.User, id, d.Why, id))
		return "", who, "", false
	}
	return id, res.Identity, token, true
}

// bearer returns the request's one bearer token.
func bearer(r *http.Request) (string, bool) {
	auth := r.Header.Values("Authorization")
	if len(auth) != 1 {
		return "", false
	}
	token, found := strings.CutPrefix(auth[0], "Bearer ")
	return token, found && token != ""
}

func (s *Server) clusterInfo(w http.ResponseWriter, r *http.Request) {
	id, _, _, ok := s.caller(w, r, s.cfg.Metrics.tunnel)
	if !ok {
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(relayapi.ClusterInfo{Cluster: id, Connected: s.cfg.Router.Sessions(id) > 0, CA: string(s.cfg.Registry.CAPEM())})
}

// tunnel authenticates the caller, opens a stream to one of the cluster's
// agents, answers 101 and splices bytes until either side ends.
func (s *Server) tunnel(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), relayapi.TunnelProtocol) || !headerHasToken(r.Header, "Connection", "upgrade") {
		kstatus.Write(w, http.StatusUpgradeRequired, kstatus.ReasonBadRequest, "tether: this endpoint needs Connection: Upgrade and Upgrade: "+relayapi.TunnelProtocol)
		return
	}
	id, who, _, ok := s.caller(w, r, s.cfg.Metrics.tunnel)
	if !ok {
		return
	}
	reqID := newID()
	start := time.Now()
	st, err := s.cfg.Router.Open(r.Context(), &tunnel.Open{Cluster: id, Request: reqID, Client: r.RemoteAddr, User: who.User})
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
		kstatus.Write(w, http.StatusInternalServerError, kstatus.ReasonInternalError, "tether: cannot take over the connection")
		return
	}
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

// agentWebSocket carries an agent's connection over WebSocket: inside it,
// the same mutual TLS and session as on the agent endpoint.
func (s *Server) agentWebSocket(w http.ResponseWriter, r *http.Request) {
	if s.cfg.AgentCertificate == nil {
		kstatus.Write(w, http.StatusNotFound, kstatus.ReasonNotFound, "tether: this relay does not accept agents over WebSocket")
		return
	}
	ws, err := tunnel.AcceptWebSocket(w, r)
	if err != nil {
		s.log.Warn("relay: agent WebSocket refused", "client", r.RemoteAddr, "error", err)
		return
	}
	s.log.Debug("relay: agent connected over WebSocket", "client", r.RemoteAddr)
	s.acceptAgent(r.Context(), tls.Server(ws, s.AgentTLSConfig(*s.cfg.AgentCertificate)))
}

// AgentTLSConfig returns the TLS configuration of the agent endpoint: TLS
// 1.3, the relay's certificate, and client certificates required and
// verified against the registry's CA.
func (s *Server) AgentTLSConfig(cert tls.Certificate) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(s.cfg.Registry.CACertificate())
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{tunnel.SessionALPN, tunnel.RenewALPN},
	}
}

// ServeAgents accepts agents' connections on l (a TLS listener with
// AgentTLSConfig) until ctx ends or l fails, and adds each accepted session
// to the router. It closes l and waits for the handshakes in progress.
func (s *Server) ServeAgents(ctx context.Context, l net.Listener) error {
	stop := context.AfterFunc(ctx, func() { _ = l.Close() })
	defer stop()
	defer s.conns.Wait()
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("relay: accept agents: %w", err)
		}
		s.conns.Add(1)
		go func() {
			defer s.conns.Done()
			s.acceptAgent(ctx, conn)
		}()
	}
}

func (s *Server) acceptAgent(ctx context.Context, conn net.Conn) {
	if tc, ok := conn.(*tls.Conn); ok {
		hctx, cancel := context.WithTimeout(ctx, tunnel.DefaultHandshakeTimeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			s.log.Warn("relay: agent TLS handshake failed", "remote", conn.RemoteAddr(), "error", err)
			_ = conn.Close()
			return
		}
		if tc.ConnectionState().NegotiatedProtocol == tunnel.RenewALPN {
			s.renew(tc)
			return
		}
	}
	sess, err := tunnel.AcceptAgent(ctx, conn, tunnel.RelayConfig{
		Authorize: s.authorizeAgent,
		Session:   newID(),
		Relay:     s.cfg.RelayID,
		// The router's window: its stream caps bound window × streams.
		Yamux:  tunnel.YamuxConfig(s.cfg.Router.StreamWindow()),
		Logger: s.log,
	})
	if err != nil {
		s.log.Warn("relay: agent refused", "remote", conn.RemoteAddr(), "error", err)
		return
	}
	if err := s.cfg.Router.Add(sess); err != nil {
		_ = sess.Close()
	}
}

// renew answers one Renew on conn with a new certificate for the cluster
// the agent's current (verified, listed) certificate names.
func (s *Server) renew(conn *tls.Conn) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(tunnel.DefaultHandshakeTimeout))
	var req tunnel.Renew
	if err := tunnel.ReadFrame(conn, &req); err != nil {
		s.log.Warn("relay: bad renewal request", "remote", conn.RemoteAddr(), "error", err)
		return
	}
	peer := conn.ConnectionState().PeerCertificates
	if len(peer) == 0 {
		_ = tunnel.WriteFrame(conn, &tunnel.Renewed{Reason: tunnel.ReasonRevoked, Message: "no client certificate"})
		return
	}
	cred, err := s.cfg.Registry.Renew(peer[0], req.CSR)
	if err != nil {
		reason := tunnel.ReasonRevoked
		if errors.Is(err, registry.ErrBadCSR) {
			reason = tunnel.ReasonBadRequest
		}
		s.cfg.Metrics.renewal(false)
		s.log.Warn("relay: renewal refused", "remote", conn.RemoteAddr(), "error", err)
		_ = tunnel.WriteFrame(conn, &tunnel.Renewed{Reason: reason, Message: err.Error()})
		return
	}
	s.cfg.Metrics.renewal(true)
	s.log.Info("relay: agent credential renewed", "cluster", cred.ClusterID, "notAfter", cred.NotAfter, "remote", conn.RemoteAddr())
	if err := tunnel.WriteFrame(conn, &tunnel.Renewed{OK: true, Certificate: string(cred.CertPEM)}); err != nil {
		s.log.Warn("relay: renewal answer not delivered; the agent will retry", "cluster", cred.ClusterID, "error", err)
	}
}

// authorizeAgent accepts an agent whose certificate the registry lists as
// current for the very cluster its Hello names.
func (s *Server) authorizeAgent(_ context.Context, h *tunnel.Hello, st tls.ConnectionState) error {
	if s.draining.Load() {
		return tunnel.Refuse(tunnel.ReasonDraining, "relay "+s.cfg.RelayID+" is shutting down; connect to another replica or retry")
	}
	if len(st.PeerCertificates) == 0 {
		return tunnel.Refuse(tunnel.ReasonRevoked, "no client certificate")
	}
	id, err := s.cfg.Registry.VerifyPeer(st.PeerCertificates[0])
	if err != nil {
		return tunnel.Refuse(tunnel.ReasonRevoked, err.Error())
	}
	if id != h.Cluster {
		return tunnel.Refuse(tunnel.ReasonClusterMismatch, fmt.Sprintf("the certificate is for cluster %s, not %s", id, h.Cluster))
	}
	return nil
}

// Drain prepares the relay to stop without cutting what it carries: it
// refuses new agent sessions with ReasonDraining, sends GoAway on every
// session (agents open replacements; a load balancer sends them to another
// replica), keeps serving callers, and returns once no tunnel is open or
// ctx ends, whichever is first. The caller then stops the servers and closes
// the router, which ends whatever is left.
func (s *Server) Drain(ctx context.Context) {
	s.draining.Store(true)
	var grace time.Duration
	if d, ok := ctx.Deadline(); ok {
		grace = time.Until(d)
	}
	reached := s.cfg.Router.GoAway(ctx, grace, "relay "+s.cfg.RelayID+" is shutting down")
	s.log.Info("relay: draining", "sessionsToldToMove", reached, "openTunnels", s.cfg.Router.Streams(), "grace", grace.Round(time.Millisecond))
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	// Idle pooled connections of the cluster endpoint hold streams: close
	// them, and those that fall idle while draining.
	_ = s.Close()
	for s.cfg.Router.Streams() > 0 {
		_ = s.Close()
		select {
		case <-ctx.Done():
			s.log.Warn("relay: drain timed out; ending the tunnels still open", "openTunnels", s.cfg.Router.Streams())
			return
		case <-t.C:
		}
	}
	s.log.Info("relay: drained: no tunnel open")
}

// Draining reports whether Drain was called: the relay's readiness.
func (s *Server) Draining() bool { return s.draining.Load() }

package relay

import (
	"crypto/tls"
	"errors"
	"fmt"
	stdlog "log"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/tether-k8s/tether/core/identity"
	"github.com/tether-k8s/tether/core/kstatus"
	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/relayapi"
	"github.com/tether-k8s/tether/core/tunnel"
)

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
	// AdminAudience is the audience a token must be for to reach the
	// remote admin API. No other hop accepts it: the tunnel endpoint and
	// the cluster endpoint refuse tokens for it, so an administrator's
	// token that an agent saw (every agent sees its callers' tokens) cannot
	// be replayed at the admin API. Zero means DefaultAdminAudience.
	AdminAudience string
	// RelayAudience is the relay's own audience, for the tokens callers
	// present on the relay hop; the relay refuses every token for a
	// cluster's audience (relayapi.ClusterAudiencePrefix), which that
	// cluster's agent saw, and counts those for both (see
	// relayapi.CheckRelayAudiences). Zero means relayapi.DefaultRelayAudience.
	RelayAudience string
	// ClusterEndpoint, if not nil, serves each cluster's HTTPS endpoint,
	// /v1/clusters/{id}/k8s/..., where kubectl talks to the relay without
	// a local tether-proxy: the relay terminates the caller's TLS and sees
	// the requests in clear. Nil switches the endpoint off.
	ClusterEndpoint *ClusterEndpointConfig
	// WrapAgentConn, when not nil, wraps each agent connection after its
	// TLS handshake, before the session runs on it (the benchmarks' A/B of
	// how frames are written). The wrapper must pass bytes through
	// unchanged and implement ConnectionState, so that the session is
	// authorized against the agent's certificate. Nil uses the connection
	// as it is.
	WrapAgentConn func(*tls.Conn) net.Conn
	// JoinLimit rate-limits the unauthenticated join endpoint per client
	// address and in all, before a join reaches the registry. Zero values
	// are registry.JoinLimitConfig's defaults.
	JoinLimit registry.JoinLimitConfig
	// OtherReplicas, when set, returns how many other replicas that do not
	// drain could take an agent's session (the mesh's Others): an agent
	// whose Hello asks to avoid this replica (it holds the agent's other
	// session) is refused with ReasonElsewhere while it is not 0.
	OtherReplicas func() int
	// Console, if not nil, serves the web console at /ui (see
	// ConsoleConfig); it signs in at Login's issuer, which must be set.
	// Nil: /ui answers 404.
	Console *ConsoleConfig
	// OnAgentSession, when not nil, is called with each agent session the
	// relay authorized, before the router routes it (for tests that wait
	// for sessions). It must not change the session: the simulator's
	// planted bug breaks exactly that rule, to prove its invariants catch
	// a session routed under another cluster.
	OnAgentSession func(*tunnel.RelaySession)
}

// Validate reports the first problem with c, naming the field.
func (c *ServerConfig) Validate() error {
	if c.Registry == nil || c.Router == nil || c.Authenticator == nil {
		return errors.New("relay: ServerConfig.Registry, Router and Authenticator are required")
	}
	if err := c.Login.Validate(); err != nil {
		return fmt.Errorf("relay: ServerConfig.Login: %w", err)
	}
	if c.ClusterEndpoint != nil {
		if err := c.ClusterEndpoint.Validate(); err != nil {
			return err
		}
	}
	if c.Console != nil && c.Login.Issuer == "" {
		return errors.New("relay: ServerConfig.Console needs Login's issuer: the console signs in there")
	}
	return nil
}

// withDefaults returns c with its zero fields set to their defaults.
func (c ServerConfig) withDefaults() ServerConfig {
	if c.AdminAudience == "" {
		c.AdminAudience = DefaultAdminAudience
	}
	if c.RelayAudience == "" {
		c.RelayAudience = relayapi.DefaultRelayAudience
	}
	if c.RelayID == "" {
		c.RelayID = "relay"
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Audit == nil {
		c.Audit = slog.New(slog.DiscardHandler)
	}
	return c
}

// DefaultAdminAudience is the audience of tokens for the remote admin API.
const DefaultAdminAudience = "tether-admin"

// Server is the relay's public face: the HTTP API for callers and joining
// agents, and the endpoint where agents hold their sessions.
type Server struct {
	cfg      ServerConfig
	log      *slog.Logger
	audit    *slog.Logger
	conns    sync.WaitGroup // agent connections being accepted
	draining atomic.Bool
	// tunnels are the callers' connections the tunnel endpoint took over
	// (hijacked, so http.Server no longer tracks them): Close ends them
	// and waits for their splices.
	tunnelsMu sync.Mutex
	tunnels   map[net.Conn]struct{}
	spliced   sync.WaitGroup
	endpoint  *clusterEndpoint // nil when ServerConfig.ClusterEndpoint is
	admin     *AdminService
	joins     *registry.JoinLimiter // before a join reaches the registry
	console   http.Handler          // nil when ServerConfig.Console is
	auditRing *auditRing            // the console's recent tunnels; nil without it
}

// NewServer validates cfg and returns a Server.
func NewServer(cfg ServerConfig) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	joins, err := registry.NewJoinLimiter(cfg.JoinLimit)
	if err != nil {
		return nil, fmt.Errorf("relay: ServerConfig.JoinLimit: %w", err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, audit: cfg.Audit, tunnels: map[net.Conn]struct{}{}, joins: joins}
	if cfg.ClusterEndpoint != nil {
		s.endpoint = newClusterEndpoint(s, *cfg.ClusterEndpoint)
	}
	if cfg.Console != nil {
		s.auditRing = newAuditRing(consoleAuditLines)
		s.audit = slog.New(auditTee{ring: s.auditRing, inner: cfg.Audit.Handler()})
		if s.console, err = s.newConsole(); err != nil {
			return nil, fmt.Errorf("relay: ServerConfig.Console: %w", err)
		}
	}
	s.admin = &AdminService{Registry: cfg.Registry, Router: cfg.Router, Logger: s.log, Audit: s.audit}
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

// CloseTunnels ends every caller's tunnel the server holds and waits for
// their splices to finish. Call it when the relay stops, after the router
// closed the sessions under them.
func (s *Server) CloseTunnels() {
	s.tunnelsMu.Lock()
	for c := range s.tunnels {
		_ = c.Close()
	}
	s.tunnelsMu.Unlock()
	s.spliced.Wait()
}

// track records a hijacked caller connection until untrack.
func (s *Server) track(c net.Conn) {
	s.tunnelsMu.Lock()
	defer s.tunnelsMu.Unlock()
	s.tunnels[c] = struct{}{}
	s.spliced.Add(1)
}

func (s *Server) untrack(c net.Conn) {
	s.tunnelsMu.Lock()
	delete(s.tunnels, c)
	s.tunnelsMu.Unlock()
	s.spliced.Done()
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
//	GET  /v1/whoami                    a caller reads its mapped identity and the clusters it may reach
//	GET  /v1/clusters/{id}/tunnel      a caller's proxy opens a tunnel (Upgrade: tether-tunnel/1)
//	*    /v1/clusters/{id}/k8s/...     kubectl's requests to the cluster, forwarded to its agent (with ClusterEndpoint)
//	GET  /v1/agents/connect            an agent's session over WebSocket (with AgentCertificate)
//	GET  /v1/login                     where callers log in (relayapi.LoginSettings), unauthenticated
//	GET  /ui/...                       the web console (with Console; package console)
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+relayapi.AgentWebSocketPath, s.agentWebSocket)
	mux.HandleFunc("POST /v1/join", s.join)
	mux.HandleFunc("GET /v1/clusters/{id}", s.clusterInfo)
	mux.HandleFunc("GET "+relayapi.WhoamiPath, s.whoami)
	mux.HandleFunc("GET /v1/clusters/{id}/tunnel", s.tunnel)
	mux.Handle("/v1/admin/", s.remoteAdmin())
	if s.endpoint != nil {
		mux.Handle("/v1/clusters/{id}/k8s/", s.endpoint)
	} else {
		mux.HandleFunc("/v1/clusters/{id}/k8s/", func(w http.ResponseWriter, _ *http.Request) {
			kstatus.Write(w, http.StatusNotFound, kstatus.ReasonNotFound,
				"tether relay: this relay's cluster endpoint is switched off (tether-relay serve --cluster-endpoint=false): reach the cluster with tether-proxy")
		})
	}
	mux.HandleFunc("GET "+relayapi.LoginPath, s.login)
	if s.console != nil {
		mux.Handle("/ui/", s.console)
		mux.Handle("/ui", s.console)
	} else {
		mux.HandleFunc("/ui/", func(w http.ResponseWriter, _ *http.Request) {
			kstatus.Write(w, http.StatusNotFound, kstatus.ReasonNotFound, "tether relay: this relay's web console is off (start it with tether-relay serve --console)")
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		kstatus.Write(w, http.StatusNotFound, kstatus.ReasonNotFound, "tether relay: no such relay endpoint: "+r.Method+" "+r.URL.Path)
	})
	return closeAfterChunked(mux)
}

// closeAfterChunked closes the connection after answering a request whose
// body is chunked. RFC 9112 (6.3) requires it after a request that had both
// Transfer-Encoding and Content-Length: a proxy in front of the relay that
// framed it by Content-Length took part of it for the start of the next
// request, maybe another client's on a connection it shares. Go's server
// reads such a request as chunked, but drops the Content-Length before a
// handler sees it and keeps the connection open, so every chunked request
// ends its connection (kubectl sends its bodies with a Content-Length).
func closeAfterChunked(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TransferEncoding) > 0 {
			w.Header().Set("Connection", "close")
		}
		next.ServeHTTP(w, r)
	})
}

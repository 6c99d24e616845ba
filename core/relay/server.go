package relay

import (
	"crypto/tls"
	"errors"
	stdlog "log"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/tether-k8s/tether/core/identity"
	"github.com/tether-k8s/tether/core/kstatus"
	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/relayapi"
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
	admin    *AdminService
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
	s.admin = &AdminService{Registry: cfg.Registry, Router: cfg.Router, Logger: s.log}
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

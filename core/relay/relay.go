package relay

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	apiserverapi "k8s.io/apiserver/pkg/apis/apiserver"

	"github.com/tether-k8s/tether/core/authn"
	"github.com/tether-k8s/tether/core/identity"
	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/relay/console"
	"github.com/tether-k8s/tether/core/relay/mesh"
	"github.com/tether-k8s/tether/core/relayapi"
	"github.com/tether-k8s/tether/core/tunnel"
)

// Options are what a relay is assembled from. tether-relay serve turns its
// flags into Options, and the simulator and the benchmarks fill them in
// directly: all three run the relay Start builds, with every check on.
type Options struct {
	// Registry says where the relay's state is kept: clusters, hashed join
	// tokens, the CA, credentials and access policies. Required.
	Registry registry.Config
	// Authentication says which tokens callers may present
	// (apiserver.config.k8s.io AuthenticationConfiguration). Required
	// unless Authenticator is set.
	Authentication *apiserverapi.AuthenticationConfiguration
	// Authenticator, when set, authenticates callers instead of one built
	// from Authentication (the benchmarks, which do not measure JWT
	// verification; tests).
	Authenticator identity.Authenticator
	// Hostnames are the DNS names or IP addresses agents and callers use to
	// reach the relay; the relay's CA signs its serving certificate for
	// them. Required.
	Hostnames []string
	// APICertificate, when set, serves the API instead of the certificate
	// the relay's CA signs (a public CA's). The agent endpoint always uses
	// the relay's CA, which agents pin.
	APICertificate *tls.Certificate
	// APIAddr is the address of the HTTPS API (callers' tunnels, joins,
	// agents over WebSocket, the cluster endpoint). Required.
	APIAddr string
	// AgentAddr is the address of the agent endpoint (mutual TLS).
	// Required.
	AgentAddr string
	// HealthAddr is the address of /healthz, /readyz and /metrics. Empty
	// serves none.
	HealthAddr string
	// AdminSocket is the Unix socket of the local admin API (mode 0600).
	// Empty serves none.
	AdminSocket string
	// RelayID names this replica in Welcome frames and logs. Zero means the
	// host name.
	RelayID string
	// AdminGroups, when not empty, serves the admin API on the public API
	// to callers in one of these mapped groups (see ServerConfig).
	AdminGroups []string
	// AdminAudience is the audience of tokens for the remote admin API,
	// which the tunnel and cluster endpoints refuse (see ServerConfig).
	// Zero means DefaultAdminAudience.
	AdminAudience string
	// ClusterEndpoint, if not nil, serves each cluster's HTTPS endpoint for
	// kubeconfigs with no local process (see ServerConfig).
	ClusterEndpoint *ClusterEndpointConfig
	// RelayAudience is the relay's own audience (tether-relay
	// --login-audience; see ServerConfig.RelayAudience), published in
	// Login. When set, Validate refuses an Authentication that accepts it
	// from no issuer (from Login's issuer, when that is set): callers could
	// get no token the relay accepts on its own hop. Zero means
	// relayapi.DefaultRelayAudience, unchecked.
	RelayAudience string
	// Login is published at GET /v1/login. Its issuer must be one of
	// Authentication's, with the client ID among its audiences.
	Login relayapi.LoginSettings
	// Console, if not nil, serves the web console at /ui on the API (see
	// ConsoleConfig). It signs in at Login's issuer, which must be set;
	// its client ID must be among that issuer's audiences in
	// Authentication, and be neither a cluster's audience nor the admin
	// API's. Nil: no console.
	Console *ConsoleConfig
	// Peer, when set, makes this relay one replica of several on the
	// registry's etcd (see PeerOptions). Nil: a relay alone, even on etcd.
	Peer *PeerOptions
	// JoinLimit rate-limits the unauthenticated join endpoint; zero values
	// are registry.JoinLimitConfig's defaults (1 join per second and 5 at
	// once per address).
	JoinLimit registry.JoinLimitConfig
	// Timeouts bound how long a client may take over its requests, on the
	// API, the health endpoint and the admin socket.
	Timeouts Timeouts
	// Router sets the stream limits. Its Logger is Logger when nil.
	Router RouterConfig
	// Logger receives operational events; Audit one line per tunnel and per
	// admin request. Nil discards.
	Logger, Audit *slog.Logger
	// Prometheus receives the relay's metrics, served at HealthAddr's
	// /metrics. Nil means a registry of the relay's own.
	Prometheus *prometheus.Registry

	// Listen makes the relay's listeners (the simulator's in-memory
	// network). Nil means net.Listen.
	Listen func(network, addr string) (net.Listener, error)
	// DialContext makes the relay's own connections (to the issuers of
	// Authentication, for their keys; to the other replicas). Nil means a
	// net.Dialer.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// WrapAgentConn wraps agent connections (see ServerConfig). Nil uses
	// them as they are.
	WrapAgentConn func(*tls.Conn) net.Conn
	// OnAgentSession is called with each authorized agent session before it
	// is routed (see ServerConfig). Nil: nothing is called.
	OnAgentSession func(*tunnel.RelaySession)
}

// Validate reports the first problem with o, naming the field. It runs
// before anything is opened or created, so that a bad setting never costs a
// store or a CA.
func (o *Options) Validate() error {
	switch {
	case len(o.Hostnames) == 0:
		return errors.New("relay: Options.Hostnames is empty: name the DNS names or addresses agents and callers use to reach this relay")
	case o.APIAddr == "" || o.AgentAddr == "":
		return errors.New("relay: Options.APIAddr and AgentAddr are required")
	case o.Authentication == nil && o.Authenticator == nil:
		return errors.New("relay: Options.Authentication is nil: without it no caller can be authenticated")
	}
	if err := o.Timeouts.Validate(); err != nil {
		return err
	}
	if err := o.JoinLimit.Validate(); err != nil {
		return fmt.Errorf("relay: Options.JoinLimit: %w", err)
	}
	if err := o.Registry.Validate(); err != nil {
		return err
	}
	if o.Peer != nil {
		if err := o.Peer.Validate(); err != nil {
			return err
		}
		if o.Registry.Store != registry.StoreEtcd {
			return errors.New("relay: Options.Peer needs the registry on etcd (--store etcd): replicas find each other and their routes there")
		}
	}
	if err := o.Router.Validate(); err != nil {
		return err
	}
	if err := o.Login.Validate(); err != nil {
		return err
	}
	if o.ClusterEndpoint != nil {
		if err := o.ClusterEndpoint.Validate(); err != nil {
			return err
		}
	}
	if o.Authentication != nil {
		if err := (&authn.Config{Authentication: o.Authentication}).Validate(); err != nil {
			return err
		}
		if err := checkLogin(o.Login, o.Authentication); err != nil {
			return err
		}
		if err := checkRelayAudience(o.RelayAudience, o.AdminAudience, o.Login.Issuer, o.Authentication); err != nil {
			return err
		}
	}
	if o.Console != nil {
		if err := checkConsole(*o.Console, o.Login, o.AdminAudience, o.Authentication); err != nil {
			return err
		}
	}
	return nil
}

// checkConsole refuses a console that could sign no one in: without a
// login issuer, for a client ID the authentication configuration does not
// accept from it, or for another hop's audience.
func checkConsole(c ConsoleConfig, l relayapi.LoginSettings, admin string, ac *apiserverapi.AuthenticationConfiguration) error {
	if l.Issuer == "" {
		return errors.New("relay: the console (--console) signs in at the login issuer: set --login-issuer and --login-client-id")
	}
	id := cmp.Or(c.ClientID, l.ClientID)
	switch {
	case strings.HasPrefix(id, relayapi.ClusterAudiencePrefix):
		return fmt.Errorf("relay: the console's client ID %q is a cluster's audience (%s...), which agents accept: give the console a client of its own or the login's", id, relayapi.ClusterAudiencePrefix)
	case id == cmp.Or(admin, DefaultAdminAudience):
		return fmt.Errorf("relay: the console's client ID %q is the admin API's audience: give them different names", id)
	}
	if err := (&console.Config{Issuer: l.Issuer, ClientID: id, RedirectURL: c.RedirectURL, Authenticator: noAuthenticator{}, Source: consoleSource{}}).Validate(); err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	if ac == nil {
		return nil
	}
	for _, j := range ac.JWT {
		if j.Issuer.URL == l.Issuer {
			if slices.Contains(j.Issuer.Audiences, id) {
				return nil
			}
			return fmt.Errorf("relay: the console's client ID %q is not among the audiences of issuer %s in the authentication configuration (%v): its ID tokens would be refused",
				id, l.Issuer, j.Issuer.Audiences)
		}
	}
	return nil
}

// noAuthenticator stands in for the authenticator when a console's
// settings are only validated.
type noAuthenticator struct{}

func (noAuthenticator) AuthenticateToken(context.Context, string) (identity.Result, error) {
	return identity.Result{}, errors.New("relay: not an authenticator")
}

// checkLogin refuses login settings the authentication configuration would
// not accept: a login at an issuer it does not trust, or for a client that
// is not among that issuer's audiences, could only give tokens the relay
// refuses.
func checkLogin(l relayapi.LoginSettings, ac *apiserverapi.AuthenticationConfiguration) error {
	if l.Issuer == "" {
		return nil
	}
	for _, j := range ac.JWT {
		if j.Issuer.URL != l.Issuer {
			continue
		}
		if slices.Contains(j.Issuer.Audiences, l.ClientID) {
			return nil
		}
		return fmt.Errorf("relay: login client ID %q is not among the audiences of issuer %s in the authentication configuration (%v): tokens from that login would be refused",
			l.ClientID, l.Issuer, j.Issuer.Audiences)
	}
	return fmt.Errorf("relay: login issuer %s is not an issuer of the authentication configuration: tokens from that login would be refused", l.Issuer)
}

// checkRelayAudience refuses a relay audience that is a cluster's or the
// admin API's, or that the authentication configuration accepts from no
// issuer (from loginIssuer's, when set).
func checkRelayAudience(aud, admin, loginIssuer string, ac *apiserverapi.AuthenticationConfiguration) error {
	if aud == "" {
		return nil
	}
	if admin == "" {
		admin = DefaultAdminAudience
	}
	switch {
	case strings.HasPrefix(aud, relayapi.ClusterAudiencePrefix):
		return fmt.Errorf("relay: the relay's audience %q is a cluster's (%s...), which agents accept: give the relay an audience of its own, such as %s",
			aud, relayapi.ClusterAudiencePrefix, relayapi.DefaultRelayAudience)
	case aud == admin:
		return fmt.Errorf("relay: the relay's audience %q is the admin API's: give them different audiences", aud)
	}
	var seen []string
	for _, j := range ac.JWT {
		if loginIssuer != "" && j.Issuer.URL != loginIssuer {
			continue
		}
		if slices.Contains(j.Issuer.Audiences, aud) {
			return nil
		}
		seen = append(seen, j.Issuer.Audiences...)
	}
	where := "any issuer"
	if loginIssuer != "" {
		where = "the login issuer " + loginIssuer
	}
	return fmt.Errorf("relay: the relay's audience %s (--login-audience) is not among the audiences the authentication configuration accepts from %s (%v): "+
		"callers could get no token for the relay hop; add %s to that issuer's audiences (with audienceMatchPolicy: MatchAny beside the others; docs/operations.md, \"Upgrading to audiences per hop\")",
		aud, where, seen, aud)
}

// withDefaults returns o with its zero fields set to their defaults.
func (o Options) withDefaults() Options {
	if o.RelayID == "" {
		o.RelayID, _ = os.Hostname()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Audit == nil {
		o.Audit = slog.New(slog.DiscardHandler)
	}
	if o.Router.Logger == nil {
		o.Router.Logger = o.Logger
	}
	if o.Prometheus == nil {
		o.Prometheus = prometheus.NewRegistry()
	}
	if o.Listen == nil {
		o.Listen = net.Listen
	}
	o.Timeouts = o.Timeouts.withDefaults()
	return o
}

// Timeouts bound what a client can hold a connection with. Zero values are
// the defaults.
type Timeouts struct {
	// Header bounds reading a request's headers. Zero means 10s.
	Header time.Duration
	// Request bounds reading a whole request (its body too) and writing
	// its answer, on every endpoint but those that stream: a caller's
	// tunnel, an agent's session over WebSocket, and the cluster endpoint
	// once the caller is authenticated. Zero means 30s.
	Request time.Duration
	// Idle closes a keep-alive connection idle this long. Zero means 2m.
	Idle time.Duration
}

// Relay is a running relay: its registry, router and servers, and the
// goroutines that serve them, which Close waits for.
type Relay struct {
	opts          Options
	log           *slog.Logger
	reg           *registry.Registry
	router        *Router
	srv           *Server
	authenticator *authn.Authenticator // nil when Options.Authenticator is set
	api, admin    *http.Server
	health        *http.Server
	agentL        net.Listener
	apiAddr       net.Addr
	healthL       net.Listener
	mesh          *meshRemote // nil without Options.Peer
	cancel        context.CancelFunc
	wg            sync.WaitGroup
	errc          chan error
	closeOnce     sync.Once
}

// apiMaxHeaderBytes bounds a request's headers on the API (a caller's
// token with a thousand groups is about 13 KiB); the health endpoint and
// the admin socket take healthMaxHeaderBytes.
const (
	apiMaxHeaderBytes    = 64 << 10
	healthMaxHeaderBytes = 8 << 10
)

// Defaults of Timeouts.
const (
	DefaultHeaderTimeout  = 10 * time.Second
	DefaultRequestTimeout = 30 * time.Second
	DefaultIdleTimeout    = 2 * time.Minute
)

// Validate reports a negative timeout.
func (t *Timeouts) Validate() error {
	if t.Header < 0 || t.Request < 0 || t.Idle < 0 {
		return fmt.Errorf("relay: Options.Timeouts %+v must not be negative", *t)
	}
	return nil
}

func (t Timeouts) withDefaults() Timeouts {
	if t.Header == 0 {
		t.Header = DefaultHeaderTimeout
	}
	if t.Request == 0 {
		t.Request = DefaultRequestTimeout
	}
	if t.Idle == 0 {
		t.Idle = DefaultIdleTimeout
	}
	return t
}

// server returns an http.Server with t's limits for handler.
func (t Timeouts) server(h http.Handler, maxHeader int, log *slog.Logger) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: t.Header, ReadTimeout: t.Request, WriteTimeout: t.Request, IdleTimeout: t.Idle,
		MaxHeaderBytes: maxHeader, ErrorLog: slogLogger(log)}
}

// Start validates opts, opens the store, and starts serving the API, the
// agent endpoint and, when set, the health endpoint and the local admin
// socket. Every listener is opened before Start returns, so a busy port is
// an error here rather than a relay running without it. Call Close to stop;
// Done reports a server that failed.
func Start(ctx context.Context, opts Options) (_ *Relay, err error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	r := &Relay{opts: opts, log: opts.Logger, errc: make(chan error, 3)}
	ctx, r.cancel = context.WithCancel(ctx)
	// Undo whatever was started when a later step fails.
	defer func() {
		if err != nil {
			_ = r.Close()
		}
	}()

	// The listeners first: nothing is created on disk for a relay that
	// cannot serve.
	if r.agentL, err = opts.Listen("tcp", opts.AgentAddr); err != nil {
		return nil, fmt.Errorf("relay: listen for agents on %s: %w", opts.AgentAddr, err)
	}
	apiL, err := opts.Listen("tcp", opts.APIAddr)
	if err != nil {
		return nil, fmt.Errorf("relay: listen for the API on %s: %w", opts.APIAddr, err)
	}
	r.apiAddr = apiL.Addr()
	var healthL, adminL net.Listener
	if opts.HealthAddr != "" {
		if healthL, err = opts.Listen("tcp", opts.HealthAddr); err != nil {
			_ = apiL.Close()
			return nil, fmt.Errorf("relay: listen for /healthz, /readyz and /metrics on %s: %w", opts.HealthAddr, err)
		}
	}
	if opts.AdminSocket != "" {
		if adminL, err = ListenAdmin(opts.AdminSocket); err != nil {
			_ = apiL.Close()
			if healthL != nil {
				_ = healthL.Close()
			}
			return nil, err
		}
	}
	var peerL net.Listener
	if opts.Peer != nil {
		if peerL, err = opts.Listen("tcp", opts.Peer.Addr); err != nil {
			_ = apiL.Close()
			for _, l := range []net.Listener{healthL, adminL} {
				if l != nil {
					_ = l.Close()
				}
			}
			return nil, fmt.Errorf("relay: listen for the other replicas on %s: %w", opts.Peer.Addr, err)
		}
	}
	closeListeners := func() {
		for _, l := range []net.Listener{apiL, healthL, adminL, peerL} {
			if l != nil {
				_ = l.Close()
			}
		}
	}

	opts.Registry.Logger = cmpLogger(opts.Registry.Logger, opts.Logger)
	if r.reg, err = registry.Open(opts.Registry); err != nil {
		closeListeners()
		return nil, err
	}
	authenticator := opts.Authenticator
	if authenticator == nil {
		r.authenticator, err = authn.New(ctx, authn.Config{Authentication: opts.Authentication, DialContext: opts.DialContext, Logger: opts.Logger})
		if err != nil {
			closeListeners()
			return nil, err
		}
		authenticator = r.authenticator
	}
	// Sessions' credentials are checked against the registry: at once
	// when it changes (follow), and again when each stops holding.
	reg := r.reg
	opts.Router.Verify = func(c *x509.Certificate) (time.Time, error) {
		_, until, err := reg.VerifyPeerUntil(c)
		return until, err
	}
	if peerL != nil {
		if r.mesh, err = r.startMesh(ctx, peerL); err != nil {
			closeListeners()
			return nil, err
		}
		opts.Router.Remote = r.mesh
	}
	if r.router, err = NewRouter(opts.Router); err != nil {
		closeListeners()
		return nil, err
	}
	if r.mesh != nil {
		r.mesh.router.Store(r.router)
	}
	metrics, err := NewMetrics(opts.Prometheus, r.router, r.reg)
	if err != nil {
		closeListeners()
		return nil, fmt.Errorf("relay: metrics: %w", err)
	}
	serving, err := r.reg.ServingCertificate(opts.Hostnames)
	if err != nil {
		closeListeners()
		return nil, err
	}
	if opts.Console != nil && opts.Console.HTTPClient == nil {
		cc := *opts.Console
		if cc.HTTPClient, err = consoleHTTPClient(opts.Authentication, opts.Login.Issuer, opts.DialContext); err != nil {
			closeListeners()
			return nil, err
		}
		opts.Console = &cc
	}
	r.srv, err = NewServer(ServerConfig{Console: opts.Console, Registry: r.reg, Router: r.router, Authenticator: authenticator, RelayID: opts.RelayID,
		Logger: opts.Logger, Audit: opts.Audit, Metrics: metrics, Login: opts.Login, AgentCertificate: &serving,
		AdminGroups: opts.AdminGroups, AdminAudience: opts.AdminAudience, RelayAudience: opts.RelayAudience, ClusterEndpoint: opts.ClusterEndpoint, WrapAgentConn: opts.WrapAgentConn, OnAgentSession: opts.OnAgentSession,
		JoinLimit: opts.JoinLimit, OtherReplicas: r.otherReplicas()})
	if err != nil {
		closeListeners()
		return nil, err
	}
	apiCert := serving
	if opts.APICertificate != nil {
		apiCert = *opts.APICertificate
	}

	// Every request must arrive, and be answered, within the limits; what
	// streams (tunnels, agents over WebSocket, the cluster endpoint once
	// the caller is authenticated) lifts them for itself.
	r.api = opts.Timeouts.server(r.srv.Handler(), apiMaxHeaderBytes, opts.Logger)
	r.api.TLSConfig = &tls.Config{Certificates: []tls.Certificate{apiCert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}
	r.serve("agent endpoint", func() error {
		return r.srv.ServeAgents(ctx, tlsListener(r.agentL, r.srv.AgentTLSConfig(serving)))
	})
	r.serve("API", func() error { return ignoreClosed(r.api.ServeTLS(apiL, "", "")) })
	r.serve("registry change feed", func() error { r.follow(ctx); return nil })
	if adminL != nil {
		r.admin = opts.Timeouts.server(r.srv.AdminHandler(), healthMaxHeaderBytes, opts.Logger)
		r.serve("admin socket", func() error { return ignoreClosed(r.admin.Serve(adminL)) })
	}
	if healthL != nil {
		r.healthL = healthL
		r.health = opts.Timeouts.server(r.healthHandler(), healthMaxHeaderBytes, opts.Logger)
		r.serve("health endpoint", func() error { return ignoreClosed(r.health.Serve(healthL)) })
	}
	r.log.Info("relay: serving", "relay", opts.RelayID, "api", apiL.Addr().String(), "agents", r.agentL.Addr().String(),
		"health", opts.HealthAddr, "adminSocket", opts.AdminSocket, "hostnames", strings.Join(opts.Hostnames, ","),
		"clusterEndpoint", opts.ClusterEndpoint != nil, "maxStreams", r.router.MaxStreams(),
		"maxStreamsPerCluster", r.router.cfg.MaxStreamsPerCluster, "maxStreamsPerCaller", r.router.cfg.MaxStreamsPerCaller)
	return r, nil
}

func cmpLogger(l, fallback *slog.Logger) *slog.Logger {
	if l != nil {
		return l
	}
	return fallback
}

// tlsListener serves TLS on l with cfg.
func tlsListener(l net.Listener, cfg *tls.Config) net.Listener { return tls.NewListener(l, cfg) }

func ignoreClosed(err error) error {
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// serve runs fn in a goroutine that Close waits for; its error, if any,
// is reported on Done.
func (r *Relay) serve(what string, fn func() error) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		if err := fn(); err != nil {
			select {
			case r.errc <- fmt.Errorf("relay: %s: %w", what, err):
			default:
			}
		}
	}()
}

func (r *Relay) healthHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if r.srv.Draining() {
			http.Error(w, "draining: this relay is shutting down", http.StatusServiceUnavailable)
			return
		}
		// A relay cut off from its store still routes from what it holds:
		// it stays ready, and says so.
		st := r.reg.StoreStatus()
		if !st.Available {
			fmt.Fprintf(w, "ok, degraded: %s unavailable since %s (%v): routing from memory; joins, renewals and admin changes are refused\n",
				st.Store, st.Since.UTC().Format(time.RFC3339), st.Err)
			return
		}
		fmt.Fprintf(w, "ok\nstore: %s, revision %d\n", st.Store, st.Revision)
	})
	mux.Handle("/metrics", promhttp.HandlerFor(r.opts.Prometheus, promhttp.HandlerOpts{}))
	return mux
}

// follow applies the registry's changes to what the relay holds, until ctx
// ends: on every replica, within one watch round trip of the change (at
// once for its own writes), a deleted cluster's sessions end, sessions on a
// revoked or superseded credential end or move, and a policy change ends
// the open tunnels of the callers it no longer admits.
func (r *Relay) follow(ctx context.Context) {
	for ch := range r.reg.Changes(ctx) {
		switch ch.Kind {
		case registry.ChangeDeleted:
			if n := r.router.CloseCluster(ch.Cluster); n > 0 {
				r.log.Info("relay: cluster deleted; its sessions ended", "cluster", ch.Cluster, "sessions", n)
			}
		case registry.ChangeRevoked:
			r.router.Revalidate(ch.Cluster)
		case registry.ChangePolicy:
			if c, err := r.reg.Cluster(ch.Cluster); err == nil {
				r.srv.admin.recheck(ch.Cluster, c.Policy)
			}
		case registry.ChangeResync:
			r.router.RevalidateAll()
			cs, err := r.reg.Clusters()
			if err != nil {
				r.log.Warn("relay: re-reading the registry after its change feed fell behind", "error", err)
				continue
			}
			for _, c := range cs {
				r.srv.admin.recheck(c.ID, c.Policy)
			}
		}
	}
}

// Done delivers the first error of a server that stopped on its own (its
// listener failed). The relay keeps its other servers running: the owner
// decides to Close.
func (r *Relay) Done() <-chan error { return r.errc }

// Drain refuses new agent sessions, tells the agents to move and serves
// the open tunnels until none is left or ctx ends (see Server.Drain).
func (r *Relay) Drain(ctx context.Context) {
	if r.mesh != nil {
		// The other replicas stop choosing this one for new streams.
		r.mesh.mesh.SetDraining(true)
	}
	r.srv.Drain(ctx)
}

// APIAddr returns the address the API listens on (a port chosen by the
// system when Options.APIAddr named port 0).
func (r *Relay) APIAddr() net.Addr { return r.apiAddr }

// HealthAddr returns the address of /healthz, /readyz and /metrics, or nil
// without Options.HealthAddr.
func (r *Relay) HealthAddr() net.Addr {
	if r.healthL == nil {
		return nil
	}
	return r.healthL.Addr()
}

// AgentAddr returns the address the agent endpoint listens on.
func (r *Relay) AgentAddr() net.Addr { return r.agentL.Addr() }

// Router returns the relay's router (session and stream counts).
func (r *Relay) Router() *Router { return r.router }

func (r *Relay) otherReplicas() func() int {
	if r.mesh == nil {
		return nil
	}
	return r.mesh.mesh.Others
}

// Mesh returns this replica's view of the others, or nil without
// Options.Peer.
func (r *Relay) Mesh() *mesh.Mesh {
	if r.mesh == nil {
		return nil
	}
	return r.mesh.mesh
}

// Registry returns the relay's registry.
func (r *Relay) Registry() *registry.Registry { return r.reg }

// Close stops every server, ends every session and tunnel, waits for the
// relay's goroutines and closes the store. It does not drain: call Drain
// first for a graceful stop.
func (r *Relay) Close() error {
	var errs []error
	r.closeOnce.Do(func() {
		r.cancel()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, s := range []*http.Server{r.api, r.health, r.admin} {
			if s != nil {
				_ = s.Shutdown(sctx)
				_ = s.Close()
			}
		}
		if r.agentL != nil {
			_ = r.agentL.Close()
		}
		if r.router != nil {
			errs = append(errs, r.router.Close())
		}
		if r.srv != nil {
			_ = r.srv.Close()
			r.srv.CloseTunnels()
		}
		if r.mesh != nil {
			// Its routes go from every table at once (the lease is
			// revoked), and the peer endpoint stops.
			errs = append(errs, r.mesh.mesh.Close())
		}
		r.wg.Wait()
		if r.authenticator != nil {
			r.authenticator.Close()
		}
		if r.reg != nil {
			errs = append(errs, r.reg.Close())
		}
		r.log.Info("relay: stopped")
	})
	return errors.Join(errs...)
}

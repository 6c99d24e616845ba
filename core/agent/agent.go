package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/tether-k8s/tether/core/clusterid"
	"github.com/tether-k8s/tether/core/identity"
	"github.com/tether-k8s/tether/core/impersonate"
	"github.com/tether-k8s/tether/core/kstatus"
	"github.com/tether-k8s/tether/core/relayapi"
	"github.com/tether-k8s/tether/core/tunnel"
	"github.com/tether-k8s/tether/core/version"
)

// Files the agent keeps in Config.CredentialDir.
const (
	CertFile = "tls.crt"
	KeyFile  = "tls.key"
)

// Config configures an Agent.
type Config struct {
	// Cluster is the cluster this agent serves. Required.
	Cluster string
	// Name identifies this agent process in the relay's logs (a pod name).
	// Zero means the host name.
	Name string
	// RelayAPI is the relay's HTTPS API URL, used to join. Required when
	// CredentialDir holds no credential yet.
	RelayAPI string
	// RelayAgentAddr is the host:port of the relay's agent endpoint.
	// Required unless RelayWebSocketURL is set.
	RelayAgentAddr string
	// RelayWebSocketURL, when set, carries the agent's connections over
	// WebSocket to this URL (wss://relay:8443/v1/agents/connect) instead of
	// TCP to RelayAgentAddr, for egress that passes only HTTP(S). Inside,
	// the same mutual TLS with the pinned relay CA.
	RelayWebSocketURL string
	// RelayCA verifies the relay (both endpoints): pinned, never learned.
	// Required.
	RelayCA *x509.CertPool
	// CredentialDir keeps the agent's key and certificate (mode 0600) when
	// Store is nil. One of them is required.
	CredentialDir string
	// Store keeps the credential (a Secret in-cluster). Nil means a
	// FileStore in CredentialDir.
	Store CredentialStore
	// JoinToken is traded for a credential when CredentialDir has none.
	JoinToken string
	// Forward is the request path into the API server: its URL and
	// transport, the agent's own credential (a service account that may
	// only impersonate), the authenticator of callers' tokens, and the
	// audit logger. Required, except Admit and RequestID: the agent sets
	// those itself (the request must be the user the relay admitted for
	// its tunnel, and its ID links the relay's, the agent's and the API
	// server's audit lines), so that no assembly can leave them out; New
	// refuses a Forward that sets them. Observe is set from Prometheus
	// when that is not nil.
	Forward impersonate.Config
	// RelayAudience is the relay's audience (the relay's --login-audience):
	// the agent refuses tokens for it, which the relay saw. Zero means
	// relayapi.DefaultRelayAudience.
	RelayAudience string
	// ClusterAudience is this cluster's audience, the one token audience
	// of the relayapi.ClusterAudiencePrefix form the agent admits: it
	// refuses tokens for any other cluster's, which that cluster's agent
	// saw. Zero means relayapi.ClusterAudience(Cluster). Whether it also
	// admits tokens for neither (a shared audience, during a migration) is
	// up to the authentication configuration's audiences.
	ClusterAudience string
	// Prometheus, when not nil, receives the agent's metrics: requests by
	// status, their durations, the API server's dial times, relay sessions
	// held, the credential's expiry; when it is also a Gatherer (a
	// *prometheus.Registry), HealthAddr serves them at /metrics.
	Prometheus prometheus.Registerer
	// HealthAddr, when not empty, is where Run serves /healthz, /readyz
	// and /metrics.
	HealthAddr string
	// WrapConn, when not nil, wraps each session's connection to the relay
	// after its TLS handshake (the benchmarks' A/B of how frames are
	// written). The wrapper must pass bytes through unchanged. Nil uses the
	// connection as it is.
	WrapConn func(*tls.Conn) net.Conn
	// Sessions is how many relay sessions to keep open. Zero means 2.
	Sessions int
	// RenewBefore is how long before its expiry the agent renews its
	// credential. Zero means a third of the credential's lifetime (10 days
	// of the relay's default 30).
	RenewBefore time.Duration
	// RenewRetry is the wait after a failed renewal. Zero means 1 minute;
	// it doubles up to 1 hour.
	RenewRetry time.Duration
	// Proxy returns the HTTP proxy to reach the relay's agent endpoint
	// through (with CONNECT), or nil for a direct connection. Nil means
	// http.ProxyFromEnvironment: HTTPS_PROXY and NO_PROXY are honoured.
	Proxy func(*http.Request) (*url.URL, error)
	// DialContext makes the agent's network connections (to the relay or
	// its HTTP proxy). Nil means a net.Dialer.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Rand draws the jitter of a session slot's reconnection backoff, in
	// [0, 1); the slots call it concurrently. Nil means math/rand/v2's
	// global source. The simulator gives each slot of each agent a seeded
	// source, so that a seed replays when agents reconnect.
	Rand func(slot int) float64
	// StreamWindow is the yamux stream window of the agent's sessions: the
	// most the relay may send on one stream (a caller's upload) before the
	// agent read it, so the most the agent holds for a stream whose request
	// body the API server reads slowly. Zero means
	// tunnel.DefaultStreamWindow; tunnel.ValidateStreamWindow says what is
	// accepted.
	StreamWindow uint32
	// Logger receives the agent's events. Nil discards.
	Logger *slog.Logger
}

// Validate reports the first problem with c, naming the field.
func (c *Config) Validate() error {
	switch {
	case clusterid.Validate(c.Cluster) != nil:
		return fmt.Errorf("agent: Config.Cluster: %w", clusterid.Validate(c.Cluster))
	case c.RelayAgentAddr == "" && c.RelayWebSocketURL == "":
		return errors.New("agent: Config.RelayAgentAddr and RelayWebSocketURL are empty: give the relay's agent endpoint (host:port) or its WebSocket URL")
	case c.RelayCA == nil:
		return errors.New("agent: Config.RelayCA is nil: the relay's CA must be pinned")
	case c.CredentialDir == "" && c.Store == nil:
		return errors.New("agent: Config.CredentialDir and Store are empty: name where the credential is kept")
	case c.Forward.Admit != nil || c.Forward.RequestID != nil || c.Forward.CheckAudiences != nil:
		return errors.New("agent: Config.Forward.Admit, RequestID and CheckAudiences are the agent's own: leave them nil")
	case c.RelayAudience != "" && strings.HasPrefix(c.RelayAudience, relayapi.ClusterAudiencePrefix):
		return fmt.Errorf("agent: Config.RelayAudience %q is a cluster's audience (%s...): give the relay's own, such as %s",
			c.RelayAudience, relayapi.ClusterAudiencePrefix, relayapi.DefaultRelayAudience)
	case c.withAudiences().RelayAudience == c.withAudiences().ClusterAudience:
		return fmt.Errorf("agent: Config.RelayAudience and ClusterAudience are both %q: the relay and the agent must not accept the same tokens", c.withAudiences().RelayAudience)
	case c.RenewBefore < 0 || c.RenewRetry < 0:
		return fmt.Errorf("agent: Config.RenewBefore (%s) and RenewRetry (%s) must not be negative", c.RenewBefore, c.RenewRetry)
	}
	if err := tunnel.ValidateStreamWindow(uint64(c.StreamWindow)); err != nil {
		return fmt.Errorf("agent: Config.StreamWindow: %w", err)
	}
	if err := c.Forward.Validate(); err != nil {
		return fmt.Errorf("agent: Config.Forward: %w", err)
	}
	return nil
}

// withDefaults returns c with its zero fields set to their defaults.
// withAudiences returns c with its zero audiences set to their defaults.
func (c Config) withAudiences() Config {
	if c.RelayAudience == "" {
		c.RelayAudience = relayapi.DefaultRelayAudience
	}
	if c.ClusterAudience == "" {
		c.ClusterAudience = relayapi.ClusterAudience(c.Cluster)
	}
	return c
}

func (c Config) withDefaults() Config {
	c = c.withAudiences()
	if c.Name == "" {
		c.Name, _ = os.Hostname()
	}
	if c.Store == nil {
		c.Store = FileStore{Dir: c.CredentialDir}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Forward.Logger == nil {
		c.Forward.Logger = c.Logger
	}
	return c
}

// Agent is a running agent.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	keeper  *tunnel.Keeper
	handler http.Handler // the request path, with the agent's checks
	// cert is the credential in use; renewal replaces it.
	cert atomic.Pointer[tls.Certificate]
	// tokenUsed records that this process traded Config.JoinToken (at
	// start or in rejoin): the relay consumed it, so it is not tried again.
	tokenUsed bool
}

// New validates cfg and loads or obtains the credential: from
// CredentialDir, or by joining with JoinToken.
func New(ctx context.Context, cfg Config) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	// The agent's logger names the cluster once, here; the request path's
	// lines get it from the same logger (never twice).
	log := cfg.Logger.With("cluster", cfg.Cluster)
	a := &Agent{cfg: cfg, log: log}
	fwd := cfg.Forward
	fwd.Admit, fwd.RequestID = admitTunnelUser, tunnelRequestID
	relayAud, clusterAud := cfg.RelayAudience, cfg.ClusterAudience
	fwd.CheckAudiences = func(auds []string) error { return relayapi.CheckAgentAudiences(auds, relayAud, clusterAud) }
	if fwd.Logger == cfg.Logger {
		fwd.Logger = log
	}
	var metrics *Metrics
	if cfg.Prometheus != nil {
		var err error
		if metrics, err = NewMetrics(cfg.Prometheus); err != nil {
			return nil, fmt.Errorf("agent: metrics: %w", err)
		}
		observe := fwd.Observe
		fwd.Observe = func(o impersonate.Observation) {
			metrics.Observe(o)
			if observe != nil {
				observe(o)
			}
		}
	}
	h, err := impersonate.New(fwd)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a.handler = h
	if metrics != nil {
		a.handler = metrics.traceDials(h)
	}
	cert, err := a.credential(ctx)
	if err != nil {
		return nil, err
	}
	if err := a.useCert(cert); err != nil {
		return nil, err
	}
	a.keeper, err = tunnel.NewKeeper(tunnel.KeeperConfig{
		Sessions: cfg.Sessions,
		Dial:     a.dial,
		Agent: tunnel.AgentConfig{Hello: tunnel.Hello{Cluster: cfg.Cluster, Agent: cfg.Name, Software: "tether-agent " + version.String()},
			Yamux: tunnel.YamuxConfig(cfg.StreamWindow), Logger: a.log},
		Serve: a.serve,
		Rand:  cfg.Rand,
		// The keeper names the cluster and the agent in its lines itself.
		Logger: cfg.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if metrics != nil {
		if err := metrics.Watch(a.keeper.Live, a.CredentialNotAfter); err != nil {
			return nil, fmt.Errorf("agent: metrics: %w", err)
		}
	}
	return a, nil
}

// credential loads the credential, or joins to obtain one.
func (a *Agent) credential(ctx context.Context) (tls.Certificate, error) {
	store := a.cfg.Store
	certPEM, keyPEM, err := store.Load(ctx)
	switch {
	case err == nil:
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return tls.Certificate{}, fmt.Errorf("agent: the credential in %s is unusable: %w (delete it and join again with a new token)", store, err)
		}
		a.log.Info("agent: using the stored credential", "store", store.String())
		return cert, nil
	case !errors.Is(err, ErrNoCredential):
		return tls.Certificate{}, fmt.Errorf("agent: read the credential: %w", err)
	}
	if a.cfg.JoinToken == "" || a.cfg.RelayAPI == "" {
		return tls.Certificate{}, fmt.Errorf("agent: no credential in %s and no join token and relay API to get one: run `tether-relay cluster create %s` and pass the token it prints", store, a.cfg.Cluster)
	}
	// The join token works once: spend it only when the sessions that the
	// credential is for can reach the relay.
	probe, _, err := a.dialRaw(ctx)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%w; the join token was not used", err)
	}
	_ = probe.Close()
	a.tokenUsed = true
	cert, err := a.join(ctx, store)
	if err == nil {
		return cert, nil
	}
	// Replicas sharing one Secret race for the one-time token: the loser
	// uses what the winner stored.
	if certPEM, keyPEM, lerr := store.Load(ctx); lerr == nil {
		if c, perr := tls.X509KeyPair(certPEM, keyPEM); perr == nil {
			a.log.Info("agent: the join was refused, but another replica has stored a credential meanwhile; using it", "store", store.String(), "joinError", err)
			return c, nil
		}
	}
	return tls.Certificate{}, err
}

// join trades the join token for a credential with a new key and keeps it
// in store.
func (a *Agent) join(ctx context.Context, store CredentialStore) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("agent: generate key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("agent: create CSR: %w", err)
	}
	body, _ := json.Marshal(relayapi.JoinRequest{Token: a.cfg.JoinToken, CSR: csr})
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: a.netDial,
		TLSClientConfig: &tls.Config{RootCAs: a.cfg.RelayCA, MinVersion: tls.VersionTLS12}}}
	// The join is the client's only request: close its connection after,
	// or the relay keeps it (and its goroutines and TLS buffers) until its
	// idle timeout.
	defer client.CloseIdleConnections()
	// A relay that is busy (its join rate limit: many agents behind one
	// address) or whose store is down answers 429 or 503 with Retry-After
	// before the token is looked at: wait as told, within joinPatience.
	var resp *http.Response
	var raw []byte
	for deadline := time.Now().Add(joinPatience); ; {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.cfg.RelayAPI+"/v1/join", bytes.NewReader(body))
		if err != nil {
			return tls.Certificate{}, fmt.Errorf("agent: join request: %w", err)
		}
		req.Header.Set("Content-Type", "application/json")
		if resp, err = client.Do(req); err != nil {
			return tls.Certificate{}, fmt.Errorf("agent: join the relay at %s: %w", a.cfg.RelayAPI, err)
		}
		raw, _ = io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		_ = resp.Body.Close()
		wait, busy := retryAfter(resp)
		if !busy || time.Now().Add(wait).After(deadline) {
			break
		}
		a.log.Info("agent: the relay asked to join again later", "status", resp.StatusCode, "in", wait)
		select {
		case <-ctx.Done():
			return tls.Certificate{}, fmt.Errorf("agent: join: %w", ctx.Err())
		case <-time.After(wait):
		}
	}
	if resp.StatusCode != http.StatusOK {
		if st, ok := kstatus.Decode(raw); ok {
			return tls.Certificate{}, fmt.Errorf("agent: join refused: %s", st.Message)
		}
		return tls.Certificate{}, fmt.Errorf("agent: join refused: %s", resp.Status)
	}
	var jr relayapi.JoinResponse
	if err := json.Unmarshal(raw, &jr); err != nil {
		return tls.Certificate{}, fmt.Errorf("agent: join response: %w", err)
	}
	if jr.Cluster != a.cfg.Cluster {
		return tls.Certificate{}, fmt.Errorf("agent: the join token is for cluster %s, but this agent serves %s", jr.Cluster, a.cfg.Cluster)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("agent: encode key: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	cert, err := tls.X509KeyPair([]byte(jr.Certificate), keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("agent: the relay's certificate does not match the key: %w", err)
	}
	if err := store.Save(ctx, []byte(jr.Certificate), keyPEM); err != nil {
		return tls.Certificate{}, fmt.Errorf("agent: joined, but could not keep the credential (the join token is spent: rotate the cluster for a new one): %w", err)
	}
	a.log.Info("agent: joined the relay", "notAfter", jr.NotAfter, "store", store.String())
	return cert, nil
}

// joinPatience bounds how long a join waits on a relay that answers 429 or
// 503 with Retry-After.
const joinPatience = 3 * time.Minute

// retryAfter reports whether resp asks the client to come back (429 or 503
// with a Retry-After of 1 to 60 seconds), and when.
func retryAfter(resp *http.Response) (time.Duration, bool) {
	if resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusServiceUnavailable {
		return 0, false
	}
	n, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	if err != nil || n < 1 || n > 60 {
		return 0, false
	}
	return time.Duration(n) * time.Second, true
}

// dial connects to the relay's agent endpoint for a session.
func (a *Agent) dial(ctx context.Context) (net.Conn, error) {
	// A replica sharing the store may have renewed the credential: the
	// one in use is then refused once its grace is over.
	a.adoptStored(ctx)
	c, err := a.dialALPN(ctx, tunnel.SessionALPN)
	if err != nil || a.cfg.WrapConn == nil {
		return c, err
	}
	return a.cfg.WrapConn(c), nil
}

// dialALPN connects to the relay's agent endpoint (directly, through an
// HTTP proxy if one is configured for it, or over WebSocket), and completes
// TLS with the credential and alpn.
func (a *Agent) dialALPN(ctx context.Context, alpn string) (*tls.Conn, error) {
	raw, host, err := a.dialRaw(ctx)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(raw, &tls.Config{
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return a.cert.Load(), nil },
		RootCAs:              a.cfg.RelayCA,
		ServerName:           host,
		MinVersion:           tls.VersionTLS13,
		NextProtos:           []string{alpn},
	})
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		return nil, fmt.Errorf("agent: TLS with the relay: %w", err)
	}
	return tc, nil
}

// dialRaw connects to the relay's agent endpoint, directly, through an HTTP
// proxy, or over WebSocket, and returns the connection (before the
// session's TLS) and the relay's host name.
func (a *Agent) dialRaw(ctx context.Context) (net.Conn, string, error) {
	proxyFor := a.cfg.Proxy
	if proxyFor == nil {
		proxyFor = http.ProxyFromEnvironment
	}
	var raw net.Conn
	var host string
	if a.cfg.RelayWebSocketURL != "" {
		u, err := url.Parse(a.cfg.RelayWebSocketURL)
		if err != nil {
			return nil, "", fmt.Errorf("agent: relay WebSocket URL %q: %w", a.cfg.RelayWebSocketURL, err)
		}
		host = u.Hostname()
		d := &tunnel.WebSocketDialer{URL: a.cfg.RelayWebSocketURL, Proxy: proxyFor, TLSConfig: outerTLS(a.cfg.RelayCA, host), NetDialContext: a.netDial}
		if raw, err = d.DialContext(ctx); err != nil {
			return nil, "", fmt.Errorf("agent: reach the relay at %s: %w", a.cfg.RelayWebSocketURL, err)
		}
		return raw, host, nil
	}
	h, _, err := net.SplitHostPort(a.cfg.RelayAgentAddr)
	if err != nil {
		return nil, "", fmt.Errorf("agent: relay agent address %q: %w", a.cfg.RelayAgentAddr, err)
	}
	host = h
	target := &url.URL{Scheme: "https", Host: a.cfg.RelayAgentAddr}
	proxyURL, err := proxyFor(&http.Request{URL: target, Header: http.Header{}})
	if err != nil {
		return nil, "", fmt.Errorf("agent: proxy for %s: %w", target, err)
	}
	if proxyURL == nil {
		raw, err = a.netDial(ctx, "tcp", a.cfg.RelayAgentAddr)
	} else {
		raw, err = connectThrough(ctx, a.netDial, proxyURL, a.cfg.RelayAgentAddr)
	}
	if err != nil {
		return nil, "", fmt.Errorf("agent: reach the relay's agent endpoint at %s: %w (the relay's --agent-listen port: if it is not there, pass --relay-agent-addr HOST:PORT; where only the relay's HTTPS port is reachable, --relay-transport websocket)", a.cfg.RelayAgentAddr, err)
	}
	return raw, host, nil
}

// netDial makes a network connection with Config.DialContext, or a
// net.Dialer.
func (a *Agent) netDial(ctx context.Context, network, addr string) (net.Conn, error) {
	if a.cfg.DialContext != nil {
		return a.cfg.DialContext(ctx, network, addr)
	}
	nd := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	return nd.DialContext(ctx, network, addr)
}

// outerTLS verifies the server of a wss:// connection against the relay's
// CA or, failing that, the system's roots: the outer TLS may be served by a
// public certificate (--tls-cert) or end at a TLS-inspecting proxy the
// system trusts. It carries nothing secret: the session's own TLS inside it
// is pinned to the relay's CA.
func outerTLS(relayCA *x509.CertPool, host string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // verified below, against two pools
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the relay presented no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			opts := x509.VerifyOptions{DNSName: host, Intermediates: inter, Roots: relayCA}
			_, err := cs.PeerCertificates[0].Verify(opts)
			if err == nil {
				return nil
			}
			opts.Roots = nil // the system's roots
			if _, sysErr := cs.PeerCertificates[0].Verify(opts); sysErr != nil {
				return fmt.Errorf("the relay's certificate is signed neither by the pinned relay CA (%w) nor by a CA the system trusts (%w)", err, sysErr)
			}
			return nil
		},
	}
}

// connectThrough opens a tunnel to addr through the HTTP proxy at proxyURL
// with CONNECT, sending its user info as Basic proxy credentials.
func connectThrough(ctx context.Context, dial func(ctx context.Context, network, addr string) (net.Conn, error), proxyURL *url.URL, addr string) (net.Conn, error) {
	if proxyURL.Scheme != "http" && proxyURL.Scheme != "" {
		return nil, fmt.Errorf("proxy %s: only http:// proxies are supported", proxyURL.Redacted())
	}
	proxyAddr := proxyURL.Host
	if proxyURL.Port() == "" {
		proxyAddr = net.JoinHostPort(proxyURL.Hostname(), "80")
	}
	conn, err := dial(ctx, "tcp", proxyAddr)
	if err != nil {
		return nil, fmt.Errorf("dial proxy %s: %w", proxyURL.Redacted(), err)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	req := &http.Request{Method: http.MethodConnect, URL: &url.URL{Opaque: addr}, Host: addr, Header: http.Header{}}
	if u := proxyURL.User; u != nil {
		req.SetBasicAuth(u.Username(), func() string { p, _ := u.Password(); return p }())
		req.Header["Proxy-Authorization"] = req.Header["Authorization"]
		delete(req.Header, "Authorization")
	}
	if err := req.Write(conn); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("CONNECT through %s: %w", proxyURL.Redacted(), err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("CONNECT through %s: %w", proxyURL.Redacted(), err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_ = conn.Close()
		return nil, fmt.Errorf("CONNECT through %s: %s", proxyURL.Redacted(), resp.Status)
	}
	if br.Buffered() > 0 {
		_ = conn.Close()
		return nil, fmt.Errorf("CONNECT through %s: the proxy sent data before the tunnel", proxyURL.Redacted())
	}
	return conn, nil
}

// serve serves one session's streams: TLS under the cluster credential,
// then HTTP to the request path.
func (a *Agent) serve(ctx context.Context, s *tunnel.AgentSession) error {
	l := tls.NewListener(s, &tls.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return a.cert.Load(), nil },
		MinVersion:     tls.VersionTLS13,
		NextProtos:     []string{"http/1.1"},
	})
	srv := &http.Server{
		Handler:           a.handler,
		ReadHeaderTimeout: 30 * time.Second,
		MaxHeaderBytes:    64 << 10,
		IdleTimeout:       10 * time.Minute,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if tc, ok := c.(*tls.Conn); ok {
				if st, ok := tc.NetConn().(*tunnel.Stream); ok {
					return context.WithValue(ctx, tunnelKey{}, &tunnelInfo{user: st.Open.User, id: st.Open.Request})
				}
			}
			return ctx
		},
	}
	err := srv.Serve(l)
	_ = srv.Close()
	return err
}

type tunnelKey struct{}

// tunnelInfo is what the relay said about a request's tunnel.
type tunnelInfo struct {
	user, id string
	n        atomic.Int64
}

// admitTunnelUser is the impersonate.Config.Admit of an agent: it refuses a
// request authenticated as another user than the one the relay admitted
// when it opened the request's tunnel, so a tunnel opened for one user
// cannot carry another's requests past the relay's access policy. A
// request on a tunnel whose user the relay did not name is refused.
func admitTunnelUser(r *http.Request, id identity.Identity) error {
	t, _ := r.Context().Value(tunnelKey{}).(*tunnelInfo)
	switch {
	case t == nil || t.user == "":
		return errors.New("tether agent: the relay did not say whom this tunnel is for; refusing (upgrade the relay)")
	case t.user != id.User:
		return fmt.Errorf("tether agent: this tunnel was opened for %s, and the request is %s's: open a new tunnel (tether-proxy does, per token)", t.user, id.User)
	}
	return nil
}

// tunnelRequestID is the impersonate.Config.RequestID of an agent: the
// relay's ID of the request's tunnel (its audit line's "request"), a dot,
// and the request's number on that tunnel, so the relay's, the agent's and
// the API server's audit lines link up.
func tunnelRequestID(r *http.Request) string {
	t, _ := r.Context().Value(tunnelKey{}).(*tunnelInfo)
	if t == nil || t.id == "" {
		return ""
	}
	return fmt.Sprintf("%s.%d", t.id, t.n.Add(1))
}

// Run keeps the agent's sessions open, and its credential renewed, until
// ctx ends (then it returns nil) or the relay refuses the credential. With
// Config.HealthAddr it serves /healthz, /readyz (ready while a relay session
// is up) and, with Config.Prometheus, /metrics; a health address it cannot
// listen on is an error at once.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	if a.cfg.HealthAddr != "" {
		l, err := net.Listen("tcp", a.cfg.HealthAddr)
		if err != nil {
			return fmt.Errorf("agent: listen for /healthz, /readyz and /metrics on %s: %w", a.cfg.HealthAddr, err)
		}
		health := &http.Server{Handler: a.healthHandler(), ReadHeaderTimeout: healthHeaderTimeout, ReadTimeout: healthRequestTimeout,
			WriteTimeout: healthRequestTimeout, IdleTimeout: healthIdleTimeout, MaxHeaderBytes: 8 << 10,
			ErrorLog: slog.NewLogLogger(a.log.Handler(), slog.LevelDebug)}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := health.Serve(l); !errors.Is(err, http.ErrServerClosed) {
				a.log.Error("agent: health endpoint stopped", "error", err)
			}
		}()
		defer func() { _ = health.Close() }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); a.renewLoop(ctx) }()
	for {
		err := a.keeper.Run(ctx)
		if !errors.Is(err, tunnel.ErrRevoked) || ctx.Err() != nil {
			cancel()
			return err
		}
		// The cluster was rotated (or the credential revoked): a join
		// token given with it is the rotate's new one, or spent.
		if rerr := a.rejoin(ctx); rerr != nil {
			cancel()
			return fmt.Errorf("%w; %w", err, rerr)
		}
	}
}

// rejoin trades Config.JoinToken for a new credential once the relay has
// refused the stored one, and starts using it. A token is tried once: the
// relay consumes it, so a second refusal of the same token is final.
func (a *Agent) rejoin(ctx context.Context) error {
	if a.cfg.JoinToken == "" || a.cfg.RelayAPI == "" {
		return errors.New("agent: no join token to join again with: give the agent the token the latest `tether-relay cluster rotate` printed")
	}
	if a.tokenUsed {
		return errors.New("agent: this agent already traded its join token, which works once: give the agent the token the latest `tether-relay cluster rotate` printed")
	}
	a.tokenUsed = true
	a.log.Warn("agent: the relay refused the stored credential; joining again with the join token")
	cert, err := a.join(ctx, a.cfg.Store)
	if err != nil {
		return fmt.Errorf("%w (the join token is spent or from before the last rotate: give the agent the token the latest `tether-relay cluster rotate` printed)", err)
	}
	a.cert.Store(&cert)
	a.log.Info("agent: joined again; reconnecting with the new credential")
	return nil
}

// Limits of the health endpoint: probes and scrapes are small and quick.
const (
	healthHeaderTimeout  = 5 * time.Second
	healthRequestTimeout = 10 * time.Second
	healthIdleTimeout    = time.Minute
)

func (a *Agent) healthHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.Ready() {
			http.Error(w, "no relay session", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	if g, ok := a.cfg.Prometheus.(prometheus.Gatherer); ok {
		mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	}
	return mux
}

// Ready reports whether the agent holds at least one relay session.
func (a *Agent) Ready() bool { return a.keeper.Live() > 0 }

package contender

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tether-k8s/tether/bench/internal/node"
	"github.com/tether-k8s/tether/core/agent"
	"github.com/tether-k8s/tether/core/identity"
	"github.com/tether-k8s/tether/core/impersonate"
	"github.com/tether-k8s/tether/core/policy"
	"github.com/tether-k8s/tether/core/proxy"
	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/relay"
	"github.com/tether-k8s/tether/core/tunnel"
)

// callerToken is the caller's bearer token: the relay and the agent both
// authenticate it (with staticAuthn, standing in for kube-apiserver's JWT
// authenticator, whose cost is not measured here).
const callerToken = "bench-caller-token-0123456789abcdef"

// staticAuthn accepts callerToken as user "bench".
type staticAuthn struct{}

// AuthenticateToken implements identity.Authenticator.
func (staticAuthn) AuthenticateToken(_ context.Context, t string) (identity.Result, error) {
	if t != callerToken {
		return identity.Result{}, errors.New("unknown token")
	}
	return identity.Result{Identity: identity.Identity{User: "bench", Groups: []string{"bench"}}}, nil
}

// countHandler is an slog.Handler that only counts records: the relay's
// audit log, one record per tunnel.
type countHandler struct{ n *atomic.Int64 }

// Enabled, Handle, WithAttrs and WithGroup implement slog.Handler.
func (h countHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h countHandler) Handle(context.Context, slog.Record) error {
	h.n.Add(1)
	return nil
}
func (h countHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h countHandler) WithGroup(string) slog.Handler      { return h }

// tetherRelayArgs are the arguments of the tether-relay role.
type tetherRelayArgs struct {
	Dir      string
	Bind     string
	Names    []string
	Clusters []string
	// ClusterPrefix and ClusterCount name more clusters, prefix0 to
	// prefix<count-1> (W6: too many for the arguments); their join tokens
	// go to Dir/tokens, one a line. No caller may reach them.
	ClusterPrefix string
	ClusterCount  int
	// Restart reopens the registry in Dir as it is (W7): no cluster is
	// created.
	Restart bool
	// APIPort and AgentPort, when not zero, are the ports to listen on.
	APIPort, AgentPort int
	// YamuxWindow, when not zero, is the router's StreamWindow.
	YamuxWindow uint32
	// StreamMemory, when not zero, is the router's StreamMemory.
	StreamMemory int64
	// MaxStreamsPerCluster, when not zero, is the router's
	// MaxStreamsPerCluster.
	MaxStreamsPerCluster int
	// Coalesce accepts agents with the harness's own loop over
	// tunnel.AcceptAgent, joining each yamux frame's header and body into
	// one write (see coalesceConn), instead of relay.Server.ServeAgents.
	Coalesce bool
}

// tetherRelayReady is what the tether-relay role reports.
type tetherRelayReady struct {
	APIPort, AgentPort int
	CA                 string
	Tokens             []string
}

// tetherRelayRole runs tether's relay: registry, router, the API (TLS) and
// the agent endpoint (mutual TLS), as cmd/tether-relay assembles them.
func tetherRelayRole(ctx context.Context, raw json.RawMessage, c *node.Child) error {
	var args tetherRelayArgs
	if err := json.Unmarshal(raw, &args); err != nil {
		return fmt.Errorf("tether-relay: arguments: %w", err)
	}
	reg, err := registry.Open(registry.Config{Path: filepath.Join(args.Dir, "relay.db")})
	if err != nil {
		return fmt.Errorf("tether-relay: %w", err)
	}
	defer reg.Close()
	tokens := make([]string, len(args.Clusters))
	for i, id := range args.Clusters {
		if args.Restart {
			break
		}
		if tokens[i], err = reg.CreateCluster(id); err != nil {
			return fmt.Errorf("tether-relay: create cluster %s: %w", id, err)
		}
		// The caller's group may reach the cluster (the relay's access
		// policy, as `tether-relay cluster grant --group bench` sets it).
		if _, err := reg.UpdatePolicy(id, func(p policy.Policy) (policy.Policy, error) {
			return p.Add(policy.Policy{Groups: []string{"bench"}}), nil
		}); err != nil {
			return fmt.Errorf("tether-relay: grant cluster %s: %w", id, err)
		}
	}
	many := make([]string, args.ClusterCount)
	for i := range many {
		many[i] = args.ClusterPrefix + strconv.Itoa(i)
	}
	if !args.Restart && len(many) > 0 {
		var b strings.Builder
		for _, id := range many {
			tok, err := reg.CreateCluster(id)
			if err != nil {
				return fmt.Errorf("tether-relay: create cluster %s: %w", id, err)
			}
			b.WriteString(tok + "\n")
		}
		if err := os.WriteFile(filepath.Join(args.Dir, "tokens"), []byte(b.String()), 0o600); err != nil {
			return fmt.Errorf("tether-relay: %w", err)
		}
	}
	// Every workload runs as the one user staticAuthn knows, standing in for
	// many callers (W5 opens 10,000 watches): the per-caller cap is not what
	// the benchmarks measure, so it never binds here.
	router, err := relay.NewRouter(relay.RouterConfig{StreamWindow: args.YamuxWindow, StreamMemory: args.StreamMemory,
		MaxStreamsPerCluster: args.MaxStreamsPerCluster, MaxStreamsPerCaller: math.MaxInt32})
	if err != nil {
		return fmt.Errorf("tether-relay: %w", err)
	}
	defer router.Close()
	serving, err := reg.ServingCertificate(args.Names)
	if err != nil {
		return fmt.Errorf("tether-relay: serving certificate: %w", err)
	}
	var tunnels atomic.Int64
	srv, err := relay.NewServer(relay.ServerConfig{Registry: reg, Router: router, Authenticator: staticAuthn{},
		Audit: slog.New(countHandler{&tunnels}), AgentCertificate: &serving})
	if err != nil {
		return fmt.Errorf("tether-relay: %w", err)
	}
	agentL, err := tls.Listen("tcp", net.JoinHostPort(args.Bind, strconv.Itoa(args.AgentPort)), srv.AgentTLSConfig(serving))
	if err != nil {
		return fmt.Errorf("tether-relay: listen for agents: %w", err)
	}
	apiL, err := net.Listen("tcp", net.JoinHostPort(args.Bind, strconv.Itoa(args.APIPort)))
	if err != nil {
		_ = agentL.Close()
		return fmt.Errorf("tether-relay: listen for the API: %w", err)
	}
	// The API server as cmd/tether-relay configures it.
	api := &http.Server{
		Handler:           srv.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    64 << 10,
		IdleTimeout:       2 * time.Minute,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{serving}, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}},
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Add(2)
	go func() {
		defer wg.Done()
		if args.Coalesce {
			errc <- acceptAgents(ctx, agentL, reg, router, tunnel.YamuxConfig(router.StreamWindow()), args.Coalesce)
			return
		}
		errc <- srv.ServeAgents(ctx, agentL)
	}()
	go func() {
		defer wg.Done()
		if err := api.ServeTLS(apiL, "", ""); !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("tether-relay: API: %w", err)
			return
		}
		errc <- nil
	}()
	c.OnStats(func() map[string]any {
		n, connected := 0, 0
		for _, ids := range [][]string{args.Clusters, many} {
			for _, id := range ids {
				k := router.Sessions(id)
				n += k
				if k > 0 {
					connected++
				}
			}
		}
		return map[string]any{"tunnels": tunnels.Load(), "sessions": n, "connected": connected, "streams": router.Streams()}
	})
	err = c.Ready(tetherRelayReady{APIPort: apiL.Addr().(*net.TCPAddr).Port, AgentPort: agentL.Addr().(*net.TCPAddr).Port,
		CA: string(reg.CAPEM()), Tokens: tokens})
	if err == nil {
		select {
		case <-ctx.Done():
		case err = <-errc:
		}
	}
	cancel()
	_ = api.Close()
	_ = agentL.Close()
	wg.Wait()
	return err
}

// acceptAgents is relay.Server.ServeAgents with a yamux configuration of
// its own (for the A/Bs): mutual TLS, the registry's check of the
// credential against the Hello, then the router.
func acceptAgents(ctx context.Context, l net.Listener, reg *registry.Registry, router *relay.Router, ycfg *yamux.Config, coalesce bool) error {
	stop := context.AfterFunc(ctx, func() { _ = l.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for n := 0; ; n++ {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("tether-relay: accept agents: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			tc, ok := conn.(*tls.Conn)
			if !ok {
				_ = conn.Close()
				return
			}
			hctx, cancel := context.WithTimeout(ctx, tunnel.DefaultHandshakeTimeout)
			err := tc.HandshakeContext(hctx)
			cancel()
			if err != nil || tc.ConnectionState().NegotiatedProtocol != tunnel.SessionALPN {
				_ = conn.Close()
				return
			}
			st := tc.ConnectionState()
			var c net.Conn = tc
			if coalesce {
				c = &coalesceConn{Conn: tc}
			}
			sess, err := tunnel.AcceptAgent(ctx, c, tunnel.RelayConfig{
				// The state of the handshake above: with coalesce, AcceptAgent
				// does not see a *tls.Conn.
				Authorize: func(_ context.Context, h *tunnel.Hello, _ tls.ConnectionState) error {
					if len(st.PeerCertificates) == 0 {
						return tunnel.Refuse(tunnel.ReasonRevoked, "no client certificate")
					}
					id, err := reg.VerifyPeer(st.PeerCertificates[0])
					if err != nil || id != h.Cluster {
						return tunnel.Refuse(tunnel.ReasonRevoked, "credential refused")
					}
					return nil
				},
				Session: "bench-" + strconv.Itoa(n), Relay: "bench", Yamux: ycfg,
			})
			if err != nil {
				return
			}
			if err := router.Add(sess); err != nil {
				_ = sess.Close()
			}
		}()
	}
}

// tetherAgentArgs are the arguments of the tether-agent role.
type tetherAgentArgs struct {
	Dir            string
	Cluster        string
	RelayAPI       string
	RelayAgentAddr string
	CA             string
	Token          string
	// Target is the API server's URL (the target's, plain HTTP).
	Target string
	// YamuxWindow, when not zero, is the agent's StreamWindow.
	YamuxWindow uint32
	// FlushEvery sets impersonate.Config.FlushInterval to -1.
	FlushEvery bool
	// Coalesce runs the agent's sessions with the harness's own
	// tunnel.Keeper, joining each yamux frame's header and body into one
	// write (see coalesceConn); the agent still joins with core/agent.
	Coalesce bool
}

// tetherAgentRole runs tether's agent: it joins, keeps its sessions and
// serves each stream with end-to-end TLS into core/impersonate, which
// forwards to the target.
func tetherAgentRole(ctx context.Context, raw json.RawMessage, c *node.Child) error {
	var args tetherAgentArgs
	if err := json.Unmarshal(raw, &args); err != nil {
		return fmt.Errorf("tether-agent: arguments: %w", err)
	}
	relayCA := x509.NewCertPool()
	if !relayCA.AppendCertsFromPEM([]byte(args.CA)) {
		return errors.New("tether-agent: no relay CA")
	}
	upstream, err := url.Parse(args.Target)
	if err != nil {
		return fmt.Errorf("tether-agent: target: %w", err)
	}
	// The transport cmd/tether-agent builds for the API server.
	transport := &http.Transport{ForceAttemptHTTP2: false, MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second}
	flush := time.Duration(0)
	if args.FlushEvery {
		flush = -1
	}
	h, err := impersonate.New(impersonate.Config{Upstream: upstream, Transport: transport, Authenticator: staticAuthn{}, FlushInterval: flush,
		Credential: func(context.Context) (string, error) { return "agent-sa-token", nil }})
	if err != nil {
		return fmt.Errorf("tether-agent: %w", err)
	}
	a, err := agent.New(ctx, agent.Config{Cluster: args.Cluster, Name: "bench-agent", RelayAPI: args.RelayAPI,
		RelayAgentAddr: args.RelayAgentAddr, RelayCA: relayCA, CredentialDir: args.Dir, JoinToken: args.Token, Handler: h,
		StreamWindow: args.YamuxWindow, Proxy: func(*http.Request) (*url.URL, error) { return nil, nil }})
	if err != nil {
		return fmt.Errorf("tether-agent: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ran := make(chan error, 1)
	var live func() bool
	if !args.Coalesce {
		go func() { ran <- a.Run(ctx) }()
		live = a.Ready
	} else {
		k, err := windowKeeper(ctx, args, relayCA, h)
		if err != nil {
			return err
		}
		go func() { ran <- k.Run(ctx) }()
		live = func() bool { return k.Live() > 0 }
	}
	deadline := time.Now().Add(30 * time.Second)
	for !live() {
		if time.Now().After(deadline) {
			cancel()
			<-ran
			return errors.New("tether-agent: no session after 30 s")
		}
		select {
		case err := <-ran:
			return fmt.Errorf("tether-agent: stopped before it connected: %w", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := c.Ready(struct{}{}); err != nil {
		cancel()
		<-ran
		return err
	}
	return <-ran
}

// windowKeeper builds the agent's sessions as core/agent does (TLS 1.3 with
// the stored credential, ALPN tether/1; each stream served over TLS to an
// http.Server), with the stream window args.YamuxWindow, over
// coalesceConn.
func windowKeeper(ctx context.Context, args tetherAgentArgs, relayCA *x509.CertPool, h http.Handler) (*tunnel.Keeper, error) {
	certPEM, keyPEM, err := agent.FileStore{Dir: args.Dir}.Load(ctx)
	if err != nil {
		return nil, fmt.Errorf("tether-agent: load the credential: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("tether-agent: credential: %w", err)
	}
	host, _, err := net.SplitHostPort(args.RelayAgentAddr)
	if err != nil {
		return nil, fmt.Errorf("tether-agent: relay address: %w", err)
	}
	k, err := tunnel.NewKeeper(tunnel.KeeperConfig{
		Dial: func(ctx context.Context) (net.Conn, error) {
			d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}, Config: &tls.Config{
				Certificates: []tls.Certificate{cert}, RootCAs: relayCA, ServerName: host,
				MinVersion: tls.VersionTLS13, NextProtos: []string{tunnel.SessionALPN}}}
			c, err := d.DialContext(ctx, "tcp", args.RelayAgentAddr)
			if err != nil || !args.Coalesce {
				return c, err
			}
			return &coalesceConn{Conn: c}, nil
		},
		Agent: tunnel.AgentConfig{Hello: tunnel.Hello{Cluster: args.Cluster, Agent: "bench-agent", Software: "tether-bench"}, Yamux: tunnel.YamuxConfig(args.YamuxWindow)},
		Serve: func(ctx context.Context, s *tunnel.AgentSession) error {
			l := tls.NewListener(s, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13, NextProtos: []string{"http/1.1"}})
			srv := &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second, MaxHeaderBytes: 64 << 10, IdleTimeout: 10 * time.Minute,
				BaseContext: func(net.Listener) context.Context { return ctx }}
			err := srv.Serve(l)
			_ = srv.Close()
			return err
		},
	})
	if err != nil {
		return nil, fmt.Errorf("tether-agent: %w", err)
	}
	return k, nil
}

// tetherProxyArgs are the arguments of the tether-proxy role.
type tetherProxyArgs struct {
	RelayURL string
	CA       string
	Cluster  string
	// IdleTunnels is proxy.Config.MaxIdleTunnels (zero: the default).
	IdleTunnels int
	// FlushEvery sets proxy.Config.FlushInterval to -1.
	FlushEvery bool
}

// tetherProxyReady is what the tether-proxy role reports: where it listens
// and the kubeconfig's TLS material.
type tetherProxyReady struct {
	Addr                string
	CA, ClientCert, Key string
}

// tetherProxyRole runs tether-proxy on 127.0.0.1.
func tetherProxyRole(ctx context.Context, raw json.RawMessage, c *node.Child) error {
	var args tetherProxyArgs
	if err := json.Unmarshal(raw, &args); err != nil {
		return fmt.Errorf("tether-proxy: arguments: %w", err)
	}
	relayCA := x509.NewCertPool()
	if !relayCA.AppendCertsFromPEM([]byte(args.CA)) {
		return errors.New("tether-proxy: no relay CA")
	}
	p, err := proxy.New(ctx, proxy.Config{RelayURL: args.RelayURL, RelayCA: relayCA, Cluster: args.Cluster,
		Token: func() (string, error) { return callerToken, nil }, Listen: "127.0.0.1:0", MaxIdleTunnels: args.IdleTunnels,
		FlushInterval: map[bool]time.Duration{true: -1}[args.FlushEvery]})
	if err != nil {
		return fmt.Errorf("tether-proxy: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- p.Serve(ctx) }()
	kc := p.Kubeconfig("bench")
	ready := tetherProxyReady{Addr: p.Addr(), CA: string(kc.Clusters["bench"].CertificateAuthorityData),
		ClientCert: string(kc.AuthInfos["bench"].ClientCertificateData), Key: string(kc.AuthInfos["bench"].ClientKeyData)}
	if err := c.Ready(ready); err != nil {
		cancel()
		return errors.Join(err, <-served)
	}
	return <-served
}

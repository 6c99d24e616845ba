package contender

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
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
	"sync/atomic"
	"time"

	"github.com/tether-k8s/tether/bench/internal/node"
	"github.com/tether-k8s/tether/core/agent"
	"github.com/tether-k8s/tether/core/identity"
	"github.com/tether-k8s/tether/core/impersonate"
	"github.com/tether-k8s/tether/core/policy"
	"github.com/tether-k8s/tether/core/proxy"
	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/relay"
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
	// Coalesce wraps each agent connection (relay.Options.WrapAgentConn)
	// to join each yamux frame's header and body into one write (see
	// coalesceConn).
	Coalesce bool
	// Etcd, when set, keeps the registry on etcd and makes this relay one
	// replica of several (relay.Options.Peer), as tether-relay serve
	// --store etcd --peer-listen runs it; Dir then holds no registry.
	Etcd *tetherEtcdArgs
	// HealthPort, with Etcd, is the port of /healthz and /readyz (the load
	// balancer's check): zero picks one.
	HealthPort int
}

// tetherEtcdArgs are a replica's: where etcd is, and which replica this is.
type tetherEtcdArgs struct {
	// Endpoints are etcd's client URLs; Prefix starts every key.
	Endpoints []string
	Prefix    string
	// KEK is the key-encryption key of the CA's private key, in hex
	// (--key-encryption-key-file).
	KEK string
	// RelayID names the replica (--relay-id); a restarted replica keeps
	// its name, as a StatefulSet's pod does.
	RelayID string
}

// registryConfig returns where the role's registry is.
func (a tetherRelayArgs) registryConfig() (registry.Config, error) {
	if a.Etcd == nil {
		return registry.Config{Path: filepath.Join(a.Dir, "relay.db")}, nil
	}
	raw, err := hex.DecodeString(a.Etcd.KEK)
	if err != nil {
		return registry.Config{}, fmt.Errorf("tether-relay: key-encryption key: %w", err)
	}
	kek, err := registry.NewKeyEncryptionKey(raw)
	if err != nil {
		return registry.Config{}, fmt.Errorf("tether-relay: %w", err)
	}
	return registry.Config{Store: registry.StoreEtcd, Etcd: registry.EtcdConfig{Endpoints: a.Etcd.Endpoints, Prefix: a.Etcd.Prefix,
		KeyEncryptionKeys: []registry.KeyEncryptionKey{kek}}}, nil
}

// tetherRelayReady is what the tether-relay role reports.
type tetherRelayReady struct {
	APIPort, AgentPort int
	// HealthPort is the port of /readyz (replicas only).
	HealthPort int
	CA         string
	Tokens     []string
}

// RelayDrain is the argument of a replica's "drain" command: what
// tether-relay serve does on SIGTERM, for Timeout (--drain-timeout). The
// role answers when the drain is over; stopping the process then closes
// the relay (its keys deleted, its lease revoked).
type RelayDrain struct {
	Timeout time.Duration
}

// tetherRelayRole runs tether's relay as tether-relay serve assembles it
// (relay.Start), on clusters it creates first.
func tetherRelayRole(ctx context.Context, raw json.RawMessage, c *node.Child) error {
	var args tetherRelayArgs
	if err := json.Unmarshal(raw, &args); err != nil {
		return fmt.Errorf("tether-relay: arguments: %w", err)
	}
	rcfg, err := args.registryConfig()
	if err != nil {
		return err
	}
	tokens, many, err := createClusters(args, rcfg)
	if err != nil {
		return err
	}
	// The relay as tether-relay serve assembles it (relay.Start), every
	// check on. Every workload runs as the one user staticAuthn knows,
	// standing in for many callers (W5 opens 10,000 watches): the
	// per-caller cap is not what the benchmarks measure, so it never binds
	// here.
	var tunnels atomic.Int64
	opts := relay.Options{
		Registry:      rcfg,
		Authenticator: staticAuthn{},
		Hostnames:     args.Names,
		APIAddr:       net.JoinHostPort(args.Bind, strconv.Itoa(args.APIPort)),
		AgentAddr:     net.JoinHostPort(args.Bind, strconv.Itoa(args.AgentPort)),
		RelayID:       "bench",
		Audit:         slog.New(countHandler{&tunnels}),
		Router: relay.RouterConfig{StreamWindow: args.YamuxWindow, StreamMemory: args.StreamMemory,
			MaxStreamsPerCluster: args.MaxStreamsPerCluster, MaxStreamsPerCaller: math.MaxInt32},
		// W6 joins its whole swarm from one address, and W6R 10,000 agents
		// at once, which the join rate limits (1/s per address, 20/s in all)
		// would stretch to minutes (agents wait out its 429s, then give up):
		// what tether-relay serve --join-rate 1000 --join-burst 1000
		// --join-rate-total 1000 --join-burst-total 1000 runs.
		JoinLimit: registry.JoinLimitConfig{PerClient: 1000, PerClientBurst: 1000, Total: 1000, TotalBurst: 1000},
	}
	if args.Coalesce {
		opts.WrapAgentConn = func(tc *tls.Conn) net.Conn { return coalesceTLS{&coalesceConn{Conn: tc}, tc} }
	}
	if args.Etcd != nil {
		// A replica as tether-relay serve --store etcd --peer-listen
		// --health-listen runs it: its peer endpoint on this machine's
		// loopback (the replicas share the relay's place), its name kept
		// across restarts.
		opts.RelayID = args.Etcd.RelayID
		opts.Peer = &relay.PeerOptions{Addr: "127.0.0.1:0", Advertise: "127.0.0.1:0"}
		opts.HealthAddr = net.JoinHostPort(args.Bind, strconv.Itoa(args.HealthPort))
	}
	r, err := relay.Start(ctx, opts)
	if err != nil {
		return fmt.Errorf("tether-relay: %w", err)
	}
	defer r.Close()
	c.OnCommand("drain", func(arg json.RawMessage) (any, error) {
		var d RelayDrain
		if err := json.Unmarshal(arg, &d); err != nil {
			return nil, fmt.Errorf("tether-relay: drain: %w", err)
		}
		dctx, cancel := context.WithTimeout(ctx, d.Timeout)
		defer cancel()
		began := time.Now()
		r.Drain(dctx)
		return map[string]any{"took": time.Since(began).String()}, nil
	})
	router := r.Router()
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
		st := map[string]any{"tunnels": tunnels.Load(), "sessions": n, "connected": connected, "streams": router.Streams()}
		if m := r.Mesh(); m != nil {
			st["replicas"] = len(m.Replicas())
		}
		return st
	})
	ready := tetherRelayReady{APIPort: r.APIAddr().(*net.TCPAddr).Port, AgentPort: r.AgentAddr().(*net.TCPAddr).Port,
		CA: string(r.Registry().CAPEM()), Tokens: tokens}
	if h := r.HealthAddr(); h != nil {
		ready.HealthPort = h.(*net.TCPAddr).Port
	}
	err = c.Ready(ready)
	if err == nil {
		select {
		case <-ctx.Done():
		case err = <-r.Done():
		}
	}
	return err
}

// createClusters creates args' clusters in the relay's registry before the
// relay starts, and returns their join tokens and the names of the many
// (W6); with Restart it only names them.
func createClusters(args tetherRelayArgs, rcfg registry.Config) (tokens, many []string, err error) {
	reg, err := registry.Open(rcfg)
	if err != nil {
		return nil, nil, fmt.Errorf("tether-relay: %w", err)
	}
	defer func() { err = errors.Join(err, reg.Close()) }()
	tokens = make([]string, len(args.Clusters))

	for i, id := range args.Clusters {
		if args.Restart {
			break
		}
		if tokens[i], err = reg.CreateCluster(id); err != nil {
			return nil, nil, fmt.Errorf("tether-relay: create cluster %s: %w", id, err)
		}
		// The caller's group may reach the cluster (the relay's access
		// policy, as `tether-relay cluster grant --group bench` sets it).
		if _, err := reg.UpdatePolicy(id, func(p policy.Policy) (policy.Policy, error) {
			return p.Add(policy.Policy{Groups: []string{"bench"}}), nil
		}); err != nil {
			return nil, nil, fmt.Errorf("tether-relay: grant cluster %s: %w", id, err)
		}
	}
	many = make([]string, args.ClusterCount)
	for i := range many {
		many[i] = args.ClusterPrefix + strconv.Itoa(i)
	}
	if !args.Restart && len(many) > 0 {
		var b strings.Builder
		for _, id := range many {
			tok, err := reg.CreateCluster(id)
			if err != nil {
				return nil, nil, fmt.Errorf("tether-relay: create cluster %s: %w", id, err)
			}
			b.WriteString(tok + "\n")
		}
		if err := os.WriteFile(filepath.Join(args.Dir, "tokens"), []byte(b.String()), 0o600); err != nil {
			return nil, nil, fmt.Errorf("tether-relay: %w", err)
		}
	}
	return tokens, many, nil
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
	// Coalesce wraps each session's connection (agent.Config.WrapConn) to
	// join each yamux frame's header and body into one write (see
	// coalesceConn).
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
	// The agent as tether-agent assembles it: agent.New builds the request
	// path with the agent's own checks.
	acfg := agent.Config{Cluster: args.Cluster, Name: "bench-agent", RelayAPI: args.RelayAPI,
		RelayAgentAddr: args.RelayAgentAddr, RelayCA: relayCA, CredentialDir: args.Dir, JoinToken: args.Token,
		StreamWindow: args.YamuxWindow, Proxy: func(*http.Request) (*url.URL, error) { return nil, nil },
		Forward: impersonate.Config{Upstream: upstream, Transport: transport, Authenticator: staticAuthn{}, FlushInterval: flush,
			Credential: func(context.Context) (string, error) { return "agent-sa-token", nil }}}
	if args.Coalesce {
		acfg.WrapConn = func(tc *tls.Conn) net.Conn { return coalesceTLS{&coalesceConn{Conn: tc}, tc} }
	}
	a, err := agent.New(ctx, acfg)
	if err != nil {
		return fmt.Errorf("tether-agent: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- a.Run(ctx) }()
	deadline := time.Now().Add(30 * time.Second)
	for !a.Ready() {
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

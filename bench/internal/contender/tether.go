package contender

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/tether-k8s/tether/bench/internal/load"
	"github.com/tether-k8s/tether/bench/internal/node"
	"github.com/tether-k8s/tether/core/proxy"
	"github.com/tether-k8s/tether/core/tunnel"
)

// Tether is tether's full path: tether-proxy at the caller (TLS from the
// caller, with the kubeconfig's client certificate), the relay (TLS from the
// proxy, mutual TLS and yamux from the agent), the agent in the cluster (TLS
// end to end with the proxy inside the stream, then core/impersonate).
type Tether struct {
	// YamuxWindow, when not zero, sets the yamux stream window on the relay
	// and the agent (relay.RouterConfig.StreamWindow and
	// agent.Config.StreamWindow): an A/B of tunnel.DefaultStreamWindow.
	YamuxWindow uint32
	// StreamMemory, when not zero, is the relay's
	// relay.RouterConfig.StreamMemory (--stream-memory), which with
	// YamuxWindow sets how many streams the relay opens in all.
	StreamMemory int64
	// MaxStreamsPerCluster, when not zero, is the relay's
	// relay.RouterConfig.MaxStreamsPerCluster (--max-streams-per-cluster).
	MaxStreamsPerCluster int
	// Proxies is how many tether-proxy processes run at the caller's
	// place, each with its own connections to the relay (many callers of
	// one cluster); Instance.Dials holds one Dial per proxy. Zero means 1.
	Proxies int
	// IdleTunnels, when not zero, is tether-proxy's
	// proxy.Config.MaxIdleTunnels: an A/B of proxy.DefaultMaxIdleTunnels.
	IdleTunnels int
	// Coalesce joins each yamux frame's header and body into one write on
	// both ends of the agent's sessions (see coalesceConn): an A/B of
	// yamux's two writes per frame.
	Coalesce bool
	// FlushEvery flushes every write of a response body on the proxy and
	// the agent (FlushInterval -1), as tether did before: an A/B of the
	// default, which flushes only streaming responses at once.
	FlushEvery bool
	// Label replaces "tether" as the name.
	Label string
}

// Name implements Contender.
func (t Tether) Name() string {
	if t.Label != "" {
		return t.Label
	}
	return "tether"
}

// Version implements Contender.
func (Tether) Version() string { return "this tree" }

// Describe implements Contender.
func (t Tether) Describe() string {
	d := "tether-proxy (caller) → relay → agent (cluster) → core/impersonate; TLS caller→proxy (client certificate), " +
		"TLS proxy→relay, mutual TLS 1.3 + yamux relay↔agent, TLS 1.3 proxy↔agent inside the stream; 2 sessions per agent"
	if t.YamuxWindow != 0 {
		ab := "; **A/B**: "
		if t.Label == "" {
			ab = "; set up for many idle watches: " // ForWatches
		}
		d += fmt.Sprintf("%syamux stream window %s on both ends instead of %s (--stream-window)", ab, Bytes(int64(t.YamuxWindow)), Bytes(tunnel.DefaultStreamWindow))
		if t.StreamMemory != 0 {
			d += fmt.Sprintf(", with --stream-memory %s (%d streams in all)", Bytes(t.StreamMemory), t.StreamMemory/int64(t.YamuxWindow))
		}
	}
	if t.MaxStreamsPerCluster != 0 {
		d += fmt.Sprintf("; --max-streams-per-cluster %d", t.MaxStreamsPerCluster)
	}
	if t.Proxies > 1 {
		d += fmt.Sprintf("; %d tether-proxy processes (callers), each its own connections to the relay", t.Proxies)
	}
	if t.Coalesce {
		d += "; **A/B**: each yamux frame's header and body written to TLS in one write instead of two (harness-assembled session ends)"
	}
	if t.FlushEvery {
		d += "; **A/B**: response bodies flushed after every write on the proxy and the agent (FlushInterval -1)"
	}
	if t.IdleTunnels != 0 {
		d += fmt.Sprintf("; **A/B**: the proxy keeps %d idle tunnels instead of %d (--max-idle-tunnels)", t.IdleTunnels, proxy.DefaultMaxIdleTunnels)
	}
	return d
}

// ClusterID is the cluster every tether agent in the benchmark serves.
const ClusterID = "bench"

// Start implements Contender.
func (t Tether) Start(ctx context.Context, env *Env) (_ *Instance, err error) {
	dir, err := freshDir(env.Dir, t.Name())
	if err != nil {
		return nil, err
	}
	inst := &Instance{}
	defer func() {
		if err != nil {
			_ = inst.Close()
		}
	}()
	topo := env.Topo
	relayProc, err := inst.start(ctx, env, dir, node.Spec{Name: "relay", Place: node.Relay, Role: "tether-relay",
		Args: tetherRelayArgs{Dir: dir, Bind: topo.Bind(node.Relay), Names: topo.RelayNames(), Clusters: []string{ClusterID}, YamuxWindow: t.YamuxWindow, StreamMemory: t.StreamMemory, MaxStreamsPerCluster: t.MaxStreamsPerCluster,
			Coalesce: t.Coalesce}})
	if err != nil {
		return nil, err
	}
	inst.Relay = relayProc
	var rr tetherRelayReady
	if err := json.Unmarshal(relayProc.Ready, &rr); err != nil {
		return nil, fmt.Errorf("tether: relay's ready line: %w", err)
	}
	fromCluster := topo.Reach(node.Cluster, node.Relay)
	agentAddr, err := env.RelayFromCluster(rr.AgentPort)
	if err != nil {
		return nil, err
	}
	agentDir := filepath.Join(dir, "agent")
	if err := os.MkdirAll(agentDir, 0o700); err != nil {
		return nil, fmt.Errorf("tether: %w", err)
	}
	if _, err := inst.start(ctx, env, dir, node.Spec{Name: "agent", Place: node.Cluster, Role: "tether-agent", Args: tetherAgentArgs{
		Dir: agentDir, Cluster: ClusterID, CA: rr.CA, Token: rr.Tokens[0], YamuxWindow: t.YamuxWindow, Coalesce: t.Coalesce, FlushEvery: t.FlushEvery,
		RelayAPI:       (&url.URL{Scheme: "https", Host: net.JoinHostPort(fromCluster, strconv.Itoa(rr.APIPort))}).String(),
		RelayAgentAddr: agentAddr,
		Target:         "http://" + env.TargetAddr(node.Cluster),
	}}); err != nil {
		return nil, err
	}
	// Both of the agent's sessions up before any traffic.
	if err := waitSessions(relayProc, 2, 30*time.Second); err != nil {
		return nil, err
	}
	fromCaller := topo.Reach(node.Caller, node.Relay)
	pargs := tetherProxyArgs{
		RelayURL: (&url.URL{Scheme: "https", Host: net.JoinHostPort(fromCaller, strconv.Itoa(rr.APIPort))}).String(),
		CA:       rr.CA, Cluster: ClusterID, IdleTunnels: t.IdleTunnels, FlushEvery: t.FlushEvery,
	}
	for i := range max(t.Proxies, 1) {
		name := "proxy"
		if i > 0 {
			name = "proxy-" + strconv.Itoa(i+1)
		}
		dial, err := startProxy(ctx, env, inst, dir, name, pargs)
		if err != nil {
			return nil, err
		}
		inst.Dials = append(inst.Dials, dial)
	}
	inst.Dial = inst.Dials[0]
	return inst, nil
}

// freshDir makes a directory for a contender's instance under parent:
// parent/name, or parent/name-2 and so on when an instance of the same
// name (W5 starts tether again for many watches) has one.
func freshDir(parent, name string) (string, error) {
	for i := 1; ; i++ {
		dir := filepath.Join(parent, name)
		if i > 1 {
			dir += "-" + strconv.Itoa(i)
		}
		err := os.Mkdir(dir, 0o755)
		if err == nil {
			return dir, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return "", fmt.Errorf("tether: instance directory: %w", err)
		}
	}
}

// startProxy starts a tether-proxy process named name (the component
// "proxy") for inst, and returns the dial of a caller that uses its
// kubeconfig.
func startProxy(ctx context.Context, env *Env, inst *Instance, dir, name string, pargs tetherProxyArgs) (load.Dial, error) {
	topo := env.Topo
	proxyProc, err := inst.start(ctx, env, dir, node.Spec{Name: name, Component: "proxy", Place: node.Caller, Role: "tether-proxy", Args: pargs})
	if err != nil {
		return nil, err
	}
	var pr tetherProxyReady
	if err := json.Unmarshal(proxyProc.Ready, &pr); err != nil {
		return nil, fmt.Errorf("tether: %s's ready line: %w", name, err)
	}
	tlsCfg, err := kubeconfigTLS(pr)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) (net.Conn, error) {
		raw, err := topo.Dial(ctx, node.Caller, pr.Addr)
		if err != nil {
			return nil, fmt.Errorf("tether: dial %s: %w", name, err)
		}
		c := tls.Client(raw, tlsCfg)
		if err := c.HandshakeContext(ctx); err != nil {
			_ = raw.Close()
			return nil, fmt.Errorf("tether: TLS to %s: %w", name, err)
		}
		return c, nil
	}, nil
}

// ForWatches implements WatchScaler: tether's set-up for many idle watches
// (docs/performance.md, "many idle watches"): a 256 KiB stream window, a
// stream memory and a per-cluster cap that admit n streams with room for
// the proxies' idle tunnels (16,384 at least, 4 GiB / 256 KiB), and one
// tether-proxy per perCaller watches, since each watch holds two of a
// proxy's descriptors (the caller's connection and its tunnel). tether's
// A/B variants (Label set) have none: the set-up overrides what several of
// them vary.
func (t Tether) ForWatches(n, perCaller int) (Contender, bool) {
	if t.Label != "" || perCaller < 1 {
		return nil, false
	}
	const window = 256 << 10
	streams := max(16384, n+n/4)
	return Tether{YamuxWindow: window, StreamMemory: int64(streams) * window, MaxStreamsPerCluster: streams,
		Proxies: (n + perCaller - 1) / perCaller}, true
}

// kubeconfigTLS is the client side of the proxy's kubeconfig.
func kubeconfigTLS(pr tetherProxyReady) (*tls.Config, error) {
	cert, err := tls.X509KeyPair([]byte(pr.ClientCert), []byte(pr.Key))
	if err != nil {
		return nil, fmt.Errorf("tether: the proxy's client certificate: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(pr.CA)) {
		return nil, errors.New("tether: the proxy's CA is unusable")
	}
	host, _, _ := net.SplitHostPort(pr.Addr)
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: host,
		NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS12}, nil
}

// RelayStats is what tether's relay reports.
type RelayStats struct {
	// Tunnels is how many tunnels callers opened so far.
	Tunnels int64 `json:"tunnels"`
	// Sessions is how many agent sessions are live.
	Sessions int `json:"sessions"`
	// Connected is how many clusters have at least one live session.
	Connected int `json:"connected"`
	// Goroutines is the relay's goroutine count.
	Goroutines int `json:"goroutines"`
	// Replicas is how many replicas (itself included) a replica sees live
	// in etcd; zero for a relay alone.
	Replicas int `json:"replicas"`
}

// waitSessions waits until tether's relay holds n agent sessions.
func waitSessions(relayProc *node.Proc, n int, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		var st RelayStats
		if err := relayProc.Stats(&st); err != nil {
			return err
		}
		if st.Sessions >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("tether: %d agent sessions after %s, want %d", st.Sessions, limit, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Bytes formats a byte count with a binary unit.
func Bytes(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

package contender

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tether-k8s/tether/bench/internal/load"
	"github.com/tether-k8s/tether/bench/internal/node"
	etcdfix "github.com/tether-k8s/tether/fixtures/etcd"
)

// etcdArgs are the arguments of the etcd role: a real etcd cluster from
// fixtures/etcd, started from inside the relay's place so that the
// replicas reach it on their loopback.
type etcdArgs struct {
	Dir, BinDir string
	Members     int
}

// etcdReady is what the etcd role reports.
type etcdReady struct {
	Endpoints []string
}

// etcdRole runs an etcd cluster (fixtures/etcd) until ctx ends.
func etcdRole(ctx context.Context, raw json.RawMessage, c *node.Child) error {
	var args etcdArgs
	if err := json.Unmarshal(raw, &args); err != nil {
		return fmt.Errorf("etcd: arguments: %w", err)
	}
	e, err := etcdfix.Start(etcdfix.Config{Members: args.Members, Dir: args.Dir, BinDir: args.BinDir})
	if err != nil {
		return err
	}
	defer e.Stop()
	if err := c.Ready(etcdReady{Endpoints: e.Endpoints()}); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

// HAConfig sizes an HA relay: replicas on etcd behind HAProxy.
type HAConfig struct {
	// Replicas is how many relay replicas run. Zero means 3.
	Replicas int
	// Clusters are created with the caller's group granted (as Tether's
	// cluster "bench"); ClusterPrefix and ClusterCount name more, with
	// their join tokens in the first replica's directory (as the swarm's).
	Clusters      []string
	ClusterPrefix string
	ClusterCount  int
	// Balancers is how many HAProxy processes run, each with its own two
	// frontends over every replica (each holds two descriptors per
	// connection, so many sessions need several). Zero means 1.
	Balancers int
}

// HA is tether's relay as N replicas (tether-relay serve --store etcd
// --peer-listen, assembled by relay.Start) on a real 3-member etcd, behind
// HAProxy: what the HA workloads (W6R, W7R, W9) measure.
type HA struct {
	env  *Env
	dir  string
	etcd *node.Proc
	// args are each replica's; after its first start they name its ports.
	args   []tetherRelayArgs
	relays []*node.Proc
	lbs    []*node.Proc
	// lbPorts are each balancer's API and agent ports.
	lbPorts [][2]int
	// CA is the relay's CA (PEM); Tokens the join tokens of Clusters.
	CA     string
	Tokens []string
	mu     sync.Mutex
}

// HAProxyBinary returns HAProxy's path, or an error saying how to get it.
func HAProxyBinary() (string, error) {
	for _, p := range []string{"haproxy", "/usr/sbin/haproxy"} {
		if path, err := exec.LookPath(p); err == nil {
			return path, nil
		}
	}
	return "", errors.New("ha: haproxy is not installed: the HA workloads run the replicas behind HAProxy (`make deps` installs Debian's package)")
}

// StartHA starts etcd, the replicas and the balancers.
func StartHA(ctx context.Context, env *Env, name string, cfg HAConfig) (_ *HA, err error) {
	if cfg.Replicas == 0 {
		cfg.Replicas = 3
	}
	cfg.Balancers = max(cfg.Balancers, 1)
	haproxy, err := HAProxyBinary()
	if err != nil {
		return nil, err
	}
	etcdBin, err := etcdfix.Binary("")
	if err != nil {
		return nil, fmt.Errorf("ha: %w", err)
	}
	dir, err := freshDir(env.Dir, name)
	if err != nil {
		return nil, err
	}
	h := &HA{env: env, dir: dir}
	defer func() {
		if err != nil {
			_ = h.Close()
		}
	}()
	topo := env.Topo
	if h.etcd, err = node.Start(ctx, topo, dir, node.Spec{Name: "etcd", Place: node.Relay, Role: "etcd",
		Args: etcdArgs{Dir: filepath.Join(dir, "etcd"), BinDir: filepath.Dir(etcdBin), Members: 3}}); err != nil {
		return nil, err
	}
	var er etcdReady
	if err := json.Unmarshal(h.etcd.Ready, &er); err != nil {
		return nil, fmt.Errorf("ha: etcd's ready line: %w", err)
	}
	kek := make([]byte, 32)
	if _, err := rand.Read(kek); err != nil {
		return nil, fmt.Errorf("ha: key-encryption key: %w", err)
	}
	for i := range cfg.Replicas {
		rdir := filepath.Join(dir, fmt.Sprintf("replica-%d", i))
		if err := os.MkdirAll(rdir, 0o755); err != nil {
			return nil, fmt.Errorf("ha: %w", err)
		}
		a := tetherRelayArgs{Dir: rdir, Bind: topo.Bind(node.Relay), Names: topo.RelayNames(), Clusters: cfg.Clusters,
			ClusterPrefix: cfg.ClusterPrefix, ClusterCount: cfg.ClusterCount, Restart: i > 0,
			Etcd: &tetherEtcdArgs{Endpoints: er.Endpoints, Prefix: "/bench/", KEK: hex.EncodeToString(kek), RelayID: fmt.Sprintf("relay-%d", i)}}
		h.args = append(h.args, a)
		h.relays = append(h.relays, nil)
		if err := h.StartReplica(ctx, i); err != nil {
			return nil, err
		}
		if i == 0 {
			var rr tetherRelayReady
			if err := json.Unmarshal(h.relays[0].Ready, &rr); err != nil {
				return nil, fmt.Errorf("ha: replica 0's ready line: %w", err)
			}
			h.CA, h.Tokens = rr.CA, rr.Tokens
		}
	}
	if err := h.WaitReplicas(cfg.Replicas, 30*time.Second); err != nil {
		return nil, err
	}
	for b := range cfg.Balancers {
		if err := h.startBalancer(ctx, haproxy, b); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// StartReplica starts replica i: the first time on ports of its own, then
// again on the same ports with the same name (after KillReplica or
// StopReplica).
func (h *HA) StartReplica(ctx context.Context, i int) error {
	a := h.args[i]
	// The first replica creates the clusters, which takes a while for many.
	readyLimit := max(node.ReadyTimeout, time.Duration(a.ClusterCount)*20*time.Millisecond)
	name := fmt.Sprintf("relay-%d", i)
	if h.relays[i] != nil {
		name = fmt.Sprintf("relay-%d-%s", i, time.Now().Format("150405.000"))
	}
	p, err := node.Start(ctx, h.env.Topo, h.dir, node.Spec{Name: name, Component: "relay", Place: node.Relay, Role: "tether-relay", Args: a,
		ReadyTimeout: readyLimit})
	if err != nil {
		return err
	}
	var rr tetherRelayReady
	if err := json.Unmarshal(p.Ready, &rr); err != nil {
		_ = p.Stop()
		return fmt.Errorf("ha: replica %d's ready line: %w", i, err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.relays[i] = p
	// Restarted, it listens where it did, as a pod behind its Service.
	h.args[i].APIPort, h.args[i].AgentPort, h.args[i].HealthPort, h.args[i].Restart = rr.APIPort, rr.AgentPort, rr.HealthPort, true
	return nil
}

// KillReplica ends replica i with SIGKILL and returns the moment it did.
func (h *HA) KillReplica(i int) (time.Time, error) {
	p := h.Replica(i)
	killed := time.Now()
	if err := p.Kill(); err != nil {
		return killed, err
	}
	<-p.Exited()
	return killed, p.Stop()
}

// DrainReplica drains replica i as tether-relay serve does on SIGTERM
// (relay.Relay.Drain for at most timeout), then stops it: its keys are
// deleted and its lease revoked as it closes.
func (h *HA) DrainReplica(i int, timeout time.Duration) error {
	p := h.Replica(i)
	if err := p.CallWithin(timeout+10*time.Second, "drain", RelayDrain{Timeout: timeout}, nil); err != nil {
		return fmt.Errorf("ha: drain replica %d: %w", i, err)
	}
	return p.Stop()
}

// Replica returns replica i's current process.
func (h *HA) Replica(i int) *node.Proc {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.relays[i]
}

// Replicas returns the replicas' current processes.
func (h *HA) Replicas() []*node.Proc {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.relays)
}

// ReplicaStats returns every replica's stats (a replica that does not
// answer, killed, counts as zero).
func (h *HA) ReplicaStats() []RelayStats {
	ps := h.Replicas()
	out := make([]RelayStats, len(ps))
	for i, p := range ps {
		_ = p.Stats(&out[i])
	}
	return out
}

// WaitReplicas waits until every replica sees n replicas live in etcd.
func (h *HA) WaitReplicas(n int, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		ok := true
		for _, st := range h.ReplicaStats() {
			ok = ok && st.Replicas == n
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("ha: the replicas do not see %d replicas after %s", n, limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WaitSessions waits until the replicas together hold n agent sessions.
func (h *HA) WaitSessions(n int, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		sum := 0
		for _, st := range h.ReplicaStats() {
			sum += st.Sessions
		}
		if sum >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("ha: %d agent sessions on the replicas after %s, want %d", sum, limit, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startBalancer writes HAProxy's configuration for balancer b and starts
// it: two TCP frontends (the API, the agent endpoint), round robin over
// every replica, each checked on its /readyz every 100 ms and out after two
// failures (a draining replica answers 503 and gets no new connection; a
// killed one refuses the check at once, and a connection HAProxy sent it
// before is retried elsewhere: `option redispatch`). A check may take 1 s:
// on a busy machine a replica's answer can take longer than the interval,
// and a replica that is slow is not down.
func (h *HA) startBalancer(ctx context.Context, haproxy string, b int) error {
	topo := h.env.Topo
	apiPort, err := topo.FreePort(node.Relay)
	if err != nil {
		return err
	}
	agentPort, err := topo.FreePort(node.Relay)
	if err != nil {
		return err
	}
	// Two descriptors a connection, and some for the checks.
	maxconn := min(max((fileLimit()-200)/2, 100), 50000)
	var cfg strings.Builder
	fmt.Fprintf(&cfg, `global
    maxconn %d
defaults
    mode tcp
    timeout connect 2s
    timeout check 1s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    retries 3
    option redispatch 1
frontend api
    bind %s:%d
    default_backend api
frontend agents
    bind %s:%d
    default_backend agents
`, maxconn, topo.Bind(node.Relay), apiPort, topo.Bind(node.Relay), agentPort)
	for _, be := range []string{"api", "agents"} {
		fmt.Fprintf(&cfg, "backend %s\n    balance roundrobin\n    option httpchk GET /readyz\n", be)
		for i, a := range h.args {
			port := a.APIPort
			if be == "agents" {
				port = a.AgentPort
			}
			fmt.Fprintf(&cfg, "    server relay-%d 127.0.0.1:%d check port %d inter 100ms fall 2 rise 1\n", i, port, a.HealthPort)
		}
	}
	name := fmt.Sprintf("haproxy-%d", b)
	path := filepath.Join(h.dir, name+".cfg")
	if err := os.WriteFile(path, []byte(cfg.String()), 0o600); err != nil {
		return fmt.Errorf("ha: %w", err)
	}
	p, err := node.Start(ctx, topo, h.dir, node.Spec{Name: name, Component: "balancer", Place: node.Relay, Path: haproxy, Argv: []string{"-db", "-f", path}})
	if err != nil {
		return err
	}
	h.lbs = append(h.lbs, p)
	h.lbPorts = append(h.lbPorts, [2]int{apiPort, agentPort})
	for _, port := range []int{apiPort, agentPort} {
		if err := topo.WaitListening(ctx, node.Relay, hostPort("127.0.0.1", port), 10*time.Second); err != nil {
			return fmt.Errorf("ha: %s: %w", name, err)
		}
	}
	return nil
}

// fileLimit returns this process's open-file limit (its children's too).
func fileLimit() int {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 1024
	}
	return int(min(l.Cur, 1<<30))
}

// Balancers returns how many HAProxy processes run.
func (h *HA) Balancers() int { return len(h.lbs) }

// APIURL returns balancer b's API frontend as reached from place from.
func (h *HA) APIURL(from node.Place, b int) string {
	return (&url.URL{Scheme: "https", Host: hostPort(h.env.Topo.Reach(from, node.Relay), h.lbPorts[b][0])}).String()
}

// AgentAddr returns balancer b's agent frontend as reached from the
// cluster.
func (h *HA) AgentAddr(b int) string {
	return hostPort(h.env.Topo.Reach(node.Cluster, node.Relay), h.lbPorts[b][1])
}

// Dir is the HA relay's directory (the first replica's holds the swarm's
// tokens).
func (h *HA) Dir() string { return h.dir }

// Close stops the balancers, the replicas and etcd.
func (h *HA) Close() error {
	var errs []error
	for _, p := range append(append(slices.Clone(h.lbs), h.Replicas()...), h.etcd) {
		if p != nil {
			errs = append(errs, p.Stop())
		}
	}
	return errors.Join(errs...)
}

// StartHAPath starts an HA relay with tether's cluster "bench", its agent
// (2 sessions, through the balancer) and a tether-proxy (through the
// balancer): Tether's path, on three replicas. It returns when the agent
// holds a session on two replicas.
func StartHAPath(ctx context.Context, env *Env) (_ *HA, _ *Instance, err error) {
	h, err := StartHA(ctx, env, "tether-ha", HAConfig{Clusters: []string{ClusterID}})
	if err != nil {
		return nil, nil, err
	}
	inst := &Instance{}
	defer func() {
		if err != nil {
			_ = inst.Close()
			_ = h.Close()
		}
	}()
	agentDir := filepath.Join(h.dir, "agent")
	if err := os.MkdirAll(agentDir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("ha: %w", err)
	}
	if _, err := inst.start(ctx, env, h.dir, node.Spec{Name: "agent", Place: node.Cluster, Role: "tether-agent", Args: tetherAgentArgs{
		Dir: agentDir, Cluster: ClusterID, CA: h.CA, Token: h.Tokens[0],
		RelayAPI: h.APIURL(node.Cluster, 0), RelayAgentAddr: h.AgentAddr(0), Target: "http://" + env.TargetAddr(node.Cluster),
	}}); err != nil {
		return nil, nil, err
	}
	if _, err := h.WaitSpread(2, 30*time.Second); err != nil {
		return nil, nil, err
	}
	dial, err := startProxy(ctx, env, inst, h.dir, "proxy", tetherProxyArgs{RelayURL: h.APIURL(node.Caller, 0), CA: h.CA, Cluster: ClusterID})
	if err != nil {
		return nil, nil, err
	}
	inst.Dial, inst.Dials = dial, []load.Dial{dial}
	return h, inst, nil
}

// Spread returns on how many replicas the agent of the single cluster of
// the HA path holds a session, and which.
func (h *HA) Spread() (int, []int) {
	var on []int
	for i, st := range h.ReplicaStats() {
		if st.Sessions > 0 {
			on = append(on, i)
		}
	}
	return len(on), on
}

// WaitSpread waits until the agent holds a session on n replicas, and
// returns how long that took.
func (h *HA) WaitSpread(n int, limit time.Duration) (time.Duration, error) {
	began := time.Now()
	for {
		if k, _ := h.Spread(); k >= n {
			return time.Since(began), nil
		}
		if time.Since(began) > limit {
			k, on := h.Spread()
			return 0, fmt.Errorf("ha: the agent holds sessions on %d replica(s) %v after %s, want %d", k, on, limit, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

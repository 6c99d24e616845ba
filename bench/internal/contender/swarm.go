package contender

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tether-k8s/tether/bench/internal/node"
	"github.com/tether-k8s/tether/core/agent"
	"github.com/tether-k8s/tether/core/impersonate"
)

// SwarmArgs are the arguments of the tether-swarm role: many idle agents in
// one process, each of its own cluster (W6, W7).
type SwarmArgs struct {
	// Dir holds each agent's credential (Dir/<cluster>) and the relay's
	// tokens file (Dir/tokens, one a line, for ClusterPrefix0 onward).
	Dir, TokensFile string
	// ClusterPrefix starts the clusters' IDs (then 0, 1...).
	ClusterPrefix string
	// First is the index of this process's first cluster (and token): a
	// swarm split over several processes gives each its own range.
	First int
	// Sessions is each agent's agent.Config.Sessions (zero: its default,
	// 2).
	Sessions int
	// RelayAPI, RelayAgentAddr and CA are the relay's, as for an agent.
	RelayAPI       string
	RelayAgentAddr string
	CA             string
	// Target is the API server's URL (no request reaches it in W6).
	Target string
}

// SwarmGrow is the argument of the swarm's "grow" command.
type SwarmGrow struct {
	// Count is how many agents this swarm process should run in all.
	Count int
}

// swarmRole runs agents on command: "grow" {Count} joins and starts agents
// until Count run (it answers once they all joined and started).
func swarmRole(ctx context.Context, raw json.RawMessage, c *node.Child) error {
	var args SwarmArgs
	if err := json.Unmarshal(raw, &args); err != nil {
		return fmt.Errorf("tether-swarm: arguments: %w", err)
	}
	relayCA := x509.NewCertPool()
	if !relayCA.AppendCertsFromPEM([]byte(args.CA)) {
		return errors.New("tether-swarm: no relay CA")
	}
	upstream, err := url.Parse(args.Target)
	if err != nil {
		return fmt.Errorf("tether-swarm: target: %w", err)
	}
	// Every agent's request path, as the agent builds it; the swarm's
	// agents share one transport to the target.
	forward := impersonate.Config{Upstream: upstream, Transport: &http.Transport{}, Authenticator: staticAuthn{},
		Credential: func(context.Context) (string, error) { return "agent-sa-token", nil }}
	var mu sync.Mutex // serialises grow
	var agents []*agent.Agent
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c.OnCommand("grow", func(arg json.RawMessage) (any, error) {
		var g SwarmGrow
		if err := json.Unmarshal(arg, &g); err != nil {
			return nil, fmt.Errorf("tether-swarm: grow: %w", err)
		}
		mu.Lock()
		defer mu.Unlock()
		b, err := os.ReadFile(args.TokensFile)
		if err != nil {
			return nil, fmt.Errorf("tether-swarm: %w", err)
		}
		tokens := strings.Fields(string(b))
		if args.First+g.Count > len(tokens) {
			return nil, fmt.Errorf("tether-swarm: agents %d to %d asked, %d clusters exist", args.First, args.First+g.Count-1, len(tokens))
		}
		from := len(agents)
		made := make([]*agent.Agent, g.Count-from)
		errs := make([]error, len(made))
		var joins sync.WaitGroup
		next := make(chan int)
		for range 16 { // joins at once
			joins.Add(1)
			go func() {
				defer joins.Done()
				for i := range next {
					id := args.ClusterPrefix + strconv.Itoa(args.First+from+i)
					dir := filepath.Join(args.Dir, id)
					if err := os.MkdirAll(dir, 0o700); err != nil {
						errs[i] = err
						continue
					}
					made[i], errs[i] = agent.New(ctx, agent.Config{Cluster: id, Name: "swarm", RelayAPI: args.RelayAPI,
						RelayAgentAddr: args.RelayAgentAddr, RelayCA: relayCA, CredentialDir: dir, JoinToken: tokens[args.First+from+i], Forward: forward,
						Sessions: args.Sessions,
						Proxy:    func(*http.Request) (*url.URL, error) { return nil, nil }})
				}
			}()
		}
		for i := range made {
			next <- i
		}
		close(next)
		joins.Wait()
		if err := errors.Join(errs...); err != nil {
			return nil, fmt.Errorf("tether-swarm: %w", err)
		}
		for _, a := range made {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = a.Run(ctx)
			}()
		}
		agents = append(agents, made...)
		return map[string]int{"Agents": len(agents)}, nil
	})
	c.OnStats(func() map[string]any {
		mu.Lock()
		defer mu.Unlock()
		ready := 0
		for _, a := range agents {
			if a.Ready() {
				ready++
			}
		}
		return map[string]any{"agents": len(agents), "ready": ready}
	})
	if err := c.Ready(struct{}{}); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

// Swarm is tether's relay with many idle agents, each of its own cluster,
// run by one or more tether-swarm processes (W6, W7).
type Swarm struct {
	env    *Env
	dir    string
	cfg    SwarmConfig
	args   tetherRelayArgs
	relay  *node.Proc
	swarms []*node.Proc
	// ha, when set, is the swarm's HA relay (relay is nil).
	ha *HA
}

// SwarmConfig sizes a Swarm.
type SwarmConfig struct {
	// Agents is the most agents the swarm will run (the relay's clusters).
	// Required.
	Agents int
	// Sessions is each agent's sessions (agent.Config.Sessions). Zero means
	// core/agent's default, 2.
	Sessions int
	// PerProcess is the most agents one tether-swarm process runs: each
	// holds Sessions descriptors there. Zero means Agents (one process).
	PerProcess int
}

// sessions returns the sessions each agent holds.
func (c SwarmConfig) sessions() int {
	if c.Sessions == 0 {
		return 2
	}
	return c.Sessions
}

// SwarmPrefix starts the swarm's cluster IDs.
const SwarmPrefix = "swarm-"

// StartSwarm starts a relay with cfg.Agents clusters and the swarm
// processes, with no agent yet.
func StartSwarm(ctx context.Context, env *Env, cfg SwarmConfig) (_ *Swarm, err error) {
	if cfg.Agents < 1 || cfg.Sessions < 0 || cfg.PerProcess < 0 {
		return nil, fmt.Errorf("swarm: %+v: want at least one agent, and no negative count", cfg)
	}
	if cfg.PerProcess == 0 {
		cfg.PerProcess = cfg.Agents
	}
	dir := filepath.Join(env.Dir, fmt.Sprintf("swarm-%dx%d", cfg.Agents, cfg.sessions()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("swarm: %w", err)
	}
	s := &Swarm{env: env, dir: dir, cfg: cfg}
	defer func() {
		if err != nil {
			_ = s.Close()
		}
	}()
	topo := env.Topo
	s.args = tetherRelayArgs{Dir: dir, Bind: topo.Bind(node.Relay), Names: topo.RelayNames(), ClusterPrefix: SwarmPrefix, ClusterCount: cfg.Agents}
	// The relay creates every cluster before it is ready.
	readyLimit := max(node.ReadyTimeout, time.Duration(cfg.Agents)*20*time.Millisecond)
	if s.relay, err = node.Start(ctx, topo, dir, node.Spec{Name: "relay", Place: node.Relay, Role: "tether-relay", Args: s.args,
		ReadyTimeout: readyLimit}); err != nil {
		return nil, err
	}
	var rr tetherRelayReady
	if err := json.Unmarshal(s.relay.Ready, &rr); err != nil {
		return nil, fmt.Errorf("swarm: relay's ready line: %w", err)
	}
	// A restarted relay listens where this one does.
	s.args.APIPort, s.args.AgentPort, s.args.Restart = rr.APIPort, rr.AgentPort, true
	fromCluster := topo.Reach(node.Cluster, node.Relay)
	api := (&url.URL{Scheme: "https", Host: hostPort(fromCluster, rr.APIPort)}).String()
	if err := s.startProcs(ctx, filepath.Join(dir, "tokens"), rr.CA, func(int) (string, string) { return api, hostPort(fromCluster, rr.AgentPort) }); err != nil {
		return nil, err
	}
	return s, nil
}

// startProcs starts the swarm's processes; relay gives the i-th its
// relay's API URL and agent endpoint.
func (s *Swarm) startProcs(ctx context.Context, tokensFile, ca string, relay func(i int) (api, agentAddr string)) error {
	for first := 0; first < s.cfg.Agents; first += s.cfg.PerProcess {
		name := "agents"
		if first > 0 {
			name = fmt.Sprintf("agents-%d", len(s.swarms)+1)
		}
		api, agentAddr := relay(len(s.swarms))
		p, err := node.Start(ctx, s.env.Topo, s.dir, node.Spec{Name: name, Component: "agents", Place: node.Cluster, Role: "tether-swarm", Args: SwarmArgs{
			Dir: s.dir, TokensFile: tokensFile, ClusterPrefix: SwarmPrefix, First: first, Sessions: s.cfg.Sessions, CA: ca,
			RelayAPI: api, RelayAgentAddr: agentAddr, Target: "http://" + s.env.TargetAddr(node.Cluster),
		}})
		if err != nil {
			return err
		}
		s.swarms = append(s.swarms, p)
	}
	return nil
}

// StartHASwarm starts an HA relay (replicas on etcd behind HAProxy, see
// StartHA) with cfg.Agents clusters, and the swarm processes, with no agent
// yet: each swarm process dials a balancer of its own, so that no HAProxy
// process holds more descriptors than its limit.
func StartHASwarm(ctx context.Context, env *Env, cfg SwarmConfig, replicas int) (_ *Swarm, err error) {
	if cfg.Agents < 1 || cfg.Sessions < 0 || cfg.PerProcess < 0 {
		return nil, fmt.Errorf("swarm: %+v: want at least one agent, and no negative count", cfg)
	}
	if cfg.PerProcess == 0 {
		cfg.PerProcess = cfg.Agents
	}
	procs := (cfg.Agents + cfg.PerProcess - 1) / cfg.PerProcess
	h, err := StartHA(ctx, env, fmt.Sprintf("ha-swarm-%dx%d", cfg.Agents, cfg.sessions()), HAConfig{Replicas: replicas,
		ClusterPrefix: SwarmPrefix, ClusterCount: cfg.Agents, Balancers: procs})
	if err != nil {
		return nil, err
	}
	s := &Swarm{env: env, dir: filepath.Join(h.Dir(), "agents"), cfg: cfg, ha: h}
	defer func() {
		if err != nil {
			_ = s.Close()
		}
	}()
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return nil, fmt.Errorf("swarm: %w", err)
	}
	if err := s.startProcs(ctx, filepath.Join(h.args[0].Dir, "tokens"), h.CA, func(i int) (string, string) {
		return h.APIURL(node.Cluster, i), h.AgentAddr(i)
	}); err != nil {
		return nil, err
	}
	return s, nil
}

// HA returns the swarm's HA relay, or nil for a swarm on one relay.
func (s *Swarm) HA() *HA { return s.ha }

// Sessions returns the sessions each agent holds.
func (s *Swarm) Sessions() int { return s.cfg.sessions() }

// Grow runs agents until n run, filling the swarm processes in order (each
// joins its agents 16 at once, the processes side by side), and waits (up
// to limit) until the relay holds all their sessions.
func (s *Swarm) Grow(n int, limit time.Duration) error {
	if n > s.cfg.Agents {
		return fmt.Errorf("swarm: %d agents asked, the relay has %d clusters", n, s.cfg.Agents)
	}
	counts := splitAgents(n, s.cfg.PerProcess, len(s.swarms))
	errs := make([]error, len(s.swarms))
	var wg sync.WaitGroup
	for i, p := range s.swarms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = p.CallWithin(limit, "grow", SwarmGrow{Count: counts[i]}, nil)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if s.ha != nil {
		return s.ha.WaitSessions(s.Sessions()*n, limit)
	}
	return waitSessions(s.relay, s.Sessions()*n, limit)
}

// splitAgents returns how many of n agents each of processes swarm
// processes runs, filling them in order with at most perProcess each.
func splitAgents(n, perProcess, processes int) []int {
	out := make([]int, processes)
	for i := range out {
		out[i] = min(max(n-i*perProcess, 0), perProcess)
	}
	return out
}

// Relay returns the relay's process (nil for an HA swarm: see HA).
func (s *Swarm) Relay() *node.Proc { return s.relay }

// Agents returns the swarm's processes.
func (s *Swarm) Agents() []*node.Proc { return s.swarms }

// KillRelay kills the relay with SIGKILL and starts a new one on the same
// registry and ports; it returns when the new one is ready, and the moment
// the old one was killed.
func (s *Swarm) KillRelay(ctx context.Context) (time.Time, error) {
	killed := time.Now()
	if err := s.relay.Kill(); err != nil {
		return killed, err
	}
	<-s.relay.Exited()
	_ = s.relay.Stop()
	p, err := node.Start(ctx, s.env.Topo, s.dir, node.Spec{Name: "relay-restarted", Place: node.Relay, Role: "tether-relay", Args: s.args})
	if err != nil {
		return killed, err
	}
	s.relay = p
	return killed, nil
}

// Close stops the swarm's processes and the relay.
func (s *Swarm) Close() error {
	var errs []error
	for _, p := range append(slices.Clone(s.swarms), s.relay) {
		if p != nil {
			errs = append(errs, p.Stop())
		}
	}
	if s.ha != nil {
		errs = append(errs, s.ha.Close())
	}
	return errors.Join(errs...)
}

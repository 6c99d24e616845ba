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
	// RelayAPI, RelayAgentAddr and CA are the relay's, as for an agent.
	RelayAPI       string
	RelayAgentAddr string
	CA             string
	// Target is the API server's URL (no request reaches it in W6).
	Target string
}

// SwarmGrow is the argument of the swarm's "grow" command.
type SwarmGrow struct {
	// Count is how many agents the swarm should run in all.
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
	h, err := impersonate.New(impersonate.Config{Upstream: upstream, Transport: &http.Transport{}, Authenticator: staticAuthn{},
		Credential: func(context.Context) (string, error) { return "agent-sa-token", nil }})
	if err != nil {
		return fmt.Errorf("tether-swarm: %w", err)
	}
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
		if g.Count > len(tokens) {
			return nil, fmt.Errorf("tether-swarm: %d agents asked, %d clusters exist", g.Count, len(tokens))
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
					id := args.ClusterPrefix + strconv.Itoa(from+i)
					dir := filepath.Join(args.Dir, id)
					if err := os.MkdirAll(dir, 0o700); err != nil {
						errs[i] = err
						continue
					}
					made[i], errs[i] = agent.New(ctx, agent.Config{Cluster: id, Name: "swarm", RelayAPI: args.RelayAPI,
						RelayAgentAddr: args.RelayAgentAddr, RelayCA: relayCA, CredentialDir: dir, JoinToken: tokens[from+i], Handler: h,
						Proxy: func(*http.Request) (*url.URL, error) { return nil, nil }})
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
// run by one tether-swarm process (W6, W7).
type Swarm struct {
	env   *Env
	dir   string
	args  tetherRelayArgs
	relay *node.Proc
	swarm *node.Proc
}

// SwarmPrefix starts the swarm's cluster IDs.
const SwarmPrefix = "swarm-"

// StartSwarm starts a relay with max clusters and a swarm process, with no
// agent yet.
func StartSwarm(ctx context.Context, env *Env, max int) (_ *Swarm, err error) {
	dir := filepath.Join(env.Dir, "swarm")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("swarm: %w", err)
	}
	s := &Swarm{env: env, dir: dir}
	defer func() {
		if err != nil {
			_ = s.Close()
		}
	}()
	topo := env.Topo
	s.args = tetherRelayArgs{Dir: dir, Bind: topo.Bind(node.Relay), Names: topo.RelayNames(), ClusterPrefix: SwarmPrefix, ClusterCount: max}
	if s.relay, err = node.Start(ctx, topo, dir, node.Spec{Name: "relay", Place: node.Relay, Role: "tether-relay", Args: s.args}); err != nil {
		return nil, err
	}
	var rr tetherRelayReady
	if err := json.Unmarshal(s.relay.Ready, &rr); err != nil {
		return nil, fmt.Errorf("swarm: relay's ready line: %w", err)
	}
	// A restarted relay listens where this one does.
	s.args.APIPort, s.args.AgentPort, s.args.Restart = rr.APIPort, rr.AgentPort, true
	fromCluster := topo.Reach(node.Cluster, node.Relay)
	s.swarm, err = node.Start(ctx, topo, dir, node.Spec{Name: "agents", Place: node.Cluster, Role: "tether-swarm", Args: SwarmArgs{
		Dir: dir, TokensFile: filepath.Join(dir, "tokens"), ClusterPrefix: SwarmPrefix, CA: rr.CA,
		RelayAPI:       (&url.URL{Scheme: "https", Host: hostPort(fromCluster, rr.APIPort)}).String(),
		RelayAgentAddr: hostPort(fromCluster, rr.AgentPort),
		Target:         "http://" + env.TargetAddr(node.Cluster),
	}})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Grow runs agents until n run, and waits (up to limit) until the relay
// holds all their sessions (two each).
func (s *Swarm) Grow(n int, limit time.Duration) error {
	if err := s.swarm.CallWithin(limit, "grow", SwarmGrow{Count: n}, nil); err != nil {
		return err
	}
	return waitSessions(s.relay, 2*n, limit)
}

// Relay returns the relay's process.
func (s *Swarm) Relay() *node.Proc { return s.relay }

// Agents returns the swarm's process.
func (s *Swarm) Agents() *node.Proc { return s.swarm }

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

// Close stops the swarm and the relay.
func (s *Swarm) Close() error {
	var errs []error
	for _, p := range []*node.Proc{s.swarm, s.relay} {
		if p != nil {
			errs = append(errs, p.Stop())
		}
	}
	return errors.Join(errs...)
}

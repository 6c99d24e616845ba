package contender

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/tether-k8s/tether/bench/internal/load"
	"github.com/tether-k8s/tether/bench/internal/node"
)

// Contender is one way of carrying a caller's traffic to the target: the
// direct baseline, tether, or a peer.
type Contender interface {
	// Name labels the contender in reports.
	Name() string
	// Version is the version measured (a module version, or tether's tree).
	Version() string
	// Describe says how the contender is set up: components, places, what
	// protects each hop.
	Describe() string
	// Start starts the contender's components and returns once traffic can
	// flow through it.
	Start(ctx context.Context, env *Env) (*Instance, error)
}

// Env is what contenders start in.
type Env struct {
	// Topo is the network.
	Topo *node.Topology
	// Dir is the run's scratch directory (logs, state); contenders make
	// sub-directories named after themselves.
	Dir string
	// TargetPort is the target server's port; it runs at node.Cluster.
	TargetPort int
	// Bins holds the peers' binaries, by name (see Build).
	Bins map[string]string
	// Link, when set, carries every agent's connection to its relay, and
	// the direct baseline's connection to the target, to add a round-trip
	// time where netem cannot (see node.Link). It runs at node.Relay.
	Link *node.Link
}

// RelayFromCluster returns the address at which an agent reaches its
// relay's port: through Link when there is one.
func (e *Env) RelayFromCluster(port int) (string, error) {
	if e.Link == nil {
		return hostPort(e.Topo.Reach(node.Cluster, node.Relay), port), nil
	}
	lp, err := e.Link.Forward(hostPort("127.0.0.1", port))
	if err != nil {
		return "", err
	}
	return hostPort(e.Topo.Reach(node.Cluster, node.Relay), lp), nil
}

// TargetFromCaller returns the address at which the direct baseline
// reaches the target: through Link when there is one.
func (e *Env) TargetFromCaller() (string, error) {
	if e.Link == nil {
		return e.TargetAddr(node.Caller), nil
	}
	lp, err := e.Link.Forward(hostPort(e.Topo.Reach(node.Relay, node.Cluster), e.TargetPort))
	if err != nil {
		return "", err
	}
	return hostPort(e.Topo.Reach(node.Caller, node.Relay), lp), nil
}

// TargetAddr returns the target's host:port as a component at from reaches
// it.
func (e *Env) TargetAddr(from node.Place) string {
	return net.JoinHostPort(e.Topo.Reach(from, node.Cluster), strconv.Itoa(e.TargetPort))
}

// Instance is a running contender.
type Instance struct {
	// Dial connects from the caller's place to the target's HTTP server
	// through the contender.
	Dial load.Dial
	// Dials, when the contender runs several caller-side processes (see
	// Tether.Proxies), holds one Dial per process; Dials[0] is Dial. Nil
	// means Dial is the only one.
	Dials []load.Dial
	// Procs are the contender's components, named by role ("relay",
	// "agent", "proxy"), for CPU and memory accounting.
	Procs []*node.Proc
	// Relay is the component that plays the relay, or nil (direct).
	Relay *node.Proc
	// close releases what Start set up besides Procs.
	close []func() error
}

// Entries returns the dials of every caller-side entry point: Dials, or
// Dial alone.
func (i *Instance) Entries() []load.Dial {
	if len(i.Dials) > 0 {
		return i.Dials
	}
	return []load.Dial{i.Dial}
}

// WatchScaler is a contender with a set-up of its own for more idle watches
// than its default one holds (W5's larger levels).
type WatchScaler interface {
	// ForWatches returns the contender set up to hold n idle watches,
	// with at most perCaller of them through each caller-side process,
	// or false when it has no such set-up.
	ForWatches(n, perCaller int) (Contender, bool)
}

// Close stops the instance's processes, the last started first.
func (i *Instance) Close() error {
	var errs []error
	for j := len(i.Procs) - 1; j >= 0; j-- {
		if err := i.Procs[j].Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, f := range i.close {
		if err := f(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// start starts a process for inst, adding it to inst.Procs.
func (i *Instance) start(ctx context.Context, env *Env, dir string, spec node.Spec) (*node.Proc, error) {
	p, err := node.Start(ctx, env.Topo, dir, spec)
	if err != nil {
		return nil, err
	}
	i.Procs = append(i.Procs, p)
	return p, nil
}

// Direct is the baseline: the caller connects straight to the target.
type Direct struct{}

// Name implements Contender.
func (Direct) Name() string { return "direct" }

// Version implements Contender.
func (Direct) Version() string { return "-" }

// Describe implements Contender.
func (Direct) Describe() string {
	return "TCP from the caller to the target, plain HTTP/1.1: no tunnel, no TLS"
}

// Start implements Contender.
func (Direct) Start(_ context.Context, env *Env) (*Instance, error) {
	addr, err := env.TargetFromCaller()
	if err != nil {
		return nil, err
	}
	return &Instance{Dial: func(ctx context.Context) (net.Conn, error) {
		c, err := env.Topo.Dial(ctx, node.Caller, addr)
		if err != nil {
			return nil, fmt.Errorf("direct: dial %s: %w", addr, err)
		}
		return c, nil
	}}, nil
}

// ForWatches implements WatchScaler: the direct baseline holds any number
// of watches as it is.
func (Direct) ForWatches(int, int) (Contender, bool) { return Direct{}, true }

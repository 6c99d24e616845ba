package node

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"time"

	"github.com/tether-k8s/tether/fixtures/netns"
)

// Place is where a component runs.
type Place int

// The places of the benchmark's network.
const (
	// Caller is the caller's machine: the load generator, and the peers'
	// client-side components (tether-proxy, frp's visitor).
	Caller Place = iota
	// Relay is the public relay's machine: every contender's relay.
	Relay
	// Cluster is the firewalled network: agents and the target server.
	Cluster
)

// String names the place.
func (p Place) String() string {
	switch p {
	case Caller:
		return "caller"
	case Relay:
		return "relay"
	case Cluster:
		return "cluster"
	}
	return fmt.Sprintf("place(%d)", int(p))
}

// Topology is the benchmark's network: three network namespaces, or the
// loopback interface when namespaces cannot be made.
type Topology struct {
	net   *netns.Network
	hosts map[Place]*netns.Host
	rtt   time.Duration
	netem bool
}

// NewTopology builds the namespaced network when namespaces is true (which
// needs root, ip and nft; see netns.Check) and otherwise returns the loopback
// topology.
func NewTopology(ctx context.Context, namespaces bool) (*Topology, error) {
	if !namespaces {
		return &Topology{}, nil
	}
	n, err := netns.New(ctx, netns.Config{
		Prefix: fmt.Sprintf("tbench-%06x-", time.Now().UnixNano()&0xffffff),
		Router: "relay",
		// The cluster is not firewalled: the direct baseline dials into it.
		// Every contender's agent dials out anyway.
		Hosts: []netns.HostConfig{{Name: "caller"}, {Name: "cluster"}},
	})
	if err != nil {
		return nil, fmt.Errorf("node: build the network: %w", err)
	}
	t := &Topology{net: n, hosts: map[Place]*netns.Host{Caller: n.Host("caller"), Relay: n.Router(), Cluster: n.Host("cluster")}}
	// Some kernels are built without sch_netem: then links stand in.
	probe := exec.CommandContext(ctx, "tc", "-n", t.hosts[Cluster].Namespace, "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "0ms")
	if probe.Run() == nil {
		t.netem = true
		_ = exec.CommandContext(ctx, "tc", "-n", t.hosts[Cluster].Namespace, "qdisc", "del", "dev", "eth0", "root").Run()
	}
	return t, nil
}

// Netem reports whether SetRTT can add a round-trip time with netem. When
// it cannot, a Link (a delaying forwarder) stands in.
func (t *Topology) Netem() bool { return t.netem }

// Namespaced reports whether the topology is made of network namespaces
// (and so can have a round-trip time).
func (t *Topology) Namespaced() bool { return t.net != nil }

// Describe says what the network is, for the report.
func (t *Topology) Describe() string {
	rtt := "round-trip time added by a link process (a TCP forwarder that delays each chunk; this kernel has no netem) " +
		"between each agent and its relay, and between the caller and the target for the direct baseline"
	if t.netem {
		rtt = "round-trip time added with netem on the relay–cluster link"
	}
	if t.net == nil {
		return "every component on 127.0.0.1 (no network namespaces: not root); " + rtt
	}
	return "three network namespaces (caller, relay, cluster) joined by veth pairs in 198.18.0.0/15; " + rtt
}

// Bind returns the address a component at p listens on: every interface of
// its namespace, or 127.0.0.1.
func (t *Topology) Bind(Place) string {
	if t.net == nil {
		return "127.0.0.1"
	}
	return "0.0.0.0"
}

// Reach returns the IP address at which a component at from reaches one at
// to.
func (t *Topology) Reach(from, to Place) string {
	if t.net == nil || from == to {
		return "127.0.0.1"
	}
	if to == Relay {
		return t.net.RouterAddr(t.hosts[from]).String()
	}
	return t.hosts[to].Addr.String()
}

// RelayNames returns every address of the relay's machine, for its
// certificates.
func (t *Topology) RelayNames() []string {
	if t.net == nil {
		return []string{"127.0.0.1"}
	}
	return []string{"127.0.0.1", t.Reach(Caller, Relay), t.Reach(Cluster, Relay)}
}

// Dial connects from a component at from to addr.
func (t *Topology) Dial(ctx context.Context, from Place, addr string) (net.Conn, error) {
	if t.net == nil {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
	return t.hosts[from].DialContext(ctx, "tcp", addr)
}

// Command returns a command that runs at p.
func (t *Topology) Command(p Place, path string, args ...string) *exec.Cmd {
	if t.net == nil {
		return exec.Command(path, args...)
	}
	return exec.Command("ip", append([]string{"netns", "exec", t.hosts[p].Namespace, path}, args...)...)
}

// SetRTT gives the relay–cluster link a round-trip time (half of it on each
// direction), with netem; zero removes it.
func (t *Topology) SetRTT(ctx context.Context, rtt time.Duration) error {
	if !t.netem {
		if rtt == 0 {
			return nil
		}
		return fmt.Errorf("node: SetRTT needs netem in network namespaces (use a Link)")
	}
	if rtt == t.rtt {
		return nil
	}
	links := [][2]string{{t.hosts[Cluster].Namespace, "eth0"}, {t.hosts[Relay].Namespace, "to-cluster"}}
	for _, l := range links {
		args := []string{"-n", l[0], "qdisc", "replace", "dev", l[1], "root", "netem",
			"delay", fmt.Sprintf("%dus", (rtt / 2).Microseconds()), "limit", "1000000"}
		if rtt == 0 {
			args = []string{"-n", l[0], "qdisc", "del", "dev", l[1], "root"}
		}
		cmd := exec.CommandContext(ctx, "tc", args...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("node: tc %v: %w: %s", args, err, out.String())
		}
	}
	t.rtt = rtt
	return nil
}

// RTT returns the round-trip time SetRTT last set.
func (t *Topology) RTT() time.Duration { return t.rtt }

// Close removes the network namespaces (killing what still runs in them).
func (t *Topology) Close() error {
	if t.net == nil {
		return nil
	}
	if err := t.net.Close(); err != nil {
		return fmt.Errorf("node: remove the network: %w", err)
	}
	return nil
}

// FreePort returns a port that is free at p now, for a peer's command that
// must be told its port (there is a small window in which another process
// could take it).
func (t *Topology) FreePort(p Place) (int, error) {
	var l net.Listener
	var err error
	if t.net == nil {
		l, err = net.Listen("tcp", "127.0.0.1:0")
	} else {
		l, err = t.hosts[p].Listen("tcp", "0.0.0.0:0")
	}
	if err != nil {
		return 0, fmt.Errorf("node: find a free port at %s: %w", p, err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	return port, nil
}

// WaitListening waits until a component at from can connect to addr.
func (t *Topology) WaitListening(ctx context.Context, from Place, addr string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		c, err := t.Dial(dctx, from, addr)
		cancel()
		if err == nil {
			_ = c.Close()
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("node: nothing listens on %s (from %s) after %s: %w", addr, from, limit, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

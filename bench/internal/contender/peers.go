package contender

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/tether-k8s/tether/bench/internal/node"
)

// Peers returns the peers, in the order of the issue's priority.
func Peers() []Contender {
	return []Contender{Remotedialer{}, Chisel{}, FRP{}, Konnectivity{}}
}

// listenWait bounds how long a peer's component may take to listen.
const listenWait = 30 * time.Second

// peerDir makes the contender's directory in the run's.
func peerDir(env *Env, name string) (string, error) {
	dir := filepath.Join(env.Dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	return dir, nil
}

// hostPort joins an IP and a port.
func hostPort(ip string, port int) string { return net.JoinHostPort(ip, strconv.Itoa(port)) }

// dialTo returns a Dial that connects from the caller's place to addr.
func dialTo(env *Env, name, addr string) func(ctx context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		c, err := env.Topo.Dial(ctx, node.Caller, addr)
		if err != nil {
			return nil, fmt.Errorf("%s: dial %s: %w", name, addr, err)
		}
		return c, nil
	}
}

// Remotedialer is rancher/remotedialer as Rancher uses it: the agent in the
// cluster holds a WebSocket (TLS) to the server, which dials into the
// cluster through it. A harness-written main (bench/peers/remotedialer)
// wraps the library: the server splices each TCP connection on a port of
// its own to a connection dialed through the agent.
type Remotedialer struct{}

// Name implements Contender.
func (Remotedialer) Name() string { return "remotedialer" }

// Version implements Contender.
func (Remotedialer) Version() string {
	return "v0.6.2 (built with go1.27.3, which its go.mod requires)"
}

// Describe implements Contender.
func (Remotedialer) Describe() string {
	return "server (relay) with a TCP port spliced to server.Dialer; agent (cluster) holds a WebSocket over TLS to it; " +
		"the caller's hop to the server is plain TCP"
}

func (Remotedialer) build() build {
	return build{Module: "remotedialer", Packages: []string{"github.com/tether-k8s/tether/bench/peers/remotedialer"}, Toolchain: "auto"}
}

// Start implements Contender.
func (r Remotedialer) Start(ctx context.Context, env *Env) (_ *Instance, err error) {
	dir, err := peerDir(env, r.Name())
	if err != nil {
		return nil, err
	}
	inst := &Instance{}
	defer func() {
		if err != nil {
			_ = inst.Close()
		}
	}()
	topo, bin := env.Topo, env.Bins["remotedialer"]
	srv, err := inst.start(ctx, env, dir, node.Spec{Name: "relay", Place: node.Relay, Path: bin, Protocol: true, Argv: []string{"server",
		"-listen", topo.Bind(node.Relay), "-target", env.TargetAddr(node.Cluster), "-cert-dir", dir, "-names", strings.Join(topo.RelayNames(), ",")}})
	if err != nil {
		return nil, err
	}
	inst.Relay = srv
	var ports struct{ Port, ForwardPort int }
	if err := json.Unmarshal(srv.Ready, &ports); err != nil {
		return nil, fmt.Errorf("remotedialer: server's ready line: %w", err)
	}
	wsAddr, err := env.RelayFromCluster(ports.Port)
	if err != nil {
		return nil, err
	}
	if _, err := inst.start(ctx, env, dir, node.Spec{Name: "agent", Place: node.Cluster, Path: bin, Protocol: true, Argv: []string{"agent",
		"-url", "wss://" + wsAddr + "/connect",
		"-ca", filepath.Join(dir, "ca.pem"), "-target", env.TargetAddr(node.Cluster)}}); err != nil {
		return nil, err
	}
	inst.Dial = dialTo(env, r.Name(), hostPort(topo.Reach(node.Caller, node.Relay), ports.ForwardPort))
	return inst, nil
}

// Chisel is jpillora/chisel with a reverse port forward: the client in the
// cluster asks the server (the relay) to listen on a port and forward it to
// the target through the client's SSH-over-WebSocket session.
type Chisel struct{}

// Name implements Contender.
func (Chisel) Name() string { return "chisel" }

// Version implements Contender.
func (Chisel) Version() string { return "v1.10.1" }

// Describe implements Contender.
func (Chisel) Describe() string {
	return "`chisel server --reverse` (relay); `chisel client R:port:target` (cluster); the caller connects to that port on the relay. " +
		"SSH (encrypted, password auth) over WebSocket, no TLS (chisel's default); the caller's hop is plain TCP"
}

func (Chisel) build() build {
	return build{Module: "chisel", Packages: []string{"github.com/jpillora/chisel"}}
}

// Start implements Contender.
func (c Chisel) Start(ctx context.Context, env *Env) (_ *Instance, err error) {
	dir, err := peerDir(env, c.Name())
	if err != nil {
		return nil, err
	}
	inst := &Instance{}
	defer func() {
		if err != nil {
			_ = inst.Close()
		}
	}()
	topo, bin := env.Topo, env.Bins["chisel"]
	port, err := topo.FreePort(node.Relay)
	if err != nil {
		return nil, err
	}
	rport, err := topo.FreePort(node.Relay)
	if err != nil {
		return nil, err
	}
	const auth = "bench:bench-chisel-secret"
	srv, err := inst.start(ctx, env, dir, node.Spec{Name: "relay", Place: node.Relay, Path: bin,
		Argv: []string{"server", "--host", topo.Bind(node.Relay), "--port", strconv.Itoa(port), "--reverse", "--auth", auth}})
	if err != nil {
		return nil, err
	}
	inst.Relay = srv
	if err := topo.WaitListening(ctx, node.Cluster, hostPort(topo.Reach(node.Cluster, node.Relay), port), listenWait); err != nil {
		return nil, fmt.Errorf("chisel: server: %w", err)
	}
	srvAddr, err := env.RelayFromCluster(port)
	if err != nil {
		return nil, err
	}
	if _, err := inst.start(ctx, env, dir, node.Spec{Name: "agent", Place: node.Cluster, Path: bin,
		Argv: []string{"client", "--auth", auth, "http://" + srvAddr,
			"R:" + hostPort(topo.Bind(node.Relay), rport) + ":" + env.TargetAddr(node.Cluster)}}); err != nil {
		return nil, err
	}
	addr := hostPort(topo.Reach(node.Caller, node.Relay), rport)
	if err := topo.WaitListening(ctx, node.Caller, addr, listenWait); err != nil {
		return nil, fmt.Errorf("chisel: reverse port: %w", err)
	}
	inst.Dial = dialTo(env, c.Name(), addr)
	return inst, nil
}

// FRP is fatedier/frp with an stcp proxy: frpc in the cluster registers the
// target with frps (the relay) under a secret key; an frpc visitor at the
// caller's listens locally and reaches it through frps. frp's own yamux,
// with its tuned 6 MiB stream window, multiplexes each frpc's connection.
type FRP struct{}

// Name implements Contender.
func (FRP) Name() string { return "frp" }

// Version implements Contender.
func (FRP) Version() string { return "v0.61.0" }

// Describe implements Contender.
func (FRP) Describe() string {
	return "frps (relay); frpc with an stcp proxy (cluster); frpc stcp visitor on 127.0.0.1 (caller). " +
		"TLS (frp's default) and token auth on both frpc connections, tcpMux (yamux, 6 MiB stream window) on each"
}

func (FRP) build() build {
	return build{Module: "frp", Packages: []string{"github.com/fatedier/frp/cmd/frps", "github.com/fatedier/frp/cmd/frpc"}}
}

// Start implements Contender.
func (f FRP) Start(ctx context.Context, env *Env) (_ *Instance, err error) {
	dir, err := peerDir(env, f.Name())
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
	port, err := topo.FreePort(node.Relay)
	if err != nil {
		return nil, err
	}
	vport, err := topo.FreePort(node.Caller)
	if err != nil {
		return nil, err
	}
	srvAddr, err := env.RelayFromCluster(port)
	if err != nil {
		return nil, err
	}
	srvHost, srvPort, _ := net.SplitHostPort(srvAddr)
	const common = "auth.method = \"token\"\nauth.token = \"bench-frp-token\"\nlog.to = \"console\"\nlog.level = \"warn\"\n"
	targetHost, targetPort, _ := net.SplitHostPort(env.TargetAddr(node.Cluster))
	files := map[string][]byte{
		"frps.toml": fmt.Appendf(nil, "bindAddr = %q\nbindPort = %d\ntransport.tls.force = true\n%s", topo.Bind(node.Relay), port, common),
		"frpc.toml": fmt.Appendf(nil, "serverAddr = %q\nserverPort = %s\n%s\n[[proxies]]\nname = \"target\"\ntype = \"stcp\"\nsecretKey = \"bench-frp-secret\"\nlocalIP = %q\nlocalPort = %s\n",
			srvHost, srvPort, common, targetHost, targetPort),
		"visitor.toml": fmt.Appendf(nil, "serverAddr = %q\nserverPort = %d\n%s\n[[visitors]]\nname = \"target-visitor\"\ntype = \"stcp\"\nserverName = \"target\"\nsecretKey = \"bench-frp-secret\"\nbindAddr = \"127.0.0.1\"\nbindPort = %d\n",
			topo.Reach(node.Caller, node.Relay), port, common, vport),
	}
	if err := writeFiles(dir, files); err != nil {
		return nil, err
	}
	srv, err := inst.start(ctx, env, dir, node.Spec{Name: "relay", Place: node.Relay, Path: env.Bins["frps"], Argv: []string{"-c", filepath.Join(dir, "frps.toml")}})
	if err != nil {
		return nil, err
	}
	inst.Relay = srv
	if err := topo.WaitListening(ctx, node.Cluster, hostPort(topo.Reach(node.Cluster, node.Relay), port), listenWait); err != nil {
		return nil, fmt.Errorf("frp: frps: %w", err)
	}
	if _, err := inst.start(ctx, env, dir, node.Spec{Name: "agent", Place: node.Cluster, Path: env.Bins["frpc"], Argv: []string{"-c", filepath.Join(dir, "frpc.toml")}}); err != nil {
		return nil, err
	}
	if _, err := inst.start(ctx, env, dir, node.Spec{Name: "proxy", Place: node.Caller, Path: env.Bins["frpc"], Argv: []string{"-c", filepath.Join(dir, "visitor.toml")}}); err != nil {
		return nil, err
	}
	addr := hostPort("127.0.0.1", vport)
	if err := topo.WaitListening(ctx, node.Caller, addr, listenWait); err != nil {
		return nil, fmt.Errorf("frp: visitor: %w", err)
	}
	inst.Dial = dialTo(env, f.Name(), addr)
	return inst, nil
}

// Konnectivity is apiserver-network-proxy in HTTP-CONNECT mode: the
// proxy-agent in the cluster holds a gRPC session (mutual TLS) to the
// proxy-server (the relay); a caller opens a connection to the
// proxy-server's frontend (mutual TLS, as kube-apiserver does) and sends
// CONNECT target.
type Konnectivity struct{}

// Name implements Contender.
func (Konnectivity) Name() string { return "konnectivity" }

// Version implements Contender.
func (Konnectivity) Version() string { return "v0.34.0 (konnectivity-client v0.34.0)" }

// Describe implements Contender.
func (Konnectivity) Describe() string {
	return "proxy-server --mode=http-connect (relay); proxy-agent (cluster) over gRPC with mutual TLS; " +
		"the caller opens mutual TLS to the frontend and sends CONNECT, as kube-apiserver's egress selector does"
}

func (Konnectivity) build() build {
	return build{Module: "konnectivity", Prefix: "konnectivity-",
		Packages: []string{"sigs.k8s.io/apiserver-network-proxy/cmd/server", "sigs.k8s.io/apiserver-network-proxy/cmd/agent"}}
}

// Start implements Contender.
func (k Konnectivity) Start(ctx context.Context, env *Env) (_ *Instance, err error) {
	dir, err := peerDir(env, k.Name())
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
	ca, err := newAuthority()
	if err != nil {
		return nil, err
	}
	srvCert, srvKey, err := ca.issue("proxy-server", topo.RelayNames(), false)
	if err != nil {
		return nil, err
	}
	agentCert, agentKey, err := ca.issue("proxy-agent", nil, true)
	if err != nil {
		return nil, err
	}
	callerCert, callerKey, err := ca.issue("caller", nil, true)
	if err != nil {
		return nil, err
	}
	if err := writeFiles(dir, map[string][]byte{"ca.pem": ca.pem, "server.pem": srvCert, "server-key.pem": srvKey,
		"agent.pem": agentCert, "agent-key.pem": agentKey}); err != nil {
		return nil, err
	}
	f := func(n string) string { return filepath.Join(dir, n) }
	ports := map[string]int{}
	for _, p := range []struct {
		name  string
		place node.Place
	}{{"server", node.Relay}, {"agent", node.Relay}, {"admin", node.Relay}, {"health", node.Relay}, {"agentAdmin", node.Cluster}, {"agentHealth", node.Cluster}} {
		if ports[p.name], err = topo.FreePort(p.place); err != nil {
			return nil, err
		}
	}
	srv, err := inst.start(ctx, env, dir, node.Spec{Name: "relay", Place: node.Relay, Path: env.Bins["konnectivity-server"], Argv: []string{
		"--mode=http-connect", "--uds-name=", "--server-count=1",
		"--server-bind-address=" + topo.Bind(node.Relay), "--server-port=" + strconv.Itoa(ports["server"]),
		"--server-cert=" + f("server.pem"), "--server-key=" + f("server-key.pem"), "--server-ca-cert=" + f("ca.pem"),
		"--agent-bind-address=" + topo.Bind(node.Relay), "--agent-port=" + strconv.Itoa(ports["agent"]),
		"--cluster-cert=" + f("server.pem"), "--cluster-key=" + f("server-key.pem"), "--cluster-ca-cert=" + f("ca.pem"),
		"--admin-bind-address=127.0.0.1", "--admin-port=" + strconv.Itoa(ports["admin"]),
		"--health-bind-address=127.0.0.1", "--health-port=" + strconv.Itoa(ports["health"]),
		"--v=0",
	}})
	if err != nil {
		return nil, err
	}
	inst.Relay = srv
	if err := topo.WaitListening(ctx, node.Cluster, hostPort(topo.Reach(node.Cluster, node.Relay), ports["agent"]), listenWait); err != nil {
		return nil, fmt.Errorf("konnectivity: proxy-server: %w", err)
	}
	agentAddr, err := env.RelayFromCluster(ports["agent"])
	if err != nil {
		return nil, err
	}
	agentHost, agentPort, _ := net.SplitHostPort(agentAddr)
	if _, err := inst.start(ctx, env, dir, node.Spec{Name: "agent", Place: node.Cluster, Path: env.Bins["konnectivity-agent"], Argv: []string{
		"--proxy-server-host=" + agentHost, "--proxy-server-port=" + agentPort,
		"--ca-cert=" + f("ca.pem"), "--agent-cert=" + f("agent.pem"), "--agent-key=" + f("agent-key.pem"), "--agent-id=bench-agent",
		"--admin-server-port=" + strconv.Itoa(ports["agentAdmin"]), "--health-server-port=" + strconv.Itoa(ports["agentHealth"]),
		"--v=0",
	}}); err != nil {
		return nil, err
	}
	frontIP := topo.Reach(node.Caller, node.Relay)
	front := hostPort(frontIP, ports["server"])
	if err := topo.WaitListening(ctx, node.Caller, front, listenWait); err != nil {
		return nil, fmt.Errorf("konnectivity: frontend: %w", err)
	}
	tlsCfg, err := ca.clientTLS(callerCert, callerKey, frontIP)
	if err != nil {
		return nil, err
	}
	targetAddr := env.TargetAddr(node.Cluster)
	inst.Dial = func(ctx context.Context) (net.Conn, error) {
		raw, err := topo.Dial(ctx, node.Caller, front)
		if err != nil {
			return nil, fmt.Errorf("konnectivity: dial the frontend: %w", err)
		}
		c, err := httpConnect(ctx, tls.Client(raw, tlsCfg), targetAddr)
		if err != nil {
			_ = raw.Close()
			return nil, fmt.Errorf("konnectivity: %w", err)
		}
		return c, nil
	}
	return inst, nil
}

// httpConnect completes TLS on c, sends CONNECT addr and returns the
// connection positioned after the proxy's 200.
func httpConnect(ctx context.Context, c *tls.Conn, addr string) (net.Conn, error) {
	if err := c.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("TLS to the frontend: %w", err)
	}
	if d, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(d)
	}
	if _, err := fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", addr, addr); err != nil {
		return nil, fmt.Errorf("CONNECT: %w", err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		return nil, fmt.Errorf("CONNECT: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("CONNECT %s: %s", addr, resp.Status)
	}
	_ = c.SetDeadline(time.Time{})
	if br.Buffered() > 0 {
		return &bufferedConn{Conn: c, r: br}, nil
	}
	return c, nil
}

// bufferedConn reads what a bufio.Reader already holds before the conn.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

// Read reads the buffered bytes first.
func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

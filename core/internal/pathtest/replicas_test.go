package pathtest_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/tether-k8s/tether/core/agent"
	"github.com/tether-k8s/tether/core/clustercert"
	"github.com/tether-k8s/tether/core/impersonate"
	"github.com/tether-k8s/tether/core/policy"
	"github.com/tether-k8s/tether/core/proxy"
	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/relay"
	"github.com/tether-k8s/tether/core/relay/mesh"
	"github.com/tether-k8s/tether/core/tunnel"
	etcdfix "github.com/tether-k8s/tether/fixtures/etcd"
)

// replicas is several relays on one real etcd (three members), each with
// its peer endpoint, as tether-relay serve --store etcd --peer-listen
// assembles them.
type replicas struct {
	etcd   *etcdfix.Cluster
	rcfg   registry.Config
	relays []*relay.Relay
	token  string // prod's join token
	ca     *x509.CertPool
}

func startReplicas(t *testing.T, n int) *replicas {
	t.Helper()
	if _, err := etcdfix.Binary(""); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%v: the replicas' tests need it", err)
		}
		t.Skipf("%v: skipping the replicas' tests", err)
	}
	e, err := etcdfix.Start(etcdfix.Config{Members: 3, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Stop)
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	kek, err := registry.NewKeyEncryptionKey(b)
	if err != nil {
		t.Fatal(err)
	}
	rs := &replicas{etcd: e, rcfg: registry.Config{Store: registry.StoreEtcd, Etcd: registry.EtcdConfig{
		Endpoints: e.Endpoints(), Prefix: "/test/" + hex.EncodeToString(b[:6]) + "/", KeyEncryptionKeys: []registry.KeyEncryptionKey{kek}}}}
	reg, err := registry.Open(rs.rcfg)
	if err != nil {
		t.Fatal(err)
	}
	if rs.token, err = reg.CreateCluster("prod"); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.UpdatePolicy("prod", func(p policy.Policy) (policy.Policy, error) {
		return p.Add(policy.Policy{Groups: []string{"dev"}}), nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := reg.Close(); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		rs.start(t, i)
	}
	rs.ca = x509.NewCertPool()
	rs.ca.AddCert(rs.relays[0].Registry().CACertificate())
	// Every replica sees every other before the test goes on.
	for i, r := range rs.relays {
		waitFor(t, 10*time.Second, "replica "+string(rune('0'+i))+" sees every replica", func() bool { return len(r.Mesh().Replicas()) == n })
	}
	return rs
}

// start starts replica i (again, after stop).
func (rs *replicas) start(t *testing.T, i int) {
	t.Helper()
	r, err := relay.Start(context.Background(), relay.Options{Registry: rs.rcfg, Authenticator: callers, Hostnames: []string{"127.0.0.1"},
		APIAddr: "127.0.0.1:0", AgentAddr: "127.0.0.1:0", RelayID: "relay-" + string(rune('0'+i)),
		Peer: &relay.PeerOptions{Addr: "127.0.0.1:0", Advertise: "127.0.0.1:0"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	for len(rs.relays) <= i {
		rs.relays = append(rs.relays, nil)
	}
	rs.relays[i] = r
}

func waitFor(t *testing.T, within time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func apiURL(r *relay.Relay) string { return "https://" + r.APIAddr().String() }

// agentOn starts prod's agent with its sessions on replica i only (its
// relay addresses name that replica, as a load balancer would send it).
func (rs *replicas) agentOn(t *testing.T, i int, dir string) (*agent.Agent, context.CancelFunc) {
	t.Helper()
	return rs.agentVia(t, i, rs.relays[i].AgentAddr().String(), dir)
}

// agentVia starts prod's agent, joining at replica i and dialling its
// sessions at agentAddr.
func (rs *replicas) agentVia(t *testing.T, i int, agentAddr, dir string) (*agent.Agent, context.CancelFunc) {
	t.Helper()
	api := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "" {
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer conn.Close()
			_, _ = io.WriteString(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n")
			_ = brw.Flush()
			_, _ = io.Copy(conn, brw)
			return
		}
		_, _ = io.WriteString(w, `{"user":"`+r.Header.Get("Impersonate-User")+`"}`)
	}))
	t.Cleanup(api.Close)
	upstream, _ := url.Parse(api.URL)
	r := rs.relays[i]
	ctx, cancel := context.WithCancel(context.Background())
	a, err := agent.New(ctx, agent.Config{Cluster: "prod", Name: "agent-0", RelayAPI: apiURL(r), RelayAgentAddr: agentAddr,
		RelayCA: rs.ca, CredentialDir: dir, JoinToken: rs.token,
		Proxy: func(*http.Request) (*url.URL, error) { return nil, nil },
		Forward: impersonate.Config{Upstream: upstream, Transport: api.Client().Transport, Authenticator: callers,
			Credential: func(context.Context) (string, error) { return "agent-sa-token", nil }}})
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- a.Run(ctx) }()
	stop := func() { cancel(); <-ran }
	t.Cleanup(func() { cancel() })
	waitFor(t, 10*time.Second, "the agent connected", a.Ready)
	return a, stop
}

// proxyTo returns an HTTP client for kubectl's requests through a
// tether-proxy whose relay is replica i.
func (rs *replicas) proxyTo(t *testing.T, i int) (*http.Client, string) {
	t.Helper()
	c, base, _ := rs.proxyAt(t, i)
	return c, base
}

func (rs *replicas) proxyAt(t *testing.T, i int) (*http.Client, string, *tls.Config) {
	t.Helper()
	p, err := proxy.New(t.Context(), proxy.Config{RelayURL: apiURL(rs.relays[i]), RelayCA: rs.ca, Cluster: "prod",
		Token: func() (string, error) { return callerToken, nil }, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Serve(t.Context()) }()
	t.Cleanup(func() { <-done })
	kc, err := clientcmd.NewDefaultClientConfig(*p.Kubeconfig("tether-prod"), nil).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	tr, err := rest.TransportFor(kc)
	if err != nil {
		t.Fatal(err)
	}
	tc, err := rest.TLSConfigFor(kc)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}, "https://" + p.Addr(), tc
}

func getStatus(t *testing.T, c *http.Client, u string) (int, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestCallerOnOneReplicaReachesTheAgentOnAnother: the agent's sessions are
// on replica 0, the caller's tunnel lands on replica 1, which
// authenticates the caller and forwards the stream to replica 0; the
// agent authenticates and impersonates as ever.
func TestCallerOnOneReplicaReachesTheAgentOnAnother(t *testing.T) {
	rs := startReplicas(t, 2)
	rs.agentOn(t, 0, t.TempDir())
	began := time.Now()
	waitFor(t, 10*time.Second, "replica 1 sees replica 0's route", func() bool { return rs.relays[1].Router().AllSessions("prod") > 0 })
	t.Logf("route on replica 1 %s after the agent was ready", time.Since(began).Round(time.Millisecond))
	if n := rs.relays[1].Router().Sessions("prod"); n != 0 {
		t.Fatalf("replica 1 holds %d sessions of prod itself: the test would not cross replicas", n)
	}
	c, base := rs.proxyTo(t, 1)
	for range 3 {
		code, body := getStatus(t, c, base+"/api/v1/pods")
		if code != 200 || !strings.Contains(body, `"user":"alice"`) {
			t.Fatalf("through replica 1 to the agent on replica 0: %d %s", code, body)
		}
	}
}

// TestAStaleRouteIsRefusedClearlyAndHealsWhenTheAgentMoves: when the
// replica holding the agent's sessions dies, a caller on another replica
// gets a 503 Status saying the cluster is not connected (never a hang),
// and once the agent reconnects to a live replica it is served again.
func TestAStaleRouteIsRefusedClearlyAndHealsWhenTheAgentMoves(t *testing.T) {
	rs := startReplicas(t, 2)
	dir := t.TempDir()
	_, stop := rs.agentOn(t, 0, dir)
	waitFor(t, 10*time.Second, "replica 1 sees replica 0's route", func() bool { return rs.relays[1].Router().AllSessions("prod") > 0 })
	c, base := rs.proxyTo(t, 1)
	if code, body := getStatus(t, c, base+"/api/v1/pods"); code != 200 {
		t.Fatalf("before: %d %s", code, body)
	}
	stop()
	_ = rs.relays[0].Close()
	began := time.Now()
	code, body := getStatus(t, c, base+"/api/v1/pods")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "not connected") {
		t.Fatalf("with the owner gone: %d %s, want 503 not connected", code, body)
	}
	if d := time.Since(began); d > mesh.DefaultRetryWait+5*time.Second {
		t.Fatalf("the refusal took %s", d)
	}
	t.Logf("refused in %s: %s", time.Since(began).Round(time.Millisecond), strings.TrimSpace(body))
	// The agent comes back on replica 1 with the credential it holds.
	rs.agentOn(t, 1, dir)
	if code, body := getStatus(t, c, base+"/api/v1/pods"); code != 200 {
		t.Fatalf("after the agent moved: %d %s", code, body)
	}
}

// TestPeerEndpointAdmitsOnlyReplicas: the replica-to-replica endpoint
// accepts only a peer certificate from the relay's CA. An agent's
// credential (the same CA, a cluster's URI), a certificate from another CA
// naming a replica, and no certificate are refused at the TLS handshake;
// a replica's peer certificate is no agent credential either.
func TestPeerEndpointAdmitsOnlyReplicas(t *testing.T) {
	rs := startReplicas(t, 2)
	dir := t.TempDir()
	rs.agentOn(t, 0, dir)
	peerAddr := ""
	for _, r := range rs.relays[0].Mesh().Replicas() {
		if r.ID == "relay-0" {
			peerAddr = r.PeerAddr
		}
	}
	if peerAddr == "" {
		t.Fatal("relay-0 is not in its own table")
	}
	agentCred, err := tls.LoadX509KeyPair(filepath.Join(dir, agent.CertFile), filepath.Join(dir, agent.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	// Another relay's CA, with a certificate naming relay-1.
	other, err := registry.Open(registry.Config{Path: filepath.Join(t.TempDir(), "other.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	foreign, err := other.PeerCertificate("relay-1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	genuine, err := rs.relays[1].Registry().PeerCertificate("relay-1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dial := func(cert *tls.Certificate) error {
		cfg := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{mesh.PeerALPN}, RootCAs: rs.ca, ServerName: "relay-0",
			InsecureSkipVerify: true}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", peerAddr, cfg)
		if err != nil {
			return err
		}
		defer conn.Close()
		// TLS 1.3: the server's verdict on the client's certificate
		// arrives with the first read.
		_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		if err != nil && !strings.Contains(err.Error(), "timeout") {
			return err
		}
		return nil
	}
	for name, cert := range map[string]*tls.Certificate{"an agent's credential": &agentCred, "another CA's peer certificate": &foreign, "no certificate": nil} {
		if err := dial(cert); err == nil {
			t.Errorf("%s: admitted to the peer endpoint", name)
		}
	}
	if err := dial(&genuine); err != nil {
		t.Fatalf("a replica's peer certificate: %v", err)
	}
	// A peer certificate at the agent endpoint: not a cluster credential,
	// so no session, where the agent's own credential gets one.
	hello := func(cert tls.Certificate) error {
		conn, err := tls.Dial("tcp", rs.relays[1].AgentAddr().String(), &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: rs.ca,
			ServerName: "127.0.0.1", Certificates: []tls.Certificate{cert}, NextProtos: []string{tunnel.SessionALPN}})
		if err != nil {
			return err
		}
		s, err := tunnel.ConnectAgent(t.Context(), conn, tunnel.AgentConfig{Hello: tunnel.Hello{Cluster: "prod", Agent: "intruder", Slot: 1}})
		if err != nil {
			_ = conn.Close()
			return err
		}
		return s.Close()
	}
	if err := hello(agentCred); err != nil {
		t.Fatalf("the agent's own credential at the agent endpoint: %v", err)
	}
	var ref *tunnel.RefusedError
	if err := hello(genuine); !errors.As(err, &ref) {
		t.Fatalf("a replica's peer certificate at the agent endpoint: %v, want a refusal", err)
	}
	if _, err := clustercert.ClusterID(leaf(t, genuine)); err == nil {
		t.Fatal("a peer certificate names a cluster")
	}
}

func leaf(t *testing.T, c tls.Certificate) *x509.Certificate {
	t.Helper()
	l, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// balancer is a TCP load balancer in front of the replicas' agent
// endpoints for unit tests (the e2e suite runs HAProxy): it sends the
// first connections to the first backend, then takes them in turn, as a
// balancer with some affinity would.
func balancer(t *testing.T, backends ...string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { _ = l.Close(); <-done })
	go func() {
		defer close(done)
		var conns sync.WaitGroup
		defer conns.Wait()
		for n := 0; ; n++ {
			c, err := l.Accept()
			if err != nil {
				return
			}
			b := backends[0]
			if n >= 2 {
				b = backends[n%len(backends)]
			}
			conns.Add(1)
			go func() {
				defer conns.Done()
				defer c.Close()
				u, err := net.Dial("tcp", b)
				if err != nil {
					return
				}
				defer u.Close()
				go func() { _, _ = io.Copy(u, c); _ = u.Close() }()
				_, _ = io.Copy(c, u)
			}()
		}
	}()
	return l.Addr().String()
}

// TestAnAgentsSessionsGoToDifferentReplicas: behind a balancer that sends
// the agent's first dials to one replica, its two sessions still end on
// two replicas (the second is told Elsewhere and dials again), so one
// replica's restart leaves the agent connected.
func TestAnAgentsSessionsGoToDifferentReplicas(t *testing.T) {
	rs := startReplicas(t, 2)
	lb := balancer(t, rs.relays[0].AgentAddr().String(), rs.relays[1].AgentAddr().String())
	rs.agentVia(t, 0, lb, t.TempDir())
	waitFor(t, 10*time.Second, "one session on each replica", func() bool {
		return rs.relays[0].Router().Sessions("prod") == 1 && rs.relays[1].Router().Sessions("prod") == 1
	})
}

// TestRevokeEndsAForwardedTunnel: a caller's upgraded stream (an exec)
// crosses from replica 1 to the agent on replica 0; revoking the caller's
// group ends it, on both replicas, within a second or so.
func TestRevokeEndsAForwardedTunnel(t *testing.T) {
	rs := startReplicas(t, 2)
	rs.agentOn(t, 0, t.TempDir())
	waitFor(t, 10*time.Second, "replica 1 sees replica 0's route", func() bool { return rs.relays[1].Router().AllSessions("prod") > 0 })
	_, base, tc := rs.proxyAt(t, 1)
	conn, br := openExec(t, strings.TrimPrefix(base, "https://"), tc, 20*time.Second)
	if _, err := io.WriteString(conn, "ping"); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(br, got); err != nil || string(got) != "ping" {
		t.Fatalf("echo through two replicas: %q %v", got, err)
	}
	if rs.relays[0].Router().Streams() == 0 || rs.relays[1].Router().Streams() == 0 {
		t.Fatalf("streams: owner %d, entry %d; want the tunnel on both", rs.relays[0].Router().Streams(), rs.relays[1].Router().Streams())
	}
	// Revoke through replica 1's registry, as tether-relay cluster revoke
	// on that replica does.
	began := time.Now()
	if _, err := rs.relays[1].Registry().UpdatePolicy("prod", func(p policy.Policy) (policy.Policy, error) {
		q, _ := p.Remove(policy.Policy{Groups: []string{"dev"}})
		return q, nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(br); err != nil && !strings.Contains(err.Error(), "reset") && !strings.Contains(err.Error(), "EOF") {
		t.Fatalf("the revoked tunnel did not end: %v", err)
	}
	took := time.Since(began)
	if took > 5*time.Second {
		t.Fatalf("the revoked tunnel ended after %s", took)
	}
	waitFor(t, 5*time.Second, "no stream left on either replica", func() bool {
		return rs.relays[0].Router().Streams() == 0 && rs.relays[1].Router().Streams() == 0
	})
	t.Logf("revocation ended the forwarded tunnel in %s", took.Round(time.Millisecond))
}

// TestALostLeaseRepublishesEveryRoute: when a replica's lease lapses (etcd
// cut off for longer than its TTL; here revoked), etcd deletes its routes,
// and the replica takes a new lease and publishes them again. (The ordering
// the simulator's replicas-partitions seed 10 found, the replica's own
// table losing the routes before the new lease, so that it republished
// none, depends on the goroutines' order and is that seed's to catch.)
func TestALostLeaseRepublishesEveryRoute(t *testing.T) {
	rs := startReplicas(t, 2)
	rs.agentOn(t, 0, t.TempDir())
	waitFor(t, 10*time.Second, "replica 1 sees replica 0's route", func() bool { return rs.relays[1].Router().AllSessions("prod") > 0 })
	cli, err := rs.etcd.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx := t.Context()
	resp, err := cli.Get(ctx, rs.rcfg.Etcd.Prefix+"mesh/replicas/relay-0")
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease == 0 {
		t.Fatalf("replica 0's key and lease: %v, %v", resp, err)
	}
	if _, err := cli.Revoke(ctx, clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "replica 1 sees replica 0's route vanish", func() bool { return rs.relays[1].Router().AllSessions("prod") == 0 })
	began := time.Now()
	waitFor(t, 15*time.Second, "replica 0 publishes its route again under a new lease", func() bool { return rs.relays[1].Router().AllSessions("prod") > 0 })
	t.Logf("route back on replica 1 %s after it vanished", time.Since(began).Round(time.Millisecond))
	c, base := rs.proxyTo(t, 1)
	if code, body := getStatus(t, c, base+"/api/v1/pods"); code != 200 {
		t.Fatalf("through replica 1 after replica 0's new lease: %d %s", code, body)
	}
}

package sim

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/tether-k8s/tether/core/agent"
	"github.com/tether-k8s/tether/core/authn"
	"github.com/tether-k8s/tether/core/impersonate"
	"github.com/tether-k8s/tether/core/policy"
	"github.com/tether-k8s/tether/core/proxy"
	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/relay"
	"github.com/tether-k8s/tether/fixtures/issuer"
	"github.com/tether-k8s/tether/sim/internal/etcdsim"
	"github.com/tether-k8s/tether/sim/internal/netsim"
)

// Host names on the simulated network.
const (
	RelayHost  = "relay.sim"
	IssuerHost = "issuer.sim"
	relayAPI   = 8443
	relayAgent = 8444
	audience   = "tether-sim"
)

func apiHost(cluster string) string              { return "api-" + cluster + ".sim" }
func agentHost(cluster string, i int) string     { return fmt.Sprintf("agent-%s-%d.sim", cluster, i) }
func clientHost(i int) string                    { return fmt.Sprintf("client-%d.sim", i) }
func clusterName(i int) string                   { return fmt.Sprintf("c%04d", i) }
func userFor(client int) string                  { return fmt.Sprintf("user-%d", client) }
func saToken(cluster string) string              { return "sa-token-" + cluster }
func hostDial(n *netsim.Network, h string) dialF { return n.Host(h).DialContext }

type dialF = func(ctx context.Context, network, addr string) (net.Conn, error)

// WorldConfig sizes a world.
type WorldConfig struct {
	Seed             uint64
	Clusters         int
	AgentsPerCluster int
	SessionsPerAgent int
	Clients          int
	// Replicas, when more than 1, runs that many relay replicas on one
	// shared in-memory etcd behind a load balancer (world_replicas.go);
	// otherwise one relay on a registry file.
	Replicas int
	// Dir holds the relay's registry file.
	Dir string
	// Logger receives the components' logs. Nil discards.
	Logger *slog.Logger
}

// World is tether's real core running on a simulated network: an OIDC
// issuer, a relay, agents in front of stand-in API servers, and clients
// each with their own tether proxy.
type World struct {
	cfg      WorldConfig
	Net      *netsim.Network
	log      *slog.Logger
	issuer   *issuer.Issuer
	authnYML string
	relayCA  *x509.CertPool

	mu       sync.Mutex
	relay    *relay.Relay
	restarts []time.Time
	revokedC map[string]bool
	Clusters []*Cluster
	Clients  []*Client
	bg       sync.WaitGroup

	// With several replicas (WorldConfig.Replicas): the shared store, the
	// CA key's encryption key, the replicas, the load balancer's
	// listeners and goroutines, the tunnels' hops and the drains.
	etcd     *etcdsim.Store
	kek      registry.KeyEncryptionKey
	replicas []*replicaProc
	lbL      []net.Listener
	lbWG     sync.WaitGroup
	hops     hopLog
	drains   []DrainEvent
	stops    []StopEvent
}

// Cluster is one simulated cluster: its API server and agents.
type Cluster struct {
	ID     string
	API    *APIServer
	apiL   net.Listener
	apiSrv *http.Server
	store  *memStore
	token  string
	Agents []*agentProc
}

type agentProc struct {
	host   string
	starts uint64 // how many times it was started: seeds its backoff jitter
	cancel context.CancelFunc
	done   chan error
	a      *agent.Agent
}

// NewWorld builds the world and starts every component; Close ends them.
func NewWorld(ctx context.Context, cfg WorldConfig) (*World, error) {
	if cfg.AgentsPerCluster == 0 {
		cfg.AgentsPerCluster = 1
	}
	if cfg.SessionsPerAgent == 0 {
		cfg.SessionsPerAgent = 2
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &World{cfg: cfg, Net: netsim.New(cfg.Seed), log: log, revokedC: map[string]bool{}}
	il, err := w.Net.Host(IssuerHost).Listen(443)
	if err != nil {
		return nil, err
	}
	if w.issuer, err = issuer.Start(il, IssuerHost); err != nil {
		return nil, err
	}
	w.authnYML = w.issuer.AuthenticationConfig(audience)
	regCfg := registry.Config{Path: filepath.Join(cfg.Dir, "relay.db")}
	if cfg.Replicas > 1 {
		w.etcd = etcdsim.New()
		key := make([]byte, 0, 32)
		krnd := rand.New(rand.NewPCG(cfg.Seed, 7))
		for len(key) < 32 {
			key = binary.LittleEndian.AppendUint64(key, krnd.Uint64())
		}
		if w.kek, err = registry.NewKeyEncryptionKey(key); err != nil {
			return nil, err
		}
		regCfg = w.registryConfig("setup")
	}
	reg, err := registry.Open(regCfg)
	if err != nil {
		return nil, err
	}
	w.relayCA = x509.NewCertPool()
	w.relayCA.AddCert(reg.CACertificate())
	for i := range cfg.Clusters {
		c := &Cluster{ID: clusterName(i), store: &memStore{}}
		if c.token, err = reg.CreateCluster(c.ID); err != nil {
			return nil, err
		}
		// Every simulated client's user may reach every cluster: the
		// relay's policy is not what the simulator exercises; the
		// identity invariant checks who the API servers saw.
		if _, err := reg.UpdatePolicy(c.ID, func(p policy.Policy) (policy.Policy, error) {
			return p.Add(policy.Policy{Groups: []string{"oidc:sim"}}), nil
		}); err != nil {
			return nil, err
		}
		w.Clusters = append(w.Clusters, c)
	}
	_ = reg.Close()
	if w.multi() {
		err = w.startReplicas(ctx)
	} else {
		err = w.StartRelay(ctx)
	}
	if err != nil {
		return nil, err
	}
	for _, c := range w.Clusters {
		c.API = &APIServer{Cluster: c.ID, Token: saToken(c.ID)}
		if c.apiL, err = w.Net.Host(apiHost(c.ID)).Listen(6443); err != nil {
			return nil, err
		}
		c.apiSrv = &http.Server{Handler: c.API.Handler(), ReadHeaderTimeout: 10 * time.Second}
		go func(c *Cluster) { _ = c.apiSrv.Serve(c.apiL) }(c)
		for i := range cfg.AgentsPerCluster {
			c.Agents = append(c.Agents, &agentProc{host: agentHost(c.ID, i)})
		}
		for i := range c.Agents {
			if err := w.StartAgent(ctx, c, i); err != nil {
				return nil, err
			}
		}
	}
	for i := range cfg.Clients {
		cl, err := w.newClient(ctx, i)
		if err != nil {
			return nil, fmt.Errorf("sim: client %d: %w", i, err)
		}
		w.Clients = append(w.Clients, cl)
	}
	return w, nil
}

// StartRelay starts (or restarts) the relay on its data file, assembled by
// relay.Start as tether-relay serve assembles it, on the simulated network.
func (w *World) StartRelay(ctx context.Context) error {
	ac, err := authn.LoadConfig([]byte(w.authnYML))
	if err != nil {
		return err
	}
	host := w.Net.Host(RelayHost)
	r, err := relay.Start(context.WithoutCancel(ctx), relay.Options{
		Registry:       registry.Config{Path: filepath.Join(w.cfg.Dir, "relay.db"), Logger: w.log},
		Authentication: ac,
		Hostnames:      []string{RelayHost},
		APIAddr:        fmt.Sprintf("%s:%d", RelayHost, relayAPI),
		AgentAddr:      fmt.Sprintf("%s:%d", RelayHost, relayAgent),
		RelayID:        "relay-sim",
		Logger:         w.log,
		OnAgentSession: plantedMisroute,
		Listen:         listenOn(host),
		DialContext:    host.DialContext,
	})
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.relay = r
	w.mu.Unlock()
	return nil
}

// KillRelay stops the relay as kill -9 would: every connection it holds is
// reset, nothing drains.
func (w *World) KillRelay() {
	w.mu.Lock()
	r := w.relay
	w.relay = nil
	w.mu.Unlock()
	if r == nil {
		return
	}
	w.Net.ResetHost(RelayHost)
	_ = r.Close()
}

// DrainRelay drains the relay for at most grace, then stops it.
func (w *World) DrainRelay(grace time.Duration) {
	w.mu.Lock()
	r := w.relay
	w.mu.Unlock()
	if r == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	r.Drain(ctx)
	cancel()
	w.KillRelay()
}

// Relay returns the running relay's router and registry, or nils.
func (w *World) Relay() (*relay.Router, *registry.Registry) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.relay == nil {
		return nil, nil
	}
	return w.relay.Router(), w.relay.Registry()
}

// StartAgent starts agent i of cluster c.
func (w *World) StartAgent(ctx context.Context, c *Cluster, i int) error {
	ap := c.Agents[i]
	dial := hostDial(w.Net, ap.host)
	ac, err := authn.LoadConfig([]byte(w.authnYML))
	if err != nil {
		return err
	}
	actx, cancel := context.WithCancel(context.Background())
	au, err := authn.New(actx, authn.Config{Authentication: ac, DialContext: dial, Logger: w.log})
	if err != nil {
		cancel()
		return err
	}
	upstream, _ := url.Parse("http://" + apiHost(c.ID) + ":6443")
	ap.starts++
	a, err := agent.New(ctx, agent.Config{Rand: slotRand(w.cfg.Seed, hash(ap.host)^ap.starts), Cluster: c.ID, Name: fmt.Sprintf("agent-%d", i), RelayAPI: fmt.Sprintf("https://%s:%d", RelayHost, relayAPI),
		RelayAgentAddr: fmt.Sprintf("%s:%d", RelayHost, relayAgent), RelayCA: w.relayCA, Store: c.store, JoinToken: c.token,
		Sessions: w.cfg.SessionsPerAgent, DialContext: dial, Logger: w.log,
		Proxy: func(*http.Request) (*url.URL, error) { return nil, nil },
		Forward: impersonate.Config{Upstream: upstream, Transport: &http.Transport{DialContext: dial}, Authenticator: au,
			Credential: func(context.Context) (string, error) { return saToken(c.ID), nil }}})
	if err != nil {
		cancel()
		return err
	}
	ap.a, ap.cancel, ap.done = a, cancel, make(chan error, 1)
	go func() { ap.done <- a.Run(actx) }()
	return nil
}

func (w *World) agentRunning(c *Cluster, i int) bool { return c.Agents[i].cancel != nil }

// revoked marks a cluster's credentials revoked (or rejoined).
func (w *World) revoked(id string, on bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.revokedC[id] = on
}

// Restarts returns when the relay was restarted.
func (w *World) Restarts() []time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]time.Time(nil), w.restarts...)
}

// floodFrom holds n upgraded connections from client c open at once, until
// the returned function closes them.
func (w *World) floodFrom(c *Client, n int) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := c.Upgrade(ctx)
			if err != nil {
				return
			}
			defer conn.Close()
			fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: 127.0.0.1:47011\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"+
				"X-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n", ExecPath)
			stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
			defer stop()
			_, _ = io.Copy(io.Discard, conn)
		}()
	}
	w.bg.Add(1)
	return func() { cancel(); wg.Wait(); w.bg.Done() }
}

// KillAgent stops agent i of cluster c; its connections are reset.
func (w *World) KillAgent(c *Cluster, i int) {
	ap := c.Agents[i]
	if ap.cancel == nil {
		return
	}
	w.Net.ResetHost(ap.host)
	ap.cancel()
	<-ap.done
	ap.cancel = nil
}

// Live reports how many of c's agent sessions the relay holds.
func (w *World) Live(c *Cluster) int {
	if w.multi() {
		n := 0
		for _, r := range w.runningReplicas() {
			n += r.Router().Sessions(c.ID)
		}
		return n
	}
	r, _ := w.Relay()
	if r == nil {
		return 0
	}
	return r.Sessions(c.ID)
}

// Client is one simulated kubectl user with their own tether proxy, for one
// cluster.
type Client struct {
	ID      int
	User    string
	Cluster *Cluster
	HTTP    *http.Client
	// Upgrade makes the exec connections.
	Upgrade func(ctx context.Context) (net.Conn, error)
	tokenMu sync.Mutex
	token   string
	cancel  context.CancelFunc
	done    chan error
}

func (w *World) newClient(ctx context.Context, i int) (*Client, error) {
	c := &Client{ID: i, User: userFor(i), Cluster: w.Clusters[i%len(w.Clusters)]}
	if err := w.mintToken(c, 0); err != nil {
		return nil, err
	}
	host := w.Net.Host(clientHost(i))
	l, err := host.Listen(47011)
	if err != nil {
		return nil, err
	}
	p, err := proxy.New(ctx, proxy.Config{RelayURL: fmt.Sprintf("https://%s:%d", RelayHost, relayAPI), RelayCA: w.relayCA,
		Cluster: c.Cluster.ID, Token: func() (string, error) { c.tokenMu.Lock(); defer c.tokenMu.Unlock(); return c.token, nil }, Listener: l, DialContext: host.DialContext, Logger: w.log})
	if err != nil {
		_ = l.Close()
		return nil, err
	}
	pctx, cancel := context.WithCancel(context.Background())
	c.cancel, c.done = cancel, make(chan error, 1)
	go func() { c.done <- p.Serve(pctx) }()
	rc, err := clientcmd.NewDefaultClientConfig(*p.Kubeconfig("sim"), nil).ClientConfig()
	if err != nil {
		return nil, err
	}
	local := l.Addr().String()
	rc.Dial = func(ctx context.Context, _, _ string) (net.Conn, error) { return host.DialContext(ctx, "tcp", local) }
	rc.Host = "https://127.0.0.1:47011"
	tr, err := rest.TransportFor(rc)
	if err != nil {
		return nil, err
	}
	c.HTTP = &http.Client{Transport: tr}
	tlsCfg, err := rest.TLSConfigFor(rc)
	if err != nil {
		return nil, err
	}
	c.Upgrade = func(ctx context.Context) (net.Conn, error) {
		raw, err := host.DialContext(ctx, "tcp", local)
		if err != nil {
			return nil, err
		}
		tc := tls.Client(raw, tlsCfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = raw.Close()
			return nil, err
		}
		return tc, nil
	}
	return c, nil
}

// mintToken gives c a token from the issuer, minted with its clock off by
// skew.
func (w *World) mintToken(c *Client, skew time.Duration) error {
	tok, err := w.issuer.TokenAt(time.Now().Add(skew), c.User, []string{"sim"}, audience, 24*time.Hour)
	if err != nil {
		return err
	}
	c.tokenMu.Lock()
	c.token = tok
	c.tokenMu.Unlock()
	return nil
}

// Close stops every component and waits for them.
func (w *World) Close() error {
	var errs []error
	for _, c := range w.Clients {
		c.cancel()
		<-c.done
		c.HTTP.CloseIdleConnections()
	}
	for _, c := range w.Clusters {
		for i := range c.Agents {
			w.KillAgent(c, i)
		}
		if c.apiSrv != nil {
			errs = append(errs, c.apiSrv.Close())
		}
	}
	w.KillRelay()
	if w.multi() {
		errs = append(errs, w.closeReplicas())
	}
	if w.issuer != nil {
		errs = append(errs, w.issuer.Close())
	}
	return errors.Join(errs...)
}

// slotRand returns an agent's backoff jitter: a seeded source per session
// slot, so that what one slot draws does not depend on when the other
// slots drew.
func slotRand(seed, stream uint64) func(slot int) float64 {
	var mu sync.Mutex
	rnds := map[int]*rand.Rand{}
	return func(slot int) float64 {
		mu.Lock()
		defer mu.Unlock()
		r := rnds[slot]
		if r == nil {
			r = rand.New(rand.NewPCG(seed, stream^uint64(slot+1)*0x9e3779b97f4a7c15))
			rnds[slot] = r
		}
		return r.Float64()
	}
}

// hash is a stable hash of s, for seeding a stream per name.
func hash(s string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(s))
	return h.Sum64()
}

// memStore keeps an agent's credential in memory (a Secret's stand-in).
type memStore struct {
	mu        sync.Mutex
	cert, key []byte
}

func (m *memStore) Load(context.Context) ([]byte, []byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cert == nil {
		return nil, nil, agent.ErrNoCredential
	}
	return m.cert, m.key, nil
}

func (m *memStore) Save(_ context.Context, cert, key []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cert, m.key = cert, key
	return nil
}

func (m *memStore) String() string { return "memory" }

func (m *memStore) clear() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cert, m.key = nil, nil
}

// listenOn is a relay's Options.Listen on host: it listens on the port of
// the address the relay asks for.
func listenOn(host *netsim.Host) func(network, addr string) (net.Listener, error) {
	return func(_, addr string) (net.Listener, error) {
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		n, err := strconv.Atoi(port)
		if err != nil {
			return nil, err
		}
		return host.Listen(n)
	}
}

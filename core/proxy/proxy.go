package proxy

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"

	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/tether-k8s/tether/core/clustercert"
	"github.com/tether-k8s/tether/core/clusterid"
	"github.com/tether-k8s/tether/core/copybuf"
	"github.com/tether-k8s/tether/core/kstatus"
	"github.com/tether-k8s/tether/core/relayapi"
)

// DefaultListen is where the proxy listens when Config.Listen is empty.
const DefaultListen = "127.0.0.1:47011"

// Defaults of the tunnel pool (Config.MaxIdleTunnels, IdleTunnelTimeout).
// Each idle tunnel holds a TCP and TLS connection to the relay, a stream on
// the agent's session and the agent's TLS and HTTP/1.1 server connection
// (docs/performance.md has the measured cost); keeping enough of them idle
// is what lets concurrent requests skip the tunnel's setup: a TCP and TLS
// handshake with the relay, the tunnel's Upgrade (the relay authenticates
// the token again) and a TLS handshake with the agent.
const (
	DefaultMaxIdleTunnels    = 256
	DefaultIdleTunnelTimeout = 90 * time.Second
)

// WrongAgentMessage starts the error the proxy answers with when the
// relay connected it to the agent of another cluster than the one it asked
// for (the agent's certificate names it): a routing bug that the proxy's
// end-to-end TLS stops. The simulator looks for it.
const WrongAgentMessage = clustercert.WrongAgentMessage

// Config configures a Proxy.
type Config struct {
	// RelayURL is the relay's API, https://host:port. Required.
	RelayURL string
	// RelayCA verifies the relay. Nil means the system's roots.
	RelayCA *x509.CertPool
	// Cluster is the cluster to reach. Required.
	Cluster string
	// Token returns the caller's token; it is called for every new
	// connection, so a refreshed token is picked up. Required.
	Token func() (string, error)
	// ClusterToken, when set, returns the token requests carry to the
	// agent, inside the end-to-end TLS, while Token opens the tunnels at
	// the relay only: a token for the cluster's audience
	// (relayapi.ClusterAudience), so that neither hop sees a token the
	// other accepts; or a service-account token of the cluster
	// (service-account-token mode), which the agent passes to the API
	// server as it is, impersonating no one. Nil means requests carry
	// Token, which both hops then see.
	ClusterToken func() (string, error)
	// Listen is the local address, which must be a loopback address.
	// Zero means DefaultListen.
	Listen string
	// Listener, when set, is served instead of listening on Listen (the
	// simulator's in-memory network).
	Listener net.Listener
	// DialContext connects to the relay. Nil means a net.Dialer.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// MaxIdleTunnels is how many idle tunnels are kept per token for the
	// next requests; a request finding none opens a new one, and one that
	// ends when this many are idle closes its own. Zero means
	// DefaultMaxIdleTunnels.
	MaxIdleTunnels int
	// IdleTunnelTimeout closes a tunnel idle for this long. Zero means
	// DefaultIdleTunnelTimeout.
	IdleTunnelTimeout time.Duration
	// FlushInterval is how often a response body is flushed to kubectl
	// while it is copied. Zero flushes a response of unknown length (a
	// watch, logs -f: chunked) after every write, and one of known length
	// only as the server's buffer fills and when it ends; negative flushes
	// after every write.
	FlushInterval time.Duration
	// Logger receives the proxy's events. Nil discards.
	Logger *slog.Logger
}

// Validate reports the first problem with c, naming the field.
func (c *Config) Validate() error {
	u, err := url.Parse(c.RelayURL)
	switch {
	case err != nil || u.Scheme != "https" || u.Host == "":
		return fmt.Errorf("proxy: Config.RelayURL %q: want https://host[:port]", c.RelayURL)
	case clusterid.Validate(c.Cluster) != nil:
		return fmt.Errorf("proxy: Config.Cluster: %w", clusterid.Validate(c.Cluster))
	case c.Token == nil:
		return errors.New("proxy: Config.Token is nil: give the caller's token source")
	case c.MaxIdleTunnels < 0:
		return fmt.Errorf("proxy: Config.MaxIdleTunnels %d: want 0 (the default, %d) or more", c.MaxIdleTunnels, DefaultMaxIdleTunnels)
	case c.IdleTunnelTimeout < 0:
		return fmt.Errorf("proxy: Config.IdleTunnelTimeout %s: want 0 (the default, %s) or more", c.IdleTunnelTimeout, DefaultIdleTunnelTimeout)
	}
	if c.Listen != "" && c.Listener == nil {
		host, _, err := net.SplitHostPort(c.Listen)
		ip := net.ParseIP(host)
		if err != nil || ip == nil || !ip.IsLoopback() {
			return fmt.Errorf("proxy: Config.Listen %q: want a loopback address and port, such as %s", c.Listen, DefaultListen)
		}
	}
	return nil
}

// Proxy is a running local proxy for one cluster.
type Proxy struct {
	cfg       Config
	log       *slog.Logger
	relayHost string
	clusterCA *x509.CertPool
	caPEM     []byte // the local CA, for the kubeconfig
	server    tls.Certificate
	clientPEM []byte // the kubeconfig's client certificate and key
	clientKey []byte
	localCAs  *x509.CertPool
	listener  net.Listener
}

// New validates cfg, asks the relay for the cluster's details (which also
// checks the token), makes this run's certificates and listens.
func New(ctx context.Context, cfg Config) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	if cfg.MaxIdleTunnels == 0 {
		cfg.MaxIdleTunnels = DefaultMaxIdleTunnels
	}
	if cfg.IdleTunnelTimeout == 0 {
		cfg.IdleTunnelTimeout = DefaultIdleTunnelTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	u, _ := url.Parse(cfg.RelayURL)
	relayHost := u.Host
	if u.Port() == "" {
		relayHost = net.JoinHostPort(u.Hostname(), "443")
	}
	p := &Proxy{cfg: cfg, log: log.With("cluster", cfg.Cluster), relayHost: relayHost}
	info, err := p.clusterInfo(ctx)
	if err != nil {
		return nil, err
	}
	p.clusterCA = x509.NewCertPool()
	if !p.clusterCA.AppendCertsFromPEM([]byte(info.CA)) {
		return nil, errors.New("proxy: the relay published no usable cluster CA")
	}
	if !info.Connected {
		p.log.Warn("proxy: the cluster's agent is not connected to the relay right now; requests fail until it is")
	}
	if err := p.makeCertificates(); err != nil {
		return nil, err
	}
	if cfg.Listener != nil {
		p.listener = cfg.Listener
		return p, nil
	}
	l, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("proxy: listen on %s: %w (is another tether-proxy running? use --port)", cfg.Listen, err)
	}
	p.listener = l
	return p, nil
}

func (p *Proxy) relayClient() *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: p.dial,
		TLSClientConfig: &tls.Config{RootCAs: p.cfg.RelayCA, MinVersion: tls.VersionTLS12}}}
}

// dial connects to the relay, with Config.DialContext if set.
func (p *Proxy) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if p.cfg.DialContext != nil {
		return p.cfg.DialContext(ctx, network, addr)
	}
	d := &net.Dialer{Timeout: 15 * time.Second, KeepAlive: 30 * time.Second}
	return d.DialContext(ctx, network, addr)
}

func (p *Proxy) clusterInfo(ctx context.Context) (*relayapi.ClusterInfo, error) {
	token, err := p.cfg.Token()
	if err != nil {
		return nil, fmt.Errorf("proxy: read the caller's token: %w", err)
	}
	if err := checkTokenSize(token); err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(p.cfg.RelayURL, "/")+"/v1/clusters/"+p.cfg.Cluster, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	client := p.relayClient()
	defer client.CloseIdleConnections() // the only request on it
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("proxy: reach the relay at %s: %w", p.cfg.RelayURL, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		if st, ok := kstatus.Decode(body); ok {
			return nil, fmt.Errorf("proxy: the relay refused: %s", st.Message)
		}
		return nil, fmt.Errorf("proxy: the relay answered %s", resp.Status)
	}
	var info relayapi.ClusterInfo
	if err := json.Unmarshal(body, &info); err != nil {
		return nil, fmt.Errorf("proxy: cluster details: %w", err)
	}
	return &info, nil
}

// makeCertificates creates this run's CA, the server certificate for the
// listen address, and the client certificate the kubeconfig holds.
func (p *Proxy) makeCertificates() error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("proxy: generate CA key: %w", err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: "tether-proxy local CA"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(30 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		MaxPathLenZero: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return fmt.Errorf("proxy: create CA: %w", err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	p.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	p.localCAs = x509.NewCertPool()
	p.localCAs.AddCert(ca)

	issue := func(tmpl *x509.Certificate) ([]byte, *ecdsa.PrivateKey, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		tmpl.SerialNumber, tmpl.NotBefore, tmpl.NotAfter = serial(), now.Add(-time.Minute), caTmpl.NotAfter
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
		return der, key, err
	}
	host, _, _ := net.SplitHostPort(p.cfg.Listen)
	srvDER, srvKey, err := issue(&x509.Certificate{Subject: pkix.Name{CommonName: "tether-proxy"}, IPAddresses: []net.IP{net.ParseIP(host)},
		DNSNames: []string{"localhost"}, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	if err != nil {
		return fmt.Errorf("proxy: create server certificate: %w", err)
	}
	p.server = tls.Certificate{Certificate: [][]byte{srvDER}, PrivateKey: srvKey}
	cliDER, cliKey, err := issue(&x509.Certificate{Subject: pkix.Name{CommonName: "tether-proxy-user"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		return fmt.Errorf("proxy: create client certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cliKey)
	if err != nil {
		return fmt.Errorf("proxy: encode client key: %w", err)
	}
	p.clientPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cliDER})
	p.clientKey = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	return nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n.Add(n, big.NewInt(1))
}

// Addr returns the local endpoint's address.
func (p *Proxy) Addr() string { return p.listener.Addr().String() }

// Kubeconfig returns a kubeconfig whose context name reaches the cluster
// through this proxy. It holds the client certificate that is this run's
// secret: keep it private (written with mode 0600).
func (p *Proxy) Kubeconfig(context string) *clientcmdapi.Config {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[context] = &clientcmdapi.Cluster{Server: "https://" + p.Addr(), CertificateAuthorityData: p.caPEM}
	cfg.AuthInfos[context] = &clientcmdapi.AuthInfo{ClientCertificateData: p.clientPEM, ClientKeyData: p.clientKey}
	cfg.Contexts[context] = &clientcmdapi.Context{Cluster: context, AuthInfo: context}
	cfg.CurrentContext = context
	return cfg
}

// Serve serves kubectl until ctx ends.
func (p *Proxy) Serve(ctx context.Context) error {
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(&url.URL{Scheme: "https", Host: "cluster.tether"})
			pr.Out.Header.Del("Authorization")
			pr.Out.Header.Del("Proxy-Authorization")
			if t, ok := pr.In.Context().Value(tokenKey{}).(tokens); ok {
				pr.Out.Header.Set("Authorization", "Bearer "+t.agent)
			}
		},
		Transport:      &perToken{p: p},
		FlushInterval:  p.cfg.FlushInterval,
		BufferPool:     copybuf.Pool,
		ErrorHandler:   p.forwardError,
		ModifyResponse: p.noteAgentRefusal,
		// A stream cut mid-body (a relay restart, kubectl going away)
		// is routine: the caller sees the cut; log it quietly, as slog.
		ErrorLog: slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
	}
	srv := &http.Server{
		Handler:           p.guard(rp),
		ReadHeaderTimeout: 30 * time.Second,
		// kubectl's requests stream (watches, logs -f, uploads), so there
		// is no whole-request limit; an idle keep-alive connection closes.
		IdleTimeout:    5 * time.Minute,
		MaxHeaderBytes: 1 << 20,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{p.server}, ClientAuth: tls.RequireAndVerifyClientCert,
			ClientCAs: p.localCAs, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}},
		ErrorLog: slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
	}
	shutDown := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(shutDown)
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		_ = srv.Close()
	})
	// ServeTLS returns as soon as the shutdown begins: Serve returns once
	// the shutdown is over, so that nothing of the proxy outlives it.
	defer func() {
		if !stop() {
			<-shutDown
		}
	}()
	p.log.Info("proxy: serving", "address", p.Addr())
	err := srv.ServeTLS(p.listener, "", "")
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

type tokenKey struct{}

// tokens are a request's: relay opens its tunnel, agent authenticates it
// (the same token, except in service-account-token mode).
type tokens struct{ relay, agent string }

// checkTokenSize refuses a token over MaxTokenBytes, saying what to do.
func checkTokenSize(tok string) error {
	if len(tok) > MaxTokenBytes {
		return fmt.Errorf("your token is %d bytes, more than the %d a relay reads (tether accepts tokens up to 16 KiB): ask your identity provider for a smaller token, e.g. with fewer groups in it", len(tok), MaxTokenBytes)
	}
	return nil
}

// MaxTokenBytes is the largest token the proxy sends: the relay reads at
// most 64 KiB of request headers (and its authentication refuses tokens
// over 16 KiB with a message saying so), so a larger token could only end
// in a reset connection or a bare 431. The proxy refuses it itself, with
// its size.
const MaxTokenBytes = 64 << 10

// guard refuses what must never reach the cluster, and reads the token.
func (p *Proxy) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, err := net.SplitHostPort(r.Host)
		if err != nil {
			host = r.Host
		}
		host = strings.Trim(host, "[]")
		if host != "127.0.0.1" && host != "localhost" && host != "::1" {
			kstatus.Write(w, http.StatusForbidden, kstatus.ReasonForbidden, "tether-proxy: Host "+r.Host+" refused: only loopback")
			return
		}
		if r.Header.Get("Origin") != "" {
			kstatus.Write(w, http.StatusForbidden, kstatus.ReasonForbidden, "tether-proxy: requests from web pages are refused")
			return
		}
		for k := range r.Header {
			if strings.HasPrefix(strings.ToLower(k), "impersonate") {
				kstatus.Write(w, http.StatusForbidden, kstatus.ReasonForbidden,
					"tether-proxy: --as and --as-group are not supported: tether sets your identity from your token ("+http.CanonicalHeaderKey(k)+")")
				return
			}
		}
		tok, err := p.cfg.Token()
		if err != nil || tok == "" {
			p.log.Error("proxy: no token", "error", err)
			kstatus.Write(w, http.StatusUnauthorized, kstatus.ReasonUnauthorized, fmt.Sprintf("tether-proxy: cannot read your token: %v", err))
			return
		}
		if err := checkTokenSize(tok); err != nil {
			p.log.Error("proxy: token too large", "bytes", len(tok))
			kstatus.Write(w, http.StatusUnauthorized, kstatus.ReasonUnauthorized, "tether-proxy: "+err.Error())
			return
		}
		t := tokens{relay: tok, agent: tok}
		if p.cfg.ClusterToken != nil {
			if t.agent, err = p.cfg.ClusterToken(); err != nil || t.agent == "" {
				p.log.Error("proxy: no cluster token", "error", err)
				kstatus.Write(w, http.StatusUnauthorized, kstatus.ReasonUnauthorized, fmt.Sprintf("tether-proxy: cannot read the token for the cluster's agent: %v", err))
				return
			}
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), tokenKey{}, t)))
	})
}

// dialCluster opens a tunnel through the relay and speaks TLS to the agent
// inside it, checking the agent is the cluster's.
// perToken keeps one pool of tunnels per caller token: the relay admits a
// tunnel for the token that opened it, and the agent refuses requests of
// anyone else on it, so a new token (a refresh, another user) gets tunnels
// of its own. The newest few pools are kept; older ones close when idle.
type perToken struct {
	p     *Proxy
	mu    sync.Mutex
	pools []tokenPool
}

type tokenPool struct {
	key [32]byte
	tr  *http.Transport
}

// maxTokenPools is how many tokens' tunnels are kept.
const maxTokenPools = 4

func (t *perToken) RoundTrip(r *http.Request) (*http.Response, error) {
	toks, _ := r.Context().Value(tokenKey{}).(tokens)
	tok := toks.relay
	// A tunnel is keyed by both tokens: the relay admitted the one, the
	// agent authenticates the other.
	key := sha256.Sum256([]byte(toks.relay + "\x00" + toks.agent))
	t.mu.Lock()
	var tr *http.Transport
	for i, pl := range t.pools {
		if pl.key == key {
			tr = pl.tr
			t.pools = append(append(t.pools[:i:i], t.pools[i+1:]...), pl) // newest last
			break
		}
	}
	if tr == nil {
		tr = &http.Transport{
			DialTLSContext:        func(ctx context.Context, _, _ string) (net.Conn, error) { return t.p.dialCluster(ctx, tok) },
			ForceAttemptHTTP2:     false,
			MaxIdleConns:          t.p.cfg.MaxIdleTunnels,
			MaxIdleConnsPerHost:   t.p.cfg.MaxIdleTunnels,
			IdleConnTimeout:       t.p.cfg.IdleTunnelTimeout,
			ResponseHeaderTimeout: 0, // watches and logs -f answer late and stream
		}
		t.pools = append(t.pools, tokenPool{key: key, tr: tr})
		if len(t.pools) > maxTokenPools {
			t.pools[0].tr.CloseIdleConnections()
			t.pools = t.pools[1:]
		}
	}
	t.mu.Unlock()
	return tr.RoundTrip(r)
}

// dialCluster opens a tunnel to the cluster through the relay with tok,
// and TLS to the agent inside it.
func (p *Proxy) dialCluster(ctx context.Context, tok string) (net.Conn, error) {
	host, _, _ := net.SplitHostPort(p.relayHost)
	tcp, err := p.dial(ctx, "tcp", p.relayHost)
	if err != nil {
		return nil, fmt.Errorf("reach the relay at %s: %w", p.relayHost, err)
	}
	raw := tls.Client(tcp, &tls.Config{RootCAs: p.cfg.RelayCA, ServerName: host, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}})
	if err := raw.HandshakeContext(ctx); err != nil {
		_ = tcp.Close()
		return nil, fmt.Errorf("TLS with the relay at %s: %w", p.relayHost, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = raw.Close() })
	defer stop()
	conn, err := relayapi.DialTunnel(raw, p.relayHost, p.cfg.Cluster, tok)
	if err != nil {
		_ = raw.Close()
		return nil, err
	}
	// The agent's certificate is its cluster credential: verified against
	// the cluster CA and the requested cluster, not a host name.
	agent := tls.Client(conn, clustercert.AgentClientTLS(p.clusterCA, p.cfg.Cluster))
	if err := agent.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		return nil, fmt.Errorf("TLS to the cluster's agent: %w", err)
	}
	return agent, nil
}

// verifyAgent accepts only a certificate that chains to the relay's cluster
// CA and names the requested cluster (clustercert.VerifyAgent).
func (p *Proxy) verifyAgent(cs tls.ConnectionState) error {
	return clustercert.VerifyAgent(p.clusterCA, p.cfg.Cluster, cs.PeerCertificates)
}

// forwardError answers kubectl when the cluster could not be reached.
// agentRefusalPrefix starts the message of every refusal the agent itself
// writes (core/impersonate), as opposed to the API server's.
const agentRefusalPrefix = "tether agent: "

// noteAgentRefusal logs, as a warning, the message of a 401 or 403 the
// cluster's agent wrote: kubectl's discovery turns a 401 into "the server
// has asked for the client to provide credentials" and drops the message,
// which says which hop refused and why. The response is passed on
// unchanged; the message never holds the token (the agent's refusals quote
// none).
func (p *Proxy) noteAgentRefusal(resp *http.Response) error {
	if resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden {
		return nil
	}
	const limit = 64 << 10
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		return err
	}
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(body), resp.Body), resp.Body}
	if st, ok := kstatus.Decode(body); ok && strings.HasPrefix(st.Message, agentRefusalPrefix) {
		p.log.Warn("proxy: the cluster's agent refused the request", "verb", resp.Request.Method, "path", resp.Request.URL.Path,
			"status", resp.StatusCode, "message", st.Message)
	}
	return nil
}

func (p *Proxy) forwardError(w http.ResponseWriter, r *http.Request, err error) {
	p.log.Warn("proxy: request failed", "verb", r.Method, "path", r.URL.Path, "error", err)
	var te *relayapi.TunnelError
	if errors.As(err, &te) {
		kstatus.Write(w, te.Status.Code, te.Status.Reason, te.Status.Message)
		return
	}
	if errors.Is(err, context.Canceled) {
		return
	}
	kstatus.Write(w, http.StatusBadGateway, kstatus.ReasonBadGateway, "tether-proxy: "+err.Error())
}

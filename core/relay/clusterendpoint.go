package relay

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tether-k8s/tether/core/clustercert"
	"github.com/tether-k8s/tether/core/copybuf"
	"github.com/tether-k8s/tether/core/kstatus"
	"github.com/tether-k8s/tether/core/relayapi"
	"github.com/tether-k8s/tether/core/tunnel"
)

// Defaults of ClusterEndpointConfig.
const (
	DefaultClusterEndpointMaxIdle     = 4
	DefaultClusterEndpointIdleTimeout = 30 * time.Second
	DefaultClusterEndpointMaxCallers  = 256
)

// ClusterEndpointConfig configures the relay's per-cluster HTTPS endpoint
// (ServerConfig.ClusterEndpoint), where kubectl talks to the relay itself
// and the relay forwards each request into a stream to the cluster's agent.
type ClusterEndpointConfig struct {
	// MaxIdlePerCaller is how many idle TLS connections to a cluster's
	// agents are kept for one caller token, so that a kubectl session does
	// not pay a stream and a TLS handshake per request. Zero means
	// DefaultClusterEndpointMaxIdle.
	MaxIdlePerCaller int
	// IdleTimeout is how long an idle connection to an agent is kept.
	// Zero means DefaultClusterEndpointIdleTimeout.
	IdleTimeout time.Duration
	// MaxCallers is how many (cluster, caller token) pools of connections
	// are kept; beyond it the least recently used pool closes its idle
	// connections and is forgotten. Zero means
	// DefaultClusterEndpointMaxCallers.
	MaxCallers int
}

// Validate reports the first negative field.
func (c *ClusterEndpointConfig) Validate() error {
	switch {
	case c.MaxIdlePerCaller < 0:
		return fmt.Errorf("relay: ClusterEndpointConfig.MaxIdlePerCaller %d is negative", c.MaxIdlePerCaller)
	case c.IdleTimeout < 0:
		return fmt.Errorf("relay: ClusterEndpointConfig.IdleTimeout %s is negative", c.IdleTimeout)
	case c.MaxCallers < 0:
		return fmt.Errorf("relay: ClusterEndpointConfig.MaxCallers %d is negative", c.MaxCallers)
	}
	return nil
}

func (c ClusterEndpointConfig) withDefaults() ClusterEndpointConfig {
	if c.MaxIdlePerCaller == 0 {
		c.MaxIdlePerCaller = DefaultClusterEndpointMaxIdle
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultClusterEndpointIdleTimeout
	}
	if c.MaxCallers == 0 {
		c.MaxCallers = DefaultClusterEndpointMaxCallers
	}
	return c
}

// clusterEndpoint serves /v1/clusters/{id}/k8s/...: it checks the caller as
// the tunnel endpoint does, then reverse-proxies the request, upgrades
// included, over TLS to one of the cluster's agents, with the caller's own
// token, which the agent authenticates again.
type clusterEndpoint struct {
	s     *Server
	cfg   ClusterEndpointConfig
	ca    *x509.CertPool
	proxy *httputil.ReverseProxy

	mu    sync.Mutex
	pools map[[32]byte]*agentPool
}

// agentPool holds one caller token's connections to one cluster's agents:
// a token's connection never carries another token's request.
type agentPool struct {
	tr   *http.Transport
	used time.Time
}

// call is what the handler learned about a request, for the transport,
// the rewrite and the audit line.
type call struct {
	cluster, user, token, client string
	owner                        StreamOwner
	// path and rawPath are the request's path below the endpoint.
	path, rawPath string
	pool          *agentPool
	// requestID is the agent's ID for the request (its tunnel's ID, a dot
	// and the request's number on it), known once a connection is chosen.
	requestID atomic.Value
	err       error
}

type callKey struct{}

func newClusterEndpoint(s *Server, cfg ClusterEndpointConfig) *clusterEndpoint {
	e := &clusterEndpoint{s: s, cfg: cfg.withDefaults(), ca: x509.NewCertPool(), pools: map[[32]byte]*agentPool{}}
	e.ca.AddCert(s.cfg.Registry.CACertificate())
	e.proxy = &httputil.ReverseProxy{
		Rewrite:   e.rewrite,
		Transport: e,
		// Watches and logs -f: every chunk goes to the caller at once.
		FlushInterval: -1,
		BufferPool:    copybuf.Pool,
		ErrorHandler:  e.forwardError,
		ErrorLog:      slogLogger(s.log),
	}
	return e
}

// ServeHTTP implements http.Handler.
func (e *clusterEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	count := e.s.cfg.Metrics.clusterRequest
	id, res, token, ok := e.s.caller(w, r, count)
	who := res.Identity
	if !ok {
		return
	}
	for k := range r.Header {
		if strings.HasPrefix(strings.ToLower(k), "impersonate") {
			count(ResultForbidden)
			e.s.log.Warn("relay: cluster request with an impersonation header refused", "cluster", id, "user", who.User, "header", http.CanonicalHeaderKey(k), "client", r.RemoteAddr)
			kstatus.Write(w, http.StatusForbidden, kstatus.ReasonForbidden,
				"tether relay: the "+http.CanonicalHeaderKey(k)+" header is not accepted: tether sets your identity from your token (kubectl --as and --as-group are not supported through tether)")
			return
		}
	}
	if up := r.Header.Get("Upgrade"); up != "" && !strings.EqualFold(up, "SPDY/3.1") && !strings.EqualFold(up, "websocket") {
		count(ResultBadRequest)
		kstatus.Write(w, http.StatusBadRequest, kstatus.ReasonBadRequest, "tether relay: Upgrade "+up+" is not supported: only SPDY/3.1 and websocket (exec, attach, port-forward)")
		return
	}
	path, rawPath, ok := splitClusterPath(id, r.URL.EscapedPath())
	if !ok {
		count(ResultBadRequest)
		kstatus.Write(w, http.StatusBadRequest, kstatus.ReasonBadRequest, "tether relay: a cluster request's path is "+fmt.Sprintf(relayapi.ClusterEndpointPath, id)+"/ followed by the Kubernetes API path")
		return
	}
	// The caller is authenticated and kubectl's traffic streams (watches,
	// logs -f, large bodies): lift the API's request limit for it. The
	// caller's streams stay bounded by the router's caps.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
	c := &call{cluster: id, user: who.User, owner: ownerOf(res), token: token, client: r.RemoteAddr, path: path, rawPath: rawPath}
	c.pool = e.pool(id, token)
	ctx := context.WithValue(r.Context(), callKey{}, c)
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) {
		if ac, ok := ci.Conn.(*agentConn); ok {
			c.requestID.Store(fmt.Sprintf("%s.%d", ac.tunnel, ac.requests.Add(1)))
		}
	}})
	rec := &recorder{ResponseWriter: w}
	var in *countingBody
	if r.Body != nil && r.Body != http.NoBody {
		in = &countingBody{ReadCloser: r.Body}
		r.Body = in
	}
	e.proxy.ServeHTTP(rec, r.WithContext(ctx))

	result := ResultForwarded
	if c.err != nil {
		result = ResultFailed
		var nc *NotConnectedError
		switch {
		case errors.As(c.err, &nc):
			result = ResultNotConnected
		case errors.Is(c.err, ErrTooManyStreams):
			result = ResultTooMany
		}
	}
	count(result)
	bytesIn, bytesOut := rec.upgradedIn.Load(), rec.bytes+rec.upgradedOut.Load()
	if in != nil {
		bytesIn += in.n.Load()
	}
	reqID, _ := c.requestID.Load().(string)
	e.s.cfg.Metrics.spliced(bytesIn, bytesOut)
	status := rec.status()
	if rec.code == 0 && c.err != nil {
		status = 0 // no response: the caller went away
	}
	attrs := []any{"request", reqID, "cluster", id, "user", who.User, "client", r.RemoteAddr,
		"verb", r.Method, "path", path, "status", status, "bytesIn", bytesIn, "bytesOut", bytesOut,
		"durationMs", time.Since(start).Milliseconds()}
	if c.err != nil {
		attrs = append(attrs, "error", c.err.Error())
	}
	e.s.audit.Info("relay: cluster request", attrs...)
}

// splitClusterPath cuts the endpoint's prefix for cluster id from a
// request's escaped path and returns the Kubernetes API path below it,
// unescaped and as sent, or false when the path does not start with the
// prefix and a slash or does not unescape.
func splitClusterPath(id, escaped string) (path, rawPath string, ok bool) {
	rawPath, ok = strings.CutPrefix(escaped, fmt.Sprintf(relayapi.ClusterEndpointPath, id))
	if !ok || !strings.HasPrefix(rawPath, "/") {
		return "", "", false
	}
	path, err := url.PathUnescape(rawPath)
	if err != nil {
		return "", "", false
	}
	return path, rawPath, true
}

// pool returns the (cluster, token) pool, making it if needed, and forgets
// the least recently used one beyond MaxCallers.
func (e *clusterEndpoint) pool(cluster, token string) *agentPool {
	key := sha256.Sum256([]byte(cluster + "\x00" + token))
	now := time.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	if p := e.pools[key]; p != nil {
		p.used = now
		return p
	}
	p := &agentPool{used: now, tr: &http.Transport{
		DialTLSContext:      e.dialAgent,
		MaxIdleConnsPerHost: e.cfg.MaxIdlePerCaller,
		IdleConnTimeout:     e.cfg.IdleTimeout,
		// The caller's Accept-Encoding passes as it is; nothing is
		// decompressed here.
		DisableCompression: true,
		// HTTP/1.1 only: the agent speaks nothing else, and upgrades need it.
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{},
		// Watches and logs -f answer late and stream: no header timeout.
		ResponseHeaderTimeout: 0,
	}}
	e.pools[key] = p
	if len(e.pools) > e.cfg.MaxCallers {
		var oldest [32]byte
		var at time.Time
		for k, q := range e.pools {
			if k != key && (at.IsZero() || q.used.Before(at)) {
				oldest, at = k, q.used
			}
		}
		// Its connections in use end with their requests, then idle out
		// after IdleTimeout.
		e.pools[oldest].tr.CloseIdleConnections()
		delete(e.pools, oldest)
	}
	return p
}

// RoundTrip sends the request on its own (cluster, token) pool.
func (e *clusterEndpoint) RoundTrip(r *http.Request) (*http.Response, error) {
	c, ok := r.Context().Value(callKey{}).(*call)
	if !ok {
		return nil, errors.New("relay: a cluster request without its caller")
	}
	return c.pool.tr.RoundTrip(r)
}

// dialAgent opens a stream to one of the cluster's agents for the request's
// caller, and TLS inside it, verifying the agent's certificate against the
// relay's cluster CA and the cluster.
func (e *clusterEndpoint) dialAgent(ctx context.Context, _, _ string) (net.Conn, error) {
	c, ok := ctx.Value(callKey{}).(*call)
	if !ok {
		return nil, errors.New("relay: dial an agent without a caller")
	}
	tunnelID := newID()
	st, err := e.s.cfg.Router.Open(ctx, &tunnel.Open{Cluster: c.cluster, Request: tunnelID, Client: c.client, User: c.user}, c.owner)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(st, clustercert.AgentClientTLS(e.ca, c.cluster))
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = st.Close()
		return nil, &AgentTLSError{Cluster: c.cluster, Err: err}
	}
	return &agentConn{Conn: tc, tunnel: tunnelID}, nil
}

// AgentTLSError is the relay's failure to speak TLS to a cluster's agent,
// or its refusal of the agent's certificate (it names another cluster, or
// does not chain to the relay's cluster CA).
type AgentTLSError struct {
	Cluster string
	Err     error
}

func (e *AgentTLSError) Error() string {
	return fmt.Sprintf("relay: TLS to the agent of cluster %s: %v", e.Cluster, e.Err)
}

func (e *AgentTLSError) Unwrap() error { return e.Err }

// agentConn is a TLS connection to an agent, named by its stream's ID, with
// the number of requests sent on it: the agent names each request the same
// way (agent.TunnelRequestID), so the audit lines link up.
type agentConn struct {
	net.Conn
	tunnel   string
	requests atomic.Int64
}

// CloseWrite passes a caller's half-close on to the agent (exec with stdin
// at EOF, after an upgrade).
func (c *agentConn) CloseWrite() error { return closeWriteOf(c.Conn) }

func (e *clusterEndpoint) rewrite(pr *httputil.ProxyRequest) {
	c, _ := pr.In.Context().Value(callKey{}).(*call)
	if c == nil {
		return // RoundTrip refuses it
	}
	pr.Out.URL = &url.URL{Scheme: "https", Host: "cluster.tether", Path: c.path, RawPath: c.rawPath, RawQuery: pr.In.URL.RawQuery}
	pr.Out.Host = "cluster.tether"
	// The agent authenticates the caller's own token again, and never
	// forwards it. Set, never Add: exactly one Authorization goes on.
	pr.Out.Header.Del("Proxy-Authorization")
	pr.Out.Header.Del("Forwarded")
	pr.Out.Header.Set("Authorization", "Bearer "+c.token)
}

// forwardError answers a request that could not reach the agent.
func (e *clusterEndpoint) forwardError(w http.ResponseWriter, r *http.Request, err error) {
	c, _ := r.Context().Value(callKey{}).(*call)
	if c != nil {
		c.err = err
	}
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		return // the caller went away
	}
	e.s.log.Warn("relay: cluster request failed", "cluster", r.PathValue("id"), "verb", r.Method, "error", err)
	var te *AgentTLSError
	if errors.As(err, &te) {
		kstatus.Write(w, http.StatusBadGateway, kstatus.ReasonBadGateway, "tether relay: the relay refused the agent it reached for cluster "+te.Cluster+": "+te.Err.Error()+
			" (a routing fault or a replaced credential; retry, and tell the relay's operator if it lasts)")
		return
	}
	WriteError(w, err)
}

// closeIdle closes every pool's idle connections to agents.
func (e *clusterEndpoint) closeIdle() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, p := range e.pools {
		p.tr.CloseIdleConnections()
	}
}

// recorder notes a response's status and size, and counts an upgraded
// connection's bytes both ways.
type recorder struct {
	http.ResponseWriter
	code                    int
	bytes                   int64
	upgradedIn, upgradedOut atomic.Int64
}

func (r *recorder) WriteHeader(code int) {
	if r.code == 0 && code >= 200 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach Flush.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// Hijack takes over the caller's connection after a 101, counting what
// passes on it.
func (r *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(r.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	r.code = http.StatusSwitchingProtocols
	return &countingConn{Conn: conn, in: &r.upgradedIn, out: &r.upgradedOut}, brw, nil
}

func (r *recorder) status() int {
	if r.code == 0 {
		return http.StatusOK
	}
	return r.code
}

type countingConn struct {
	net.Conn
	in, out *atomic.Int64
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.in.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.out.Add(int64(n))
	return n, err
}

// CloseWrite passes a half-close on (exec with stdin at EOF).
func (c *countingConn) CloseWrite() error { return closeWriteOf(c.Conn) }

func closeWriteOf(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("relay: half-close a %T: %w", c, http.ErrNotSupported)
}

type countingBody struct {
	io.ReadCloser
	n atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

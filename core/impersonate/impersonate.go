package impersonate

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/tether-k8s/tether/core/copybuf"
	"github.com/tether-k8s/tether/core/identity"
	"github.com/tether-k8s/tether/core/kstatus"
	"github.com/tether-k8s/tether/core/tokensource"
)

// Extra keys the handler adds to every impersonated request.
const (
	// ExtraRequestID carries the request ID that the agent's audit line and
	// the API server's audit log share.
	ExtraRequestID = "tether.io/request-id"
	// ExtraClientAddress carries the caller's address as the handler saw it
	// (the request's RemoteAddr).
	ExtraClientAddress = "tether.io/client-address"
)

// DefaultMaxTokenBytes is the default cap on a bearer token's size.
const DefaultMaxTokenBytes = 16 << 10

// Config configures a Handler.
type Config struct {
	// Upstream is the API server's URL. Required.
	Upstream *url.URL
	// Transport carries requests to the API server, with its CA. It must not
	// add credentials of its own. Required.
	Transport http.RoundTripper
	// UpgradeTransport carries upgrade requests (exec, attach,
	// port-forward). It must never reuse a connection, so that one that
	// answered a refused upgrade carries nothing else. Zero means a clone of
	// Transport with keep-alives disabled, when Transport is an
	// *http.Transport; otherwise it is required.
	UpgradeTransport http.RoundTripper
	// Credential returns the agent's bearer token for the API server, the
	// service account that may only impersonate. It is called per request,
	// so a rotated token is picked up. Required.
	Credential func(ctx context.Context) (string, error)
	// Authenticator validates callers' tokens. Required.
	Authenticator identity.Authenticator
	// AllowSystemNames lets identities have "system:" user and group names.
	// False (the default) refuses them: a token issuer should not be able to
	// name system:masters.
	AllowSystemNames bool
	// MaxTokenBytes caps the bearer token's size. Zero means
	// DefaultMaxTokenBytes (16 KiB).
	MaxTokenBytes int
	// FlushInterval is how often a response body is flushed to the caller
	// while it is copied. Zero flushes a response of unknown length (a
	// watch, logs -f: chunked) after every write, and one of known length
	// only as the server's buffer fills and when it ends (fewer TLS records
	// and yamux frames); negative flushes after every write.
	FlushInterval time.Duration
	// Logger receives refusals (Warn) and upstream errors (Error). Nil
	// discards.
	Logger *slog.Logger
	// Audit receives one line per forwarded request. Nil discards.
	Audit *slog.Logger
	// Admit, if not nil, may refuse an authenticated, impersonated caller
	// (403, with its error as the message) before anything is forwarded:
	// the agent uses it to keep a tunnel to the user the relay admitted.
	// It can only narrow access, never widen it.
	Admit func(r *http.Request, id identity.Identity) error
	// CheckAudiences, if not nil, may refuse an authenticated token by its
	// audiences (its verified aud claim; 403, with its error as the
	// message) before anything is forwarded: the agent refuses tokens for
	// the relay's audience and for other clusters' audiences
	// (relayapi.CheckAgentAudiences), which another hop saw. It is not
	// asked about service-account tokens passed through, which the API
	// server checks against its own audiences.
	CheckAudiences func(audiences []string) error
	// RequestID, if not nil, names each request for the audit lines and
	// the tether.io/request-id extra (the agent derives it from the
	// relay's tunnel ID, so the relay's, the agent's and the API server's
	// audit lines link up). It must return 1 to 128 of A-Za-z0-9._-;
	// otherwise, or when nil, a random ID is used.
	RequestID func(r *http.Request) string
	// Observe, if not nil, is called once per request, when the handler
	// is done with it (an upgrade's: when its connection ended).
	Observe func(Observation)
}

// Validate reports the first problem with c, naming the field.
func (c *Config) Validate() error {
	switch {
	case c.Upstream == nil || c.Upstream.Scheme == "" || c.Upstream.Host == "":
		return errors.New("impersonate: Config.Upstream must be the API server's absolute URL")
	case c.Transport == nil:
		return errors.New("impersonate: Config.Transport is nil: give the transport to the API server")
	case c.UpgradeTransport == nil && !isHTTPTransport(c.Transport):
		return errors.New("impersonate: Config.UpgradeTransport is nil and Transport is not an *http.Transport to derive it from")
	case c.Credential == nil:
		return errors.New("impersonate: Config.Credential is nil: the agent needs its own token to forward")
	case c.Authenticator == nil:
		return errors.New("impersonate: Config.Authenticator is nil: callers must be authenticated")
	case c.MaxTokenBytes < 0:
		return fmt.Errorf("impersonate: Config.MaxTokenBytes %d is negative", c.MaxTokenBytes)
	}
	return nil
}

// Handler authenticates callers and forwards their requests with
// impersonation. See the package documentation for what it refuses.
type Handler struct {
	cfg   Config
	proxy *httputil.ReverseProxy
	log   *slog.Logger
	audit *slog.Logger
}

// New returns a Handler for cfg.
func New(cfg Config) (*Handler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.MaxTokenBytes == 0 {
		cfg.MaxTokenBytes = DefaultMaxTokenBytes
	}
	if cfg.UpgradeTransport == nil {
		t := cfg.Transport.(*http.Transport).Clone()
		t.DisableKeepAlives = true
		cfg.UpgradeTransport = t
	}
	h := &Handler{cfg: cfg, log: orDiscard(cfg.Logger), audit: orDiscard(cfg.Audit)}
	h.proxy = &httputil.ReverseProxy{
		Rewrite:       h.rewrite,
		Transport:     upgradeSplit{plain: cfg.Transport, upgrade: cfg.UpgradeTransport},
		FlushInterval: cfg.FlushInterval,
		BufferPool:    copybuf.Pool,
		ErrorLog:      slog.NewLogLogger(h.log.Handler(), slog.LevelError),
		ErrorHandler:  h.upstreamError,
	}
	return h, nil
}

// Observation is what Config.Observe learns of one request.
type Observation struct {
	// Request is the caller's request as it arrived (its headers
	// unchanged: read them, never log the Authorization one).
	Request *http.Request
	// Code is the response's status code, 101 for an upgrade.
	Code int
	// Refused is true when the handler refused the request itself.
	Refused bool
	// Duration runs from the request's arrival to the end of its response:
	// for a watch or an upgrade, when the stream or connection ended.
	Duration time.Duration
}

func (h *Handler) observe(r *http.Request, start time.Time, code int, refused bool) {
	if h.cfg.Observe != nil {
		h.cfg.Observe(Observation{Request: r, Code: code, Refused: refused, Duration: time.Since(start)})
	}
}

func isHTTPTransport(rt http.RoundTripper) bool {
	_, ok := rt.(*http.Transport)
	return ok
}

// upgradeSplit sends upgrade requests over a transport that never reuses a
// connection. (Setting Request.Close instead would add "Connection: close"
// beside "Connection: Upgrade", which kubelets reject.)
type upgradeSplit struct{ plain, upgrade http.RoundTripper }

func (u upgradeSplit) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Header.Get("Upgrade") != "" {
		return u.upgrade.RoundTrip(r)
	}
	return u.plain.RoundTrip(r)
}

func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

// plan is what ServeHTTP decided the outgoing request carries; rewrite
// applies it. Rewrite cannot fail, so every decision is made before.
type plan struct {
	authorization string
	as            *identity.Identity // nil in passthrough mode
}

type planKey struct{}

// refusal is a request the handler will not forward.
type refusal struct {
	code    int
	reason  string
	message string
}

func refuse(code int, reason, format string, args ...any) *refusal {
	return &refusal{code: code, reason: reason, message: "tether agent: " + fmt.Sprintf(format, args...)}
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	reqID := ""
	if h.cfg.RequestID != nil {
		reqID = h.cfg.RequestID(r)
	}
	if !requestIDRE.MatchString(reqID) {
		reqID = newRequestID()
	}
	log := h.log.With("requestID", reqID, "verb", r.Method, "path", r.URL.Path, "client", r.RemoteAddr)

	p, who, ref := h.decide(r, reqID)
	if ref != nil {
		log.Warn("impersonate: request refused", "code", ref.code, "why", ref.message)
		kstatus.Write(w, ref.code, ref.reason, ref.message)
		h.observe(r, start, ref.code, true)
		return
	}
	rec := &recorder{ResponseWriter: w}
	h.proxy.ServeHTTP(rec, r.WithContext(context.WithValue(r.Context(), planKey{}, p)))
	h.observe(r, start, rec.status(), false)
	// A service-account token passed through is verified by the API
	// server, not here: its sub is what it claims, not who it is.
	user := slog.String("user", who.User)
	if p.as == nil {
		user = slog.String("claimedServiceAccount", who.User)
	}
	h.audit.Info("impersonate: request",
		"requestID", reqID, user, "groups", len(who.Groups), "impersonated", p.as != nil,
		"verb", r.Method, "path", r.URL.Path, "status", rec.status(), "bytes", rec.bytes,
		"durationMs", time.Since(start).Milliseconds(), "client", r.RemoteAddr)
}

// decide checks the request and returns the plan for forwarding it, the
// caller's identity, or why it is refused.
func (h *Handler) decide(r *http.Request, reqID string) (*plan, identity.Identity, *refusal) {
	if ref := checkHeaders(r); ref != nil {
		return nil, identity.Identity{}, ref
	}
	if ref := checkUpgrade(r); ref != nil {
		return nil, identity.Identity{}, ref
	}
	token, ref := h.bearerToken(r.Header)
	if ref != nil {
		return nil, identity.Identity{}, ref
	}
	res, err := h.cfg.Authenticator.AuthenticateToken(r.Context(), token)
	if err != nil {
		msg := strings.ReplaceAll(err.Error(), token, "<token>")
		return nil, identity.Identity{}, refuse(http.StatusUnauthorized, kstatus.ReasonUnauthorized, "the bearer token was refused: %s%s", msg, tokensource.ExpiredHint(token, time.Now()))
	}
	if res.Passthrough {
		return &plan{authorization: "Bearer " + token}, res.Identity, nil
	}
	id := res.Identity
	if h.cfg.CheckAudiences != nil {
		if err := h.cfg.CheckAudiences(res.Audiences); err != nil {
			return nil, id, refuse(http.StatusForbidden, kstatus.ReasonForbidden, "%v", err)
		}
	}
	if err := identity.Validate(id, h.cfg.AllowSystemNames); err != nil {
		return nil, id, refuse(http.StatusForbidden, kstatus.ReasonForbidden, "%v", err)
	}
	if h.cfg.Admit != nil {
		if err := h.cfg.Admit(r, id); err != nil {
			return nil, id, refuse(http.StatusForbidden, kstatus.ReasonForbidden, "%v", err)
		}
	}
	cred, err := h.cfg.Credential(r.Context())
	if err != nil || cred == "" {
		h.log.Error("impersonate: no agent credential", "error", err)
		return nil, id, refuse(http.StatusServiceUnavailable, kstatus.ReasonServiceUnavailable, "the agent has no credential for the API server; see the agent's log")
	}
	out := id
	out.Extra = make(map[string][]string, len(id.Extra)+2)
	for k, v := range id.Extra {
		out.Extra[k] = v
	}
	out.Extra[ExtraRequestID] = []string{reqID}
	out.Extra[ExtraClientAddress] = []string{r.RemoteAddr}
	return &plan{authorization: "Bearer " + cred, as: &out}, id, nil
}

// connectionTokensAllowed are the only tokens a Connection header may list.
var connectionTokensAllowed = map[string]bool{"keep-alive": true, "close": true, "upgrade": true, "http2-settings": true}

// checkHeaders refuses client impersonation headers, Connection headers
// naming anything but the usual hop-by-hop tokens, and Proxy-Authorization.
func checkHeaders(r *http.Request) *refusal {
	for k := range r.Header {
		lk := strings.ToLower(k)
		if strings.HasPrefix(lk, "impersonate") {
			return refuse(http.StatusForbidden, kstatus.ReasonForbidden,
				"the %s header is not accepted: tether sets the identity from your token (kubectl --as and --as-group are not supported through tether)", http.CanonicalHeaderKey(k))
		}
		// The API server's request-header authentication trusts these from
		// an authenticating proxy with a client certificate; the agent is
		// not one, and a caller never sends them.
		if strings.HasPrefix(lk, "x-remote-") {
			return refuse(http.StatusForbidden, kstatus.ReasonForbidden,
				"the %s header is not accepted: tether sets the identity from your token", http.CanonicalHeaderKey(k))
		}
	}
	for _, v := range r.Header.Values("Connection") {
		for _, tok := range strings.Split(v, ",") {
			tok = strings.ToLower(strings.TrimSpace(tok))
			if tok != "" && !connectionTokensAllowed[tok] {
				return refuse(http.StatusBadRequest, kstatus.ReasonBadRequest, "the Connection header may not name %q", tok)
			}
		}
	}
	if len(r.Header.Values("Proxy-Authorization")) > 0 {
		return refuse(http.StatusBadRequest, kstatus.ReasonBadRequest, "the Proxy-Authorization header is not accepted")
	}
	return nil
}

// streamingPath matches the pod subresources that upgrade.
var streamingPath = regexp.MustCompile(`^/api/v1/namespaces/[^/]+/pods/[^/]+/(exec|attach|portforward)$`)

// webSocketSubprotocols are the Kubernetes WebSocket subprotocols. Anything
// else, notably base64url.bearer.authorization.k8s.io.<token>, is refused.
var webSocketSubprotocols = map[string]bool{
	"channel.k8s.io": true, "base64.channel.k8s.io": true,
	"v2.channel.k8s.io": true, "v3.channel.k8s.io": true, "v4.channel.k8s.io": true, "v5.channel.k8s.io": true,
	"v4.base64.channel.k8s.io": true, "v5.base64.channel.k8s.io": true,
	"portforward.k8s.io": true, "v2.portforward.k8s.io": true, "SPDY/3.1+portforward.k8s.io": true,
}

// checkUpgrade refuses any upgrade but SPDY/3.1 and Kubernetes WebSockets
// on streaming paths.
func checkUpgrade(r *http.Request) *refusal {
	ups := r.Header.Values("Upgrade")
	wantsUpgrade := len(ups) > 0
	for _, v := range r.Header.Values("Connection") {
		for _, tok := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "upgrade") {
				wantsUpgrade = true
			}
		}
	}
	if !wantsUpgrade {
		return nil
	}
	if len(ups) != 1 || strings.Contains(ups[0], ",") {
		return refuse(http.StatusBadRequest, kstatus.ReasonBadRequest, "an upgrade must name exactly one protocol, got %q", ups)
	}
	switch proto := strings.TrimSpace(ups[0]); {
	case strings.EqualFold(proto, "SPDY/3.1"):
	case strings.EqualFold(proto, "websocket"):
		var subs []string
		for _, v := range r.Header.Values("Sec-WebSocket-Protocol") {
			for _, s := range strings.Split(v, ",") {
				if s = strings.TrimSpace(s); s != "" {
					subs = append(subs, s)
				}
			}
		}
		if len(subs) == 0 {
			return refuse(http.StatusBadRequest, kstatus.ReasonBadRequest, "a WebSocket upgrade must name a Kubernetes subprotocol")
		}
		for _, s := range subs {
			if !webSocketSubprotocols[s] {
				return refuse(http.StatusBadRequest, kstatus.ReasonBadRequest, "WebSocket subprotocol %q is not accepted", truncate(s, 40))
			}
		}
	default:
		return refuse(http.StatusBadRequest, kstatus.ReasonBadRequest, "upgrade to %q refused: only SPDY/3.1 and Kubernetes WebSocket subprotocols are accepted", truncate(proto, 40))
	}
	if !streamingPath.MatchString(r.URL.Path) {
		return refuse(http.StatusBadRequest, kstatus.ReasonBadRequest, "%s is not a streaming endpoint (exec, attach, portforward): no upgrade there", truncate(r.URL.Path, 200))
	}
	return nil
}

// bearerToken extracts the one bearer token of the request.
func (h *Handler) bearerToken(hdr http.Header) (string, *refusal) {
	vals := hdr.Values("Authorization")
	if len(vals) > 1 {
		return "", refuse(http.StatusBadRequest, kstatus.ReasonBadRequest, "more than one Authorization header")
	}
	noToken := refuse(http.StatusUnauthorized, kstatus.ReasonUnauthorized, "a bearer token is required (Authorization: Bearer ...)")
	if len(vals) == 0 {
		return "", noToken
	}
	scheme, token, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", noToken
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return "", noToken
	}
	if len(token) > h.cfg.MaxTokenBytes {
		return "", refuse(http.StatusUnauthorized, kstatus.ReasonUnauthorized, "the bearer token is longer than %d bytes", h.cfg.MaxTokenBytes)
	}
	for i := 0; i < len(token); i++ {
		if c := token[i]; c <= ' ' || c >= 0x7f {
			return "", refuse(http.StatusUnauthorized, kstatus.ReasonUnauthorized, "the bearer token contains a space or control character")
		}
	}
	return token, nil
}

// escapeExtraKey percent-encodes every byte of an extra key that may not
// appear in a header name, and '%' itself, so that kube-apiserver's decoding
// (lower-case, then path-unescape) gives the key back.
func escapeExtraKey(k string) string {
	var b strings.Builder
	for i := 0; i < len(k); i++ {
		c := k[i]
		if c == '%' || !isTokenByte(c) {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// isTokenByte reports whether c may appear in an HTTP header name (RFC 9110
// token).
func isTokenByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// rewrite builds the outgoing request from the plan. It cannot fail: every
// check was made in ServeHTTP. Without a plan it sends nothing.
func (h *Handler) rewrite(pr *httputil.ProxyRequest) {
	pr.SetURL(h.cfg.Upstream)
	out := pr.Out.Header
	for k := range out {
		lk := strings.ToLower(k)
		if strings.HasPrefix(lk, "impersonate") || strings.HasPrefix(lk, "x-forwarded") || strings.HasPrefix(lk, "x-remote-") ||
			lk == "forwarded" || lk == "authorization" || lk == "proxy-authorization" {
			delete(out, k)
		}
	}
	p, _ := pr.In.Context().Value(planKey{}).(*plan)
	if p == nil {
		// Unreachable through ServeHTTP. Send nowhere (the transport fails
		// and the caller gets 502) rather than send a request without
		// credentials, which a cluster allowing anonymous access would serve.
		pr.Out.URL = &url.URL{}
		return
	}
	out.Set("Authorization", p.authorization)
	if id := p.as; id != nil {
		out.Set("Impersonate-User", id.User)
		if id.UID != "" {
			out.Set("Impersonate-Uid", id.UID)
		}
		if len(id.Groups) > 0 {
			out["Impersonate-Group"] = append([]string(nil), id.Groups...)
		}
		for k, vs := range id.Extra {
			out[http.CanonicalHeaderKey("Impersonate-Extra-"+escapeExtraKey(k))] = append([]string(nil), vs...)
		}
	}
}

// upstreamError answers when the API server could not be reached or
// answered an upgrade with the wrong protocol.
func (h *Handler) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	h.log.Error("impersonate: API server request failed", "verb", r.Method, "path", r.URL.Path, "error", err)
	if errors.Is(err, context.Canceled) {
		return
	}
	kstatus.Write(w, http.StatusBadGateway, kstatus.ReasonBadGateway, "tether agent: the agent could not complete the request to the API server: "+err.Error())
}

// recorder notes the status and size of the response for the audit line.
// It passes Flush and Hijack through, so streaming and upgrades work.
type recorder struct {
	http.ResponseWriter
	code     int
	bytes    int64
	hijacked bool
}

func (r *recorder) WriteHeader(code int) {
	if r.code == 0 {
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

func (r *recorder) Flush() { _ = http.NewResponseController(r.ResponseWriter).Flush() }

// Hijack is called by the reverse proxy once the API server switched
// protocols.
func (r *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(r.ResponseWriter).Hijack()
	if err == nil {
		r.hijacked = true
	}
	return conn, brw, err
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *recorder) status() int {
	switch {
	case r.hijacked:
		return http.StatusSwitchingProtocols
	case r.code == 0:
		return http.StatusOK
	}
	return r.code
}

var requestIDRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

func newRequestID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

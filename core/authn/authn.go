package authn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/wait"
	apiserverapi "k8s.io/apiserver/pkg/apis/apiserver"
	"k8s.io/apiserver/pkg/apis/apiserver/install"
	"k8s.io/apiserver/pkg/apis/apiserver/validation"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	authenticationcel "k8s.io/apiserver/pkg/authentication/cel"
	tokenunion "k8s.io/apiserver/pkg/authentication/token/union"
	"k8s.io/apiserver/plugin/pkg/authenticator/token/oidc"

	"github.com/tether-k8s/tether/core/identity"
)

// Extra keys the Authenticator adds.
const (
	ExtraIssuer  = "tether.io/issuer"
	ExtraSubject = "tether.io/subject"
)

// DefaultMaxTokenBytes is the default cap on a token's size.
const DefaultMaxTokenBytes = 16 << 10

// Errors the Authenticator wraps.
var (
	ErrMalformedToken = errors.New("malformed token")
	ErrUnknownIssuer  = errors.New("the token's issuer is not configured")
)

var (
	configScheme = runtime.NewScheme()
	configCodecs = serializer.NewCodecFactory(configScheme, serializer.EnableStrict)
)

func init() { install.Install(configScheme) }

// LoadConfig decodes an AuthenticationConfiguration (YAML or JSON, any served
// version of apiserver.config.k8s.io), strictly: an unknown field is an
// error. It does not validate; New does.
func LoadConfig(data []byte) (*apiserverapi.AuthenticationConfiguration, error) {
	if len(strings.TrimSpace(string(data))) == 0 {
		return nil, errors.New("authn: the authentication configuration is empty")
	}
	obj, err := runtime.Decode(configCodecs.UniversalDecoder(), data)
	if err != nil {
		return nil, fmt.Errorf("authn: decode authentication configuration (want apiVersion apiserver.config.k8s.io/v1, kind AuthenticationConfiguration): %w", err)
	}
	c, ok := obj.(*apiserverapi.AuthenticationConfiguration)
	if !ok {
		return nil, fmt.Errorf("authn: want an AuthenticationConfiguration (apiserver.config.k8s.io/v1), got %T", obj)
	}
	return c, nil
}

// Config configures an Authenticator.
type Config struct {
	// Authentication is the decoded configuration (see LoadConfig): its
	// jwt issuers. Required, with at least one issuer; anonymous access is
	// not supported.
	Authentication *apiserverapi.AuthenticationConfiguration
	// DisallowedIssuers may not appear in the configuration: the cluster's
	// own service-account issuer, whose tokens are passed through instead.
	DisallowedIssuers []string
	// AllowSystemNames lets mapped users and groups start with "system:".
	// False (the default) refuses such identities.
	AllowSystemNames bool
	// MaxTokenBytes caps a token's size. Zero means DefaultMaxTokenBytes.
	MaxTokenBytes int
	// JWKSMaxAge is how long an issuer's keys are trusted after a fetch,
	// unless the JWKS response's Cache-Control max-age says less; a key the
	// issuer retired stops working within it. Zero means DefaultJWKSMaxAge.
	JWKSMaxAge time.Duration
	// JWKSMinRefresh is the least time between two fetches of one issuer's
	// keys (a token with an unknown kid triggers one). Zero means
	// DefaultJWKSMinRefresh.
	JWKSMinRefresh time.Duration
	// JWKSFetchTimeout bounds one fetch of an issuer's keys (discovery and
	// JWKS together): a verification that needs a fetch waits at most this
	// long for an issuer that accepts and never answers. Zero means
	// DefaultJWKSFetchTimeout.
	JWKSFetchTimeout time.Duration
	// DialContext connects to issuers (discovery and keys). Nil means the
	// default transport's dialer.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Logger receives issuer health changes. Nil discards.
	Logger *slog.Logger
}

// Validate reports the first problem with c, naming the field: what tether
// adds to the configuration, then the issuers themselves as kube-apiserver
// would check them (claim and user validation rules compiled), so a
// malformed configuration is refused before anything is opened.
func (c *Config) Validate() error {
	ac := c.Authentication
	switch {
	case ac == nil || len(ac.JWT) == 0:
		return errors.New("authn: Config.Authentication names no jwt issuer: tether needs at least one")
	case ac.Anonymous != nil && ac.Anonymous.Enabled:
		return errors.New("authn: Config.Authentication enables anonymous access, which tether never allows")
	case c.MaxTokenBytes < 0:
		return fmt.Errorf("authn: Config.MaxTokenBytes %d is negative", c.MaxTokenBytes)
	case c.JWKSMaxAge < 0 || c.JWKSMinRefresh < 0 || c.JWKSFetchTimeout < 0:
		return errors.New("authn: Config.JWKSMaxAge, JWKSMinRefresh and JWKSFetchTimeout must not be negative")
	}
	if errs := validation.ValidateAuthenticationConfiguration(authenticationcel.NewDefaultCompiler(), ac, c.DisallowedIssuers); len(errs) > 0 {
		return fmt.Errorf("authn: invalid authentication configuration: %w", errs.ToAggregate())
	}
	return nil
}

// withDefaults returns c with its zero fields set to their defaults.
func (c Config) withDefaults() Config {
	if c.MaxTokenBytes == 0 {
		c.MaxTokenBytes = DefaultMaxTokenBytes
	}
	if c.JWKSMaxAge == 0 {
		c.JWKSMaxAge = DefaultJWKSMaxAge
	}
	if c.JWKSMinRefresh == 0 {
		c.JWKSMinRefresh = DefaultJWKSMinRefresh
	}
	if c.JWKSFetchTimeout == 0 {
		c.JWKSFetchTimeout = DefaultJWKSFetchTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Authenticator verifies bearer tokens. It implements
// identity.Authenticator.
type Authenticator struct {
	cfg    Config
	union  authenticator.Token
	health []func() error
	log    *slog.Logger
	stop   context.CancelFunc
	wg     sync.WaitGroup // the key sets' first fetches
}

var _ identity.Authenticator = (*Authenticator)(nil)

// New validates the configuration and starts one JWT authenticator per
// issuer. Issuers' discovery documents are fetched in the background until
// ctx ends; WaitReady waits for them. Cancel ctx to stop them.
func New(ctx context.Context, cfg Config) (_ *Authenticator, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	ac, log := cfg.Authentication, cfg.Logger
	compiler := authenticationcel.NewDefaultCompiler()
	a := &Authenticator{cfg: cfg, log: log}
	ctx, a.stop = context.WithCancel(ctx)
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	var tokens []authenticator.Token
	for i, j := range ac.JWT {
		// The key set fetches discovery and keys with a client of our
		// own, carrying the issuer's CA and the dialer.
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if j.Issuer.CertificateAuthority != "" {
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM([]byte(j.Issuer.CertificateAuthority)) {
				return nil, fmt.Errorf("authn: jwt[%d] (%s): certificateAuthority holds no PEM certificate", i, j.Issuer.URL)
			}
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = tc
		if cfg.DialContext != nil {
			tr.DialContext = cfg.DialContext
		}
		client := issuerClient(tr)
		ks := newKeySet(j.Issuer.URL, j.Issuer.DiscoveryURL, client, oidc.AllValidSigningAlgorithms(), cfg.JWKSMaxAge, cfg.JWKSMinRefresh, cfg.JWKSFetchTimeout, log)
		// With a KeySet the authenticator does no discovery of its own
		// (and refuses a DiscoveryURL, which the key set honours).
		j.Issuer.DiscoveryURL = ""
		t, err := oidc.New(ctx, oidc.Options{
			JWTAuthenticator:     j,
			KeySet:               ks,
			Client:               client,
			SupportedSigningAlgs: oidc.AllValidSigningAlgorithms(),
			DisallowedIssuers:    cfg.DisallowedIssuers,
			Compiler:             compiler,
		})
		if err != nil {
			return nil, fmt.Errorf("authn: jwt[%d] (%s): %w", i, j.Issuer.URL, err)
		}
		// Fetch the keys once in the background, so the issuer is ready
		// before the first token; the goroutine ends once they are, or
		// with ctx.
		a.wg.Go(func() { ks.prime(ctx) })
		a.health = append(a.health, ks.healthy)
		tokens = append(tokens, t)
		a.health = append(a.health, t.HealthCheck)
	}
	// Each authenticator ignores tokens of other issuers (checked on the
	// unverified iss), so the first error comes from the token's own issuer.
	a.union = tokenunion.NewFailOnError(tokens...)
	return a, nil
}

// Close stops the issuers' background fetches (as ending the context New
// was given does) and waits for them.
func (a *Authenticator) Close() {
	a.stop()
	a.wg.Wait()
}

// Healthy reports nil when every issuer's discovery document has been
// fetched, or the first issuer that is not ready.
func (a *Authenticator) Healthy() error {
	for _, h := range a.health {
		if err := h(); err != nil {
			return err
		}
	}
	return nil
}

// WaitReady waits until every issuer is ready, or ctx ends.
func (a *Authenticator) WaitReady(ctx context.Context) error {
	err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(context.Context) (bool, error) {
		return a.Healthy() == nil, nil
	})
	if err != nil {
		return fmt.Errorf("authn: issuers not ready: %w", errors.Join(err, a.Healthy()))
	}
	return nil
}

// AuthenticateToken implements identity.Authenticator. It never returns
// Passthrough: service-account tokens are recognised elsewhere.
func (a *Authenticator) AuthenticateToken(ctx context.Context, token string) (identity.Result, error) {
	claims, err := a.precheck(token)
	if err != nil {
		return identity.Result{}, err
	}
	resp, ok, err := a.union.AuthenticateToken(ctx, token)
	if err != nil {
		return identity.Result{}, fmt.Errorf("authn: %w", err)
	}
	if !ok || resp == nil || resp.User == nil {
		return identity.Result{}, fmt.Errorf("authn: %w (issuer %q)", ErrUnknownIssuer, truncate(claims.Issuer, 200))
	}
	u := resp.User
	id := identity.Identity{
		User:   u.GetName(),
		UID:    u.GetUID(),
		Groups: append([]string(nil), u.GetGroups()...),
		Extra:  map[string][]string{},
	}
	for k, v := range u.GetExtra() {
		id.Extra[k] = append([]string(nil), v...)
	}
	id.Extra[ExtraIssuer] = []string{claims.Issuer}
	if claims.Subject != "" {
		id.Extra[ExtraSubject] = []string{claims.Subject}
	}
	if err := identity.Validate(id, a.cfg.AllowSystemNames); err != nil {
		return identity.Result{}, fmt.Errorf("authn: %w", err)
	}
	res := identity.Result{Identity: id, Audiences: claims.Audience}
	if exp, err := claims.Expiry.Int64(); err == nil && exp > 0 {
		res.Expires = time.Unix(exp, 0)
	}
	return res, nil
}

// tokenClaims are the claims read for the extras and the error messages.
type tokenClaims struct {
	Issuer   string    `json:"iss"`
	Subject  string    `json:"sub"`
	Audience audiences `json:"aud"`
	// Expiry is read for Result.Expires once the token is verified (the
	// JWT authenticator checked it).
	Expiry json.Number `json:"exp"`
}

// audiences is an aud claim: a string or an array of strings.
type audiences []string

func (a *audiences) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*a = audiences{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return fmt.Errorf("aud is neither a string nor an array of strings")
	}
	*a = many
	return nil
}

// precheck refuses oversized and malformed tokens before any parsing, and
// reads iss and sub from the payload. They are trusted only after the token
// is verified.
func (a *Authenticator) precheck(token string) (tokenClaims, error) {
	if len(token) > a.cfg.MaxTokenBytes {
		return tokenClaims{}, fmt.Errorf("authn: %w: %d bytes, at most %d", ErrMalformedToken, len(token), a.cfg.MaxTokenBytes)
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return tokenClaims{}, fmt.Errorf("authn: %w: a JWT has 3 dot-separated parts, this has %d", ErrMalformedToken, min(len(parts), 4))
	}
	for _, p := range parts {
		if p == "" || strings.Trim(p, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
			return tokenClaims{}, fmt.Errorf("authn: %w: parts must be non-empty base64url", ErrMalformedToken)
		}
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return tokenClaims{}, fmt.Errorf("authn: %w: payload is not base64url", ErrMalformedToken)
	}
	var c tokenClaims
	if err := json.Unmarshal(payload, &c); err != nil {
		return tokenClaims{}, fmt.Errorf("authn: %w: payload is not a JSON object of claims", ErrMalformedToken)
	}
	return c, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// issuerClient is the client that fetches an issuer's discovery document and
// keys: it follows a redirect only to another https URL, at most 3 times,
// so that a compromised or misconfigured issuer cannot send the fetch to
// plain HTTP, where anyone on the path could serve their own keys.
func issuerClient(tr http.RoundTripper) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: tr, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if req.URL.Scheme != "https" {
			return fmt.Errorf("authn: the issuer redirected %s to %s: only https is followed", via[0].URL.Redacted(), req.URL.Redacted())
		}
		if len(via) >= 3 {
			return fmt.Errorf("authn: the issuer redirected %s more than 3 times", via[0].URL.Redacted())
		}
		return nil
	}}
}

package authn_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/tether-k8s/tether/core/authn"
	"github.com/tether-k8s/tether/core/identity"
)

// issuer is an OpenID provider on 127.0.0.1: discovery and JWKS over TLS.
type issuer struct {
	srv   *httptest.Server
	key   *ecdsa.PrivateKey
	caPEM string
}

func newIssuer(t testing.TB) *issuer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	is := &issuer{key: key}
	mux := http.NewServeMux()
	is.srv = httptest.NewUnstartedServer(mux)
	is.srv.StartTLS()
	t.Cleanup(is.srv.Close)
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{"issuer": is.srv.URL, "jwks_uri": is.srv.URL + "/jwks",
			"id_token_signing_alg_values_supported": []string{"ES256"}})
	})
	mux.HandleFunc("/jwks", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	})
	is.caPEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: is.srv.Certificate().Raw}))
	return is
}

func (is *issuer) sign(t testing.TB, claims map[string]any) string {
	t.Helper()
	return signWith(t, jose.SigningKey{Algorithm: jose.ES256, Key: is.key}, "k1", claims)
}

func signWith(t testing.TB, key jose.SigningKey, kid string, claims map[string]any) string {
	t.Helper()
	signer, err := jose.NewSigner(key, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid))
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := json.Marshal(claims)
	jws, err := signer.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// claims returns valid claims for audience aud, with overrides.
func (is *issuer) claims(aud any, over map[string]any) map[string]any {
	now := time.Now()
	c := map[string]any{
		"iss": is.srv.URL, "sub": "alice-sub", "aud": aud, "email": "alice@example.com",
		"groups": []string{"dev", "oncall"}, "iat": now.Unix(), "nbf": now.Add(-time.Minute).Unix(), "exp": now.Add(time.Hour).Unix(),
	}
	for k, v := range over {
		if v == nil {
			delete(c, k)
			continue
		}
		c[k] = v
	}
	return c
}

func configYAML(is *issuer, audience, groupsPrefix string) string {
	return fmt.Sprintf(`apiVersion: apiserver.config.k8s.io/v1
kind: AuthenticationConfiguration
jwt:
- issuer:
    url: %s
    audiences: [%s]
    certificateAuthority: |
%s
  claimMappings:
    username:
      claim: sub
      prefix: "oidc:"
    groups:
      claim: groups
      prefix: %q
`, is.srv.URL, audience, indent(is.caPEM, "      "), groupsPrefix)
}

func indent(s, pre string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i := range lines {
		lines[i] = pre + lines[i]
	}
	return strings.Join(lines, "\n")
}

func newAuthn(t testing.TB, yaml string, mutate ...func(*authn.Config)) *authn.Authenticator {
	t.Helper()
	ac, err := authn.LoadConfig([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	cfg := authn.Config{Authentication: ac}
	for _, m := range mutate {
		m(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	a, err := authn.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	if err := a.WaitReady(wctx); err != nil {
		t.Fatal(err)
	}
	return a
}

func TestValidToken(t *testing.T) {
	is := newIssuer(t)
	a := newAuthn(t, configYAML(is, "cluster-a", "oidc:"))
	res, err := a.AuthenticateToken(t.Context(), is.sign(t, is.claims("cluster-a", nil)))
	if err != nil {
		t.Fatal(err)
	}
	id := res.Identity
	if id.User != "oidc:alice-sub" || strings.Join(id.Groups, ",") != "oidc:dev,oidc:oncall" || res.Passthrough {
		t.Fatalf("identity %+v", res)
	}
	if id.Extra[authn.ExtraIssuer][0] != is.srv.URL || id.Extra[authn.ExtraSubject][0] != "alice-sub" {
		t.Fatalf("extras %v", id.Extra)
	}
	if err := identity.Validate(id, false); err != nil {
		t.Fatalf("the authenticator returned an identity impersonate refuses: %v", err)
	}
	if strings.Join(res.Audiences, ",") != "cluster-a" {
		t.Fatalf("audiences %q, want the token's aud", res.Audiences)
	}
	res, err = a.AuthenticateToken(t.Context(), is.sign(t, is.claims([]string{"cluster-z", "cluster-a"}, nil)))
	if err != nil || strings.Join(res.Audiences, ",") != "cluster-z,cluster-a" {
		t.Fatalf("aud array: audiences %q, %v", res.Audiences, err)
	}
}

func TestIssuerReachedThroughTheGivenDialer(t *testing.T) {
	is := newIssuer(t)
	var dials atomic.Int32
	a := newAuthn(t, configYAML(is, "cluster-a", "oidc:"), func(c *authn.Config) {
		c.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}
	})
	if _, err := a.AuthenticateToken(t.Context(), is.sign(t, is.claims("cluster-a", nil))); err != nil {
		t.Fatal(err)
	}
	if dials.Load() == 0 {
		t.Fatal("the issuer was reached without the configured dialer")
	}
}

// TestTokenRefusals holds the checklist's token rows.
func TestTokenRefusals(t *testing.T) {
	is := newIssuer(t)
	a := newAuthn(t, configYAML(is, "cluster-a", "oidc:"))
	pubDER, _ := x509.MarshalPKIXPublicKey(&is.key.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	b64 := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	validPayload := func() string {
		p, _ := json.Marshal(is.claims("cluster-a", nil))
		return base64.RawURLEncoding.EncodeToString(p)
	}

	tests := []struct {
		name  string
		token func() string
		want  string
	}{
		{"expired", func() string {
			return is.sign(t, is.claims("cluster-a", map[string]any{"exp": time.Now().Add(-time.Minute).Unix()}))
		}, "expired"},
		{"nbf in the future", func() string {
			return is.sign(t, is.claims("cluster-a", map[string]any{"nbf": time.Now().Add(time.Hour).Unix()}))
		}, "nbf"},
		{"no exp", func() string { return is.sign(t, is.claims("cluster-a", map[string]any{"exp": nil})) }, "expired"},
		{"wrong audience", func() string { return is.sign(t, is.claims("cluster-b", nil)) }, "audience"},
		{"audience array without ours", func() string { return is.sign(t, is.claims([]string{"cluster-b", "cluster-c"}, nil)) }, "audience"},
		{"token for cluster B used on cluster A", func() string { return is.sign(t, is.claims("cluster-b", nil)) }, "audience"},
		{"look-alike issuer (trailing slash)", func() string { return is.sign(t, is.claims("cluster-a", map[string]any{"iss": is.srv.URL + "/"})) }, "not configured"},
		{"look-alike issuer (other host)", func() string {
			return is.sign(t, is.claims("cluster-a", map[string]any{"iss": strings.Replace(is.srv.URL, "127.0.0.1", "127.0.0.1.nip.io", 1)}))
		}, "not configured"},
		{"alg none, empty signature", func() string { return b64(`{"alg":"none","typ":"JWT"}`) + "." + validPayload() + "." }, "malformed"},
		{"alg none, junk signature", func() string { return b64(`{"alg":"none","typ":"JWT"}`) + "." + validPayload() + "." + b64("x") }, "oidc"},
		{"HS256 signed with the issuer's public key", func() string {
			return signWith(t, jose.SigningKey{Algorithm: jose.HS256, Key: pubPEM}, "k1", is.claims("cluster-a", nil))
		}, "oidc"},
		{"signed by another key with the same kid", func() string {
			return signWith(t, jose.SigningKey{Algorithm: jose.ES256, Key: otherKey}, "k1", is.claims("cluster-a", nil))
		}, "signature"},
		{"unknown kid", func() string {
			return signWith(t, jose.SigningKey{Algorithm: jose.ES256, Key: otherKey}, "k-unknown", is.claims("cluster-a", nil))
		}, "oidc"},
		{"1 MB token", func() string { return strings.Repeat("a", 1<<20) }, "malformed"},
		{"token of dots", func() string { return strings.Repeat(".", 100000) }, "malformed"},
		{"four parts", func() string { return "a.b.c.d" }, "malformed"},
		{"payload not JSON", func() string { return "eyJhbGciOiJFUzI1NiJ9." + b64("not json") + ".c2ln" }, "malformed"},
		{"user name with CR LF", func() string {
			return is.sign(t, is.claims("cluster-a", map[string]any{"sub": "alice\r\nImpersonate-Group: system:masters"}))
		}, "control character"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok := tc.token()
			_, err := a.AuthenticateToken(t.Context(), tok)
			if err == nil {
				t.Fatal("token accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want it to mention %q", err, tc.want)
			}
			if len(tok) > 40 && strings.Contains(err.Error(), tok) {
				t.Fatal("the error contains the token")
			}
		})
	}
}

func TestSystemNamesAndManyGroups(t *testing.T) {
	is := newIssuer(t)
	noPrefix := newAuthn(t, configYAML(is, "cluster-a", ""))
	masters := is.sign(t, is.claims("cluster-a", map[string]any{"groups": []string{"system:masters"}}))
	if _, err := noPrefix.AuthenticateToken(t.Context(), masters); !errors.Is(err, identity.ErrUnsafe) {
		t.Fatalf("groups claim system:masters with no prefix = %v, want refused", err)
	}
	allowing := newAuthn(t, configYAML(is, "cluster-a", ""), func(c *authn.Config) { c.AllowSystemNames = true })
	if _, err := allowing.AuthenticateToken(t.Context(), masters); err != nil {
		t.Fatalf("AllowSystemNames: %v", err)
	}

	groups := make([]string, 1000)
	for i := range groups {
		groups[i] = fmt.Sprintf("team-%04d", i)
	}
	prefixed := newAuthn(t, configYAML(is, "cluster-a", "oidc:"))
	res, err := prefixed.AuthenticateToken(t.Context(), is.sign(t, is.claims("cluster-a", map[string]any{"groups": groups})))
	if err != nil || len(res.Identity.Groups) != 1000 {
		t.Fatalf("1,000 groups: %d groups, %v", len(res.Identity.Groups), err)
	}
}

func TestConfigErrors(t *testing.T) {
	is := newIssuer(t)
	tests := []struct {
		name string
		yaml string
		want string
	}{
		{"empty", "", "empty"},
		{"unknown field", strings.Replace(configYAML(is, "a", "oidc:"), "audiences:", "audiencez:", 1), "unknown field"},
		{"http issuer", strings.Replace(configYAML(is, "a", "oidc:"), "url: https://", "url: http://", 1), "https"},
		{"no issuer", "apiVersion: apiserver.config.k8s.io/v1\nkind: AuthenticationConfiguration\n", "no jwt issuer"},
		{"anonymous enabled", configYAML(is, "a", "oidc:") + "anonymous:\n  enabled: true\n", "anonymous"},
		{"wrong kind", "apiVersion: v1\nkind: Pod\n", "AuthenticationConfiguration"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ac, err := authn.LoadConfig([]byte(tc.yaml))
			if err == nil {
				_, err = authn.New(t.Context(), authn.Config{Authentication: ac})
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

func TestServiceAccountPassthrough(t *testing.T) {
	is := newIssuer(t)
	oidcAuthn := newAuthn(t, configYAML(is, "cluster-a", "oidc:"))
	const saIssuer = "https://kubernetes.default.svc.cluster.local"
	a := authn.ServiceAccountPassthrough([]string{saIssuer}, 0, oidcAuthn)
	// Signed by a key the agent cannot check: the API server will.
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sa := signWith(t, jose.SigningKey{Algorithm: jose.ES256, Key: other}, "sa", map[string]any{"iss": saIssuer, "sub": "system:serviceaccount:ci:deployer"})
	res, err := a.AuthenticateToken(t.Context(), sa)
	if err != nil || !res.Passthrough || res.Identity.User != "system:serviceaccount:ci:deployer" {
		t.Fatalf("service-account token: %+v, %v; want passthrough", res, err)
	}
	notSA := signWith(t, jose.SigningKey{Algorithm: jose.ES256, Key: other}, "sa", map[string]any{"iss": saIssuer, "sub": "alice"})
	if _, err := a.AuthenticateToken(t.Context(), notSA); err == nil {
		t.Fatal("a token of the service-account issuer naming no service account passed")
	}
	res, err = a.AuthenticateToken(t.Context(), is.sign(t, is.claims("cluster-a", nil)))
	if err != nil || res.Passthrough || res.Identity.User != "oidc:alice-sub" {
		t.Fatalf("OIDC token: %+v, %v; want impersonation", res, err)
	}
	if _, err := a.AuthenticateToken(t.Context(), strings.Repeat(".", 50000)); err == nil {
		t.Fatal("a token of dots passed")
	}
}

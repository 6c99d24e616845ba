package console

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/tether-k8s/tether/core/authn"
	"github.com/tether-k8s/tether/core/identity"
)

// testOP is an OpenID provider for the handler tests: discovery, keys,
// an authorize endpoint that approves at once (redirecting to the
// callback with a code), and a token endpoint that checks the code, its
// redirect URI and the PKCE verifier against the challenge. claims, when
// set, changes the ID token's claims; state, the state sent back.
type testOP struct {
	srv *httptest.Server
	key *ecdsa.PrivateKey

	mu     sync.Mutex
	codes  map[string]url.Values // code → the authorize request
	claims func(c map[string]any)
	state  string
	// exchanged counts the token endpoint's successful answers.
	exchanged atomic.Int32
}

func newTestOP(t *testing.T) *testOP {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	op := &testOP{key: key, codes: map[string]url.Values{}}
	mux := http.NewServeMux()
	op.srv = httptest.NewUnstartedServer(mux)
	op.srv.StartTLS()
	t.Cleanup(op.srv.Close)
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		u := op.srv.URL
		_ = json.NewEncoder(w).Encode(map[string]any{"issuer": u, "jwks_uri": u + "/jwks", "authorization_endpoint": u + "/authorize",
			"token_endpoint": u + "/token", "id_token_signing_alg_values_supported": []string{"ES256"}})
	})
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	})
	mux.HandleFunc("GET /authorize", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("response_type") != "code" || q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" || q.Get("nonce") == "" {
			http.Error(w, "want a code request with PKCE S256 and a nonce", http.StatusBadRequest)
			return
		}
		code := randomString(16)
		op.mu.Lock()
		op.codes[code] = q
		state := q.Get("state")
		if op.state != "" {
			state = op.state
		}
		op.mu.Unlock()
		http.Redirect(w, r, q.Get("redirect_uri")+"?"+url.Values{"code": {code}, "state": {state}}.Encode(), http.StatusFound)
	})
	mux.HandleFunc("POST /token", func(w http.ResponseWriter, r *http.Request) {
		op.mu.Lock()
		q, ok := op.codes[r.FormValue("code")]
		delete(op.codes, r.FormValue("code"))
		mod := op.claims
		op.mu.Unlock()
		if !ok || r.FormValue("redirect_uri") != q.Get("redirect_uri") || r.FormValue("client_id") != q.Get("client_id") ||
			s256(r.FormValue("code_verifier")) != q.Get("code_challenge") {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, `{"error":"invalid_grant"}`)
			return
		}
		now := time.Now()
		c := map[string]any{"iss": op.srv.URL, "sub": "alice", "aud": []string{q.Get("client_id")}, "azp": q.Get("client_id"),
			"nonce": q.Get("nonce"), "groups": []string{"team-a"}, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
		if mod != nil {
			mod(c)
		}
		op.exchanged.Add(1)
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": "at", "token_type": "Bearer", "id_token": op.sign(t, c)})
	})
	return op
}

func (op *testOP) sign(t *testing.T, claims map[string]any) string {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: op.key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "k1"))
	if err != nil {
		t.Error(err)
		return ""
	}
	payload, _ := json.Marshal(claims)
	jws, err := signer.Sign(payload)
	if err != nil {
		t.Error(err)
		return ""
	}
	tok, _ := jws.CompactSerialize()
	return tok
}

// authenticator is the relay's real one (core/authn) for the test OP:
// audiences tether (the console's client), tether:relay and
// tether:cluster:prod, users oidc:SUB, groups oidc:GROUP.
func (op *testOP) authenticator(t *testing.T) identity.Authenticator {
	t.Helper()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: op.srv.Certificate().Raw})
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimSpace(string(ca)), "\n") {
		b.WriteString("      " + l + "\n")
	}
	ac, err := authn.LoadConfig(fmt.Appendf(nil, `apiVersion: apiserver.config.k8s.io/v1
kind: AuthenticationConfiguration
jwt:
- issuer:
    url: %s
    audiences: [tether, "tether:relay", "tether:cluster:prod"]
    audienceMatchPolicy: MatchAny
    certificateAuthority: |
%s  claimMappings:
    username: {claim: sub, prefix: "oidc:"}
    groups: {claim: groups, prefix: "oidc:"}
`, op.srv.URL, b.String()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := authn.New(ctx, authn.Config{Authentication: ac})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); a.Close() })
	if err := a.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return a
}

// source is the relay's side for the handler tests: prod admits
// oidc:team-a; staging admits no one; oidc:admins are admins.
type source struct{}

func (source) Reachable(_ context.Context, who identity.Result) ([]Cluster, error) {
	if c, err := (source{}).Reach(context.Background(), who, "prod"); err == nil {
		return []Cluster{c}, nil
	}
	return []Cluster{}, nil
}

func (source) Reach(_ context.Context, who identity.Result, id string) (Cluster, error) {
	if id == "prod" && contains(who.Identity.Groups, "oidc:team-a") {
		return Cluster{ID: "prod", Sessions: 2, Agents: []string{"tether-agent v1.2.3"}}, nil
	}
	return Cluster{}, &RefusedError{Cluster: id, Why: "no grant of this relay admits you to it (or it does not exist)"}
}

func (source) IsAdmin(who identity.Result) bool { return contains(who.Identity.Groups, "oidc:admins") }
func (source) Grants(context.Context) ([]Grant, error) {
	return []Grant{{Cluster: "prod", Groups: []string{"oidc:team-a"}}, {Cluster: "staging"}}, nil
}
func (source) Audit() []AuditLine {
	return []AuditLine{{Time: time.Unix(1e9, 0), Message: "relay: tunnel", Attrs: []string{"cluster=prod", "user=oidc:alice"}}}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// harness is a console behind TLS with the test OP, and a browser-like
// client (a cookie jar) that follows redirects by hand so each answer can
// be checked.
type harness struct {
	t       *testing.T
	op      *testOP
	console *Console
	url     string
	now     atomic.Pointer[time.Time]
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{t: t, op: newTestOP(t)}
	srv := httptest.NewUnstartedServer(nil)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	h.url = srv.URL
	c, err := New(Config{Issuer: h.op.srv.URL, ClientID: "tether", RedirectURL: srv.URL + CallbackPath,
		Authenticator: h.op.authenticator(t), Source: source{}, HTTPClient: h.op.srv.Client(),
		RefusedAudience: func(aud []string) error {
			for _, a := range aud {
				if strings.HasPrefix(a, "tether:cluster:") {
					return fmt.Errorf("it is for %s, a cluster's audience", a)
				}
			}
			return nil
		},
		Now: func() time.Time {
			if p := h.now.Load(); p != nil {
				return *p
			}
			return time.Now()
		}})
	if err != nil {
		t.Fatal(err)
	}
	h.console = c
	srv.Config.Handler = c
	return h
}

// browser is one browser: its own cookies.
type browser struct {
	h      *harness
	client *http.Client
}

func (h *harness) browser() *browser {
	jar, _ := cookiejar.New(nil)
	c := h.op.srv.Client() // the httptest certificate is the same for both servers
	c.Jar = jar
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &browser{h: h, client: c}
}

type answer struct {
	status int
	header http.Header
	body   string
	url    string
}

func (b *browser) do(method, u string, form url.Values, header map[string]string) answer {
	b.h.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		b.h.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := b.client.Do(req)
	if err != nil {
		b.h.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, header: resp.Header, body: string(raw), url: u}
}

func (b *browser) get(u string) answer { return b.do(http.MethodGet, u, nil, nil) }

// signIn goes from /ui/login through the OP to the callback and returns
// every answer on the way, the callback's last.
func (b *browser) signIn() []answer {
	b.h.t.Helper()
	var out []answer
	u := b.h.url + "/ui/login"
	for range 5 {
		a := b.get(u)
		out = append(out, a)
		loc := a.header.Get("Location")
		if a.status/100 != 3 || loc == "" || strings.HasSuffix(u, CallbackPath) || strings.Contains(u, CallbackPath+"?") {
			return out
		}
		next, err := url.Parse(loc)
		if err != nil {
			b.h.t.Fatal(err)
		}
		base, _ := url.Parse(u)
		u = base.ResolveReference(next).String()
	}
	return out
}

func last(as []answer) answer { return as[len(as)-1] }

func checkHeaders(t *testing.T, a answer) {
	t.Helper()
	for k, want := range map[string]string{
		"Content-Security-Policy": "default-src 'self'", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
		"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
	} {
		if got := a.header.Get(k); !strings.Contains(got, want) {
			t.Errorf("%s: %s = %q, want %q", a.url, k, got, want)
		}
	}
}

// TestSignIn: the whole code flow, the cookies it sets, the pages a
// signed-in user sees, and sign-out.
func TestSignIn(t *testing.T) {
	h := newHarness(t)
	b := h.browser()
	if a := b.get(h.url + "/ui/"); a.status != http.StatusOK || !strings.Contains(a.body, `href="/ui/login"`) {
		t.Fatalf("signed out, /ui/: %d %s", a.status, a.body)
	}
	steps := b.signIn()
	login, cb := steps[0], last(steps)
	if login.status != http.StatusFound || !strings.HasPrefix(login.header.Get("Location"), h.op.srv.URL+"/authorize?") {
		t.Fatalf("login: %d %v", login.status, login.header)
	}
	auth, _ := url.Parse(login.header.Get("Location"))
	for k, want := range map[string]string{"client_id": "tether", "redirect_uri": h.url + CallbackPath, "code_challenge_method": "S256", "response_type": "code"} {
		if got := auth.Query().Get(k); got != want {
			t.Errorf("authorize %s = %q, want %q", k, got, want)
		}
	}
	if cb.status != http.StatusSeeOther || cb.header.Get("Location") != Path {
		t.Fatalf("callback: %d %s", cb.status, cb.body)
	}
	var session *http.Cookie
	for _, a := range []answer{login, cb} {
		checkHeaders(t, a)
		for _, raw := range a.header.Values("Set-Cookie") {
			for _, attr := range []string{"HttpOnly", "Secure", "SameSite=Lax", "Path=/"} {
				if !strings.Contains(raw, attr) {
					t.Errorf("Set-Cookie %q lacks %s", raw, attr)
				}
			}
		}
	}
	for _, c := range (&http.Response{Header: cb.header}).Cookies() {
		if c.Name == sessionCookie && c.MaxAge > 0 {
			session = c
		}
	}
	if session == nil || len(session.Value) < 40 || strings.Count(session.Value, ".") == 2 {
		t.Fatalf("no session cookie of random bytes (never a token): %v", cb.header.Values("Set-Cookie"))
	}

	home := b.get(h.url + "/ui/")
	checkHeaders(t, home)
	for _, want := range []string{"oidc:alice", `href="/ui/clusters/prod"`, "connected", "tether-agent v1.2.3",
		"tether-proxy kubeconfig --relay " + h.url + " --cluster prod", "kubectl --context tether-prod"} {
		if !strings.Contains(home.body, want) {
			t.Errorf("the list lacks %q:\n%s", want, home.body)
		}
	}
	if strings.Contains(home.body, "<script") || strings.Contains(home.body, "Administration") {
		t.Errorf("a script, or the admin link for a non-admin:\n%s", home.body)
	}
	if a := b.get(h.url + "/ui/clusters/prod"); a.status != http.StatusOK || !strings.Contains(a.body, "--cluster prod") {
		t.Errorf("prod: %d %s", a.status, a.body)
	}
	for _, id := range []string{"staging", "nope", "..%2fprod"} {
		a := b.get(h.url + "/ui/clusters/" + id)
		if a.status != http.StatusForbidden || !strings.Contains(a.body, "may not reach cluster") || !strings.Contains(a.body, "tether-relay cluster grant") {
			t.Errorf("%s: %d %s", id, a.status, a.body)
		}
	}
	if a := b.get(h.url + "/ui/admin"); a.status != http.StatusForbidden || strings.Contains(a.body, "staging") {
		t.Errorf("admin page for a non-admin: %d %s", a.status, a.body)
	}
	if a := b.get(h.url + "/ui/static/console.css"); a.status != http.StatusOK || !strings.HasPrefix(a.header.Get("Content-Type"), "text/css") {
		t.Errorf("CSS: %d %v", a.status, a.header)
	}
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
		if a := b.do(m, h.url+"/ui/", url.Values{}, nil); a.status != http.StatusMethodNotAllowed {
			t.Errorf("%s /ui/: %d, want 405 (read-only)", m, a.status)
		}
	}

	// Sign-out: only with the session's form token, from this origin.
	csrf := between(home.body, `name="csrf" value="`, `"`)
	for name, tc := range map[string]struct {
		form   url.Values
		header map[string]string
	}{
		"no form token":    {url.Values{}, nil},
		"wrong form token": {url.Values{"csrf": {"x" + csrf}}, nil},
		"another origin":   {url.Values{"csrf": {csrf}}, map[string]string{"Origin": "https://evil.example"}},
		"cross-site fetch": {url.Values{"csrf": {csrf}}, map[string]string{"Sec-Fetch-Site": "cross-site"}},
	} {
		if a := b.do(http.MethodPost, h.url+"/ui/logout", tc.form, tc.header); a.status != http.StatusForbidden {
			t.Errorf("logout, %s: %d, want 403", name, a.status)
		}
	}
	if a := b.get(h.url + "/ui/clusters/prod"); a.status != http.StatusOK {
		t.Fatalf("a refused logout ended the session: %d", a.status)
	}
	if a := b.do(http.MethodPost, h.url+"/ui/logout", url.Values{"csrf": {csrf}}, map[string]string{"Origin": h.url, "Sec-Fetch-Site": "same-origin"}); a.status != http.StatusSeeOther {
		t.Fatalf("logout: %d %s", a.status, a.body)
	}
	if a := b.get(h.url + "/ui/clusters/prod"); a.status != http.StatusUnauthorized {
		t.Errorf("after logout: %d", a.status)
	}
	// The old cookie, replayed by another browser, is dead too.
	other := h.browser()
	u, _ := url.Parse(h.url)
	other.client.Jar.SetCookies(u, []*http.Cookie{session})
	if a := other.get(h.url + "/ui/clusters/prod"); a.status != http.StatusUnauthorized {
		t.Errorf("the signed-out session's cookie replayed: %d", a.status)
	}
}

func between(s, from, to string) string {
	_, after, ok := strings.Cut(s, from)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(after, to)
	return v
}

// TestAdminPage: an admin sees the grants and the audit lines.
func TestAdminPage(t *testing.T) {
	h := newHarness(t)
	h.op.claims = func(c map[string]any) { c["groups"] = []string{"team-a", "admins"} }
	b := h.browser()
	if a := last(b.signIn()); a.status != http.StatusSeeOther {
		t.Fatalf("sign-in: %d %s", a.status, a.body)
	}
	a := b.get(h.url + "/ui/admin")
	for _, want := range []string{"staging", "oidc:team-a", "cluster=prod", "user=oidc:alice", "2001-09-09T01:46:40Z"} {
		if !strings.Contains(a.body, want) {
			t.Errorf("admin page lacks %q: %d\n%s", want, a.status, a.body)
		}
	}
	if home := b.get(h.url + "/ui/"); !strings.Contains(home.body, `href="/ui/admin"`) {
		t.Error("no admin link for an admin")
	}
}

// TestSignInRefusals: each way a callback must fail, and what the person
// is told; none leaves a session.
func TestSignInRefusals(t *testing.T) {
	tests := []struct {
		name   string
		claims func(c map[string]any)
		state  string
		status int
		want   string
	}{
		{name: "bad state (a callback for another sign-in)", state: "forged", status: http.StatusBadRequest, want: "state does not match"},
		{name: "bad nonce (a token of another sign-in)", claims: func(c map[string]any) { c["nonce"] = "another" }, status: http.StatusUnauthorized, want: "nonce"},
		{name: "no nonce", claims: func(c map[string]any) { delete(c, "nonce") }, status: http.StatusUnauthorized, want: "nonce"},
		{name: "expired token", claims: func(c map[string]any) { c["exp"] = time.Now().Add(-time.Minute).Unix() }, status: http.StatusUnauthorized, want: "expired"},
		{name: "not yet valid", claims: func(c map[string]any) { c["nbf"] = time.Now().Add(time.Hour).Unix() }, status: http.StatusUnauthorized, want: "refused"},
		{name: "wrong audience (the relay's: accepted by the authenticator, not the console's client)",
			claims: func(c map[string]any) { c["aud"] = []string{"tether:relay"}; delete(c, "azp") }, status: http.StatusForbidden, want: "not for the console&#39;s client tether"},
		{name: "wrong audience (one the relay accepts from no one)", claims: func(c map[string]any) { c["aud"] = []string{"elsewhere"} }, status: http.StatusUnauthorized, want: "refused"},
		{name: "a cluster's audience beside the console's", claims: func(c map[string]any) { c["aud"] = []string{"tether", "tether:cluster:prod"} },
			status: http.StatusForbidden, want: "a cluster&#39;s audience"},
		{name: "issued to another client (azp)", claims: func(c map[string]any) { c["azp"] = "other-app" }, status: http.StatusForbidden, want: "other-app"},
		{name: "another issuer's token signed with this key", claims: func(c map[string]any) { c["iss"] = "https://evil.example" }, status: http.StatusUnauthorized, want: "refused"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.op.claims, h.op.state = tc.claims, tc.state
			b := h.browser()
			a := last(b.signIn())
			checkHeaders(t, a)
			if a.status != tc.status || !strings.Contains(a.body, tc.want) {
				t.Errorf("callback: %d, want %d with %q:\n%s", a.status, tc.status, tc.want, a.body)
			}
			if strings.Contains(a.header.Get("Set-Cookie"), sessionCookie+"=") && !strings.Contains(a.header.Get("Set-Cookie"), "Max-Age=0") {
				t.Errorf("a refused sign-in set a session: %v", a.header.Values("Set-Cookie"))
			}
			if a := b.get(h.url + "/ui/clusters/prod"); a.status != http.StatusUnauthorized {
				t.Errorf("after a refused sign-in: %d", a.status)
			}
		})
	}
}

// TestCallbackWithoutSignIn: a callback no sign-in of this browser
// started, a replayed one, a forged login cookie, and one that took too
// long are refused before the code is exchanged.
func TestCallbackWithoutSignIn(t *testing.T) {
	h := newHarness(t)
	b := h.browser()
	if a := b.get(h.url + CallbackPath + "?code=abc&state=xyz"); a.status != http.StatusBadRequest || !strings.Contains(a.body, "No sign-in is in progress") {
		t.Errorf("no login cookie: %d %s", a.status, a.body)
	}
	u, _ := url.Parse(h.url)
	b.client.Jar.SetCookies(u, []*http.Cookie{{Name: loginCookie, Value: "Zm9yZ2VkLWNvb2tpZS12YWx1ZS1mb3JnZWQtY29va2ll", Path: "/", Secure: true}})
	if a := b.get(h.url + CallbackPath + "?code=abc&state=xyz"); a.status != http.StatusBadRequest || !strings.Contains(a.body, "not started by this relay") {
		t.Errorf("forged login cookie: %d %s", a.status, a.body)
	}
	// A sign-in that completes, then its callback replayed.
	b2 := h.browser()
	steps := b2.signIn()
	if last(steps).status != http.StatusSeeOther {
		t.Fatalf("sign-in: %d", last(steps).status)
	}
	if a := b2.get(steps[len(steps)-1].url); a.status != http.StatusBadRequest {
		t.Errorf("the callback replayed: %d %s", a.status, a.body)
	}
	// A sign-in that takes longer than LoginTimeout.
	b3 := h.browser()
	login := b3.get(h.url + "/ui/login")
	authz := b3.get(login.header.Get("Location"))
	later := time.Now().Add(LoginTimeout + time.Second)
	h.now.Store(&later)
	if a := b3.get(authz.header.Get("Location")); a.status != http.StatusBadRequest || !strings.Contains(a.body, "took more than") {
		t.Errorf("a slow sign-in: %d %s", a.status, a.body)
	}
	if n := h.op.exchanged.Load(); n != 1 {
		t.Errorf("the token endpoint answered %d exchanges, want the one sign-in's", n)
	}
}

// TestSessionEndsWithToken: a session lasts as long as the ID token.
func TestSessionEndsWithToken(t *testing.T) {
	h := newHarness(t)
	exp := time.Now().Add(2 * time.Minute)
	h.op.claims = func(c map[string]any) { c["exp"] = exp.Unix() }
	b := h.browser()
	if a := last(b.signIn()); a.status != http.StatusSeeOther {
		t.Fatalf("sign-in: %d %s", a.status, a.body)
	}
	if a := b.get(h.url + "/ui/clusters/prod"); a.status != http.StatusOK {
		t.Fatalf("before exp: %d", a.status)
	}
	after := exp.Add(time.Second)
	h.now.Store(&after)
	if a := b.get(h.url + "/ui/clusters/prod"); a.status != http.StatusUnauthorized || !strings.Contains(a.body, "session has ended") {
		t.Errorf("after exp: %d %s", a.status, a.body)
	}
	if a := b.get(h.url + "/ui/"); !strings.Contains(a.body, `href="/ui/login"`) {
		t.Errorf("after exp, /ui/ does not offer to sign in: %s", a.body)
	}
}

// TestNoSession: every page but the sign-in ones asks to sign in (401).
func TestNoSession(t *testing.T) {
	h := newHarness(t)
	b := h.browser()
	for _, p := range []string{"/ui/clusters/prod", "/ui/admin"} {
		a := b.get(h.url + p)
		checkHeaders(t, a)
		if a.status != http.StatusUnauthorized || !strings.Contains(a.body, `href="/ui/login"`) || strings.Contains(a.body, "tether-proxy kubeconfig") {
			t.Errorf("%s: %d %s", p, a.status, a.body)
		}
	}
	if a := b.do(http.MethodPost, h.url+"/ui/logout", url.Values{}, nil); a.status != http.StatusUnauthorized {
		t.Errorf("logout without a session: %d", a.status)
	}
	if a := b.get(h.url + "/ui"); a.status != http.StatusMovedPermanently || a.header.Get("Location") != Path {
		t.Errorf("/ui: %d %v", a.status, a.header)
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Config{Issuer: "https://op", ClientID: "tether", RedirectURL: "https://relay:8443/ui/callback", Authenticator: noAuth{}, Source: source{}}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*Config){
		"http redirect":    func(c *Config) { c.RedirectURL = "http://relay:8443/ui/callback" },
		"other path":       func(c *Config) { c.RedirectURL = "https://relay:8443/callback" },
		"query":            func(c *Config) { c.RedirectURL = "https://relay:8443/ui/callback?x=1" },
		"http issuer":      func(c *Config) { c.Issuer = "http://op" },
		"no client":        func(c *Config) { c.ClientID = "" },
		"no authenticator": func(c *Config) { c.Authenticator = nil },
	} {
		c := ok
		mod(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

type noAuth struct{}

func (noAuth) AuthenticateToken(context.Context, string) (identity.Result, error) {
	return identity.Result{}, fmt.Errorf("no")
}

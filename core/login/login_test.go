package login

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// fakeOP is an OpenID provider on httptest, enough of one for the client's
// flows; the real one (fixtures/op) is what the e2e specs use.
type fakeOP struct {
	t   *testing.T
	srv *httptest.Server
	key *rsa.PrivateKey

	mu sync.Mutex
	// device is what the token endpoint answers to successive device
	// polls: an RFC 8628 error code, or "ok".
	device      []string
	devicePolls int
	// codes are authorization codes given out, with their PKCE challenge.
	codes map[string]string
	// redirectState, when set, replaces the state of the next redirect.
	redirectState string
	refresh       map[string]string // valid refresh token -> subject
	refreshUses   int
	refreshDelay  time.Duration
	revoked       []string
	revokeStatus  int
	ttl           time.Duration
	n             int
	// clock is the provider's clock, the one the clients under test use.
	clock *clock
	// discovery, when set, edits the discovery document; userCode and
	// verificationURI, when set, replace the device flow's.
	discovery                 func(map[string]any)
	userCode, verificationURI string
	// exchanges counts token exchanges; exchangeAud, when set, replaces
	// the audience of exchanged tokens; exchangeSub their subject.
	exchanges                int
	exchangeAud, exchangeSub string
}

func newFakeOP(t *testing.T) *fakeOP {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	op := &fakeOP{t: t, key: key, codes: map[string]string{}, refresh: map[string]string{}, ttl: 10 * time.Minute, revokeStatus: http.StatusOK,
		clock: &clock{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		u := op.srv.URL
		doc := map[string]any{"issuer": u, "authorization_endpoint": u + "/authorize",
			"token_endpoint": u + "/token", "device_authorization_endpoint": u + "/device_authorization",
			"jwks_uri": u + "/jwks", "revocation_endpoint": u + "/revoke"}
		if op.discovery != nil {
			op.discovery(doc)
		}
		_ = json.NewEncoder(w).Encode(doc)
	})
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "RS256", Use: "sig"}}})
	})
	mux.HandleFunc("POST /device_authorization", func(w http.ResponseWriter, r *http.Request) {
		if r.FormValue("client_id") != "tether" {
			http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
			return
		}
		code, uri := "ABCD-EFGH", op.srv.URL+"/device"
		if op.userCode != "" {
			code, uri = op.userCode, op.verificationURI
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"device_code": "dev-code", "user_code": code,
			"verification_uri": uri, "interval": 1, "expires_in": 60})
	})
	mux.HandleFunc("GET /authorize", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" {
			http.Error(w, "PKCE S256 required", http.StatusBadRequest)
			return
		}
		op.mu.Lock()
		op.n++
		code := fmt.Sprintf("code-%d", op.n)
		op.codes[code] = q.Get("code_challenge")
		state := q.Get("state")
		if op.redirectState != "" {
			state, op.redirectState = op.redirectState, ""
		}
		op.mu.Unlock()
		http.Redirect(w, r, q.Get("redirect_uri")+"?"+url.Values{"code": {code}, "state": {state}}.Encode(), http.StatusFound)
	})
	mux.HandleFunc("POST /token", op.token)
	mux.HandleFunc("POST /revoke", func(w http.ResponseWriter, r *http.Request) {
		op.mu.Lock()
		defer op.mu.Unlock()
		op.revoked = append(op.revoked, r.FormValue("token"))
		delete(op.refresh, r.FormValue("token"))
		w.WriteHeader(op.revokeStatus)
	})
	op.srv = httptest.NewTLSServer(mux)
	t.Cleanup(op.srv.Close)
	return op
}

func (op *fakeOP) caPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: op.srv.Certificate().Raw})
}

func oauthError(w http.ResponseWriter, code string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code})
}

// sign signs claims as the provider (op.mu held).
func (op *fakeOP) sign(claims map[string]any) string {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: op.key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "k1"))
	if err != nil {
		op.t.Error(err)
		return ""
	}
	tok, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		op.t.Error(err)
	}
	return tok
}

// exchange answers a token exchange (RFC 8693) of a login's ID token for
// an ID token for the requested audience (op.mu held).
func (op *fakeOP) exchange(w http.ResponseWriter, r *http.Request) {
	if id, secret, ok := r.BasicAuth(); !ok || id != "tether" || secret != "" {
		oauthError(w, "invalid_client")
		return
	}
	var c map[string]any
	parts := strings.Split(r.FormValue("subject_token"), ".")
	if len(parts) != 3 || r.FormValue("subject_token_type") != "urn:ietf:params:oauth:token-type:id_token" ||
		r.FormValue("requested_token_type") != "urn:ietf:params:oauth:token-type:id_token" {
		oauthError(w, "invalid_request")
		return
	}
	b, _ := base64.RawURLEncoding.DecodeString(parts[1])
	_ = json.Unmarshal(b, &c)
	aud, sub := r.FormValue("audience"), c["sub"]
	if op.exchangeAud != "" {
		aud = op.exchangeAud
	}
	if op.exchangeSub != "" {
		sub = op.exchangeSub
	}
	op.exchanges++
	now := op.clock.now()
	tok := op.sign(map[string]any{"iss": op.srv.URL, "sub": sub, "aud": []string{aud, "tether"}, "azp": "tether",
		"iat": now.Unix(), "exp": now.Add(op.ttl).Unix(), "groups": []string{"team-a"}})
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"access_token": tok, "issued_token_type": "urn:ietf:params:oauth:token-type:id_token",
		"token_type": "N_A", "expires_in": int(op.ttl.Seconds())})
}

// issue answers a token response for subject (op.mu held).
func (op *fakeOP) issue(w http.ResponseWriter, subject string) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: op.key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "k1"))
	if err != nil {
		op.t.Error(err)
		return
	}
	now := op.clock.now()
	op.n++
	idt, err := jwt.Signed(signer).Claims(map[string]any{"iss": op.srv.URL, "sub": subject, "aud": []string{"tether"}, "jti": fmt.Sprint(op.n),
		"iat": now.Unix(), "exp": now.Add(op.ttl).Unix(), "email": subject + "@example.com", "groups": []string{"team-a"}}).Serialize()
	if err != nil {
		op.t.Error(err)
		return
	}
	op.n++
	rt := fmt.Sprintf("refresh-%d", op.n)
	op.refresh[rt] = subject
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"access_token": "at", "token_type": "Bearer", "expires_in": int(op.ttl.Seconds()),
		"id_token": idt, "refresh_token": rt})
}

func (op *fakeOP) token(w http.ResponseWriter, r *http.Request) {
	if r.FormValue("grant_type") == "urn:ietf:params:oauth:grant-type:token-exchange" {
		op.mu.Lock()
		defer op.mu.Unlock()
		op.exchange(w, r)
		return
	}
	if r.FormValue("client_id") != "tether" {
		oauthError(w, "invalid_client")
		return
	}
	op.mu.Lock()
	defer op.mu.Unlock()
	switch r.FormValue("grant_type") {
	case "urn:ietf:params:oauth:grant-type:device_code":
		if r.FormValue("device_code") != "dev-code" {
			oauthError(w, "invalid_grant")
			return
		}
		answer := "authorization_pending"
		if op.devicePolls < len(op.device) {
			answer = op.device[op.devicePolls]
		}
		op.devicePolls++
		if answer != "ok" {
			oauthError(w, answer)
			return
		}
		op.issue(w, "alice")
	case "authorization_code":
		challenge, ok := op.codes[r.FormValue("code")]
		delete(op.codes, r.FormValue("code"))
		sum := sha256.Sum256([]byte(r.FormValue("code_verifier")))
		if !ok || base64.RawURLEncoding.EncodeToString(sum[:]) != challenge {
			oauthError(w, "invalid_grant")
			return
		}
		op.issue(w, "alice")
	case "refresh_token":
		rt := r.FormValue("refresh_token")
		subject, ok := op.refresh[rt]
		if !ok {
			oauthError(w, "invalid_grant")
			return
		}
		op.refreshUses++
		time.Sleep(op.refreshDelay)
		delete(op.refresh, rt) // rotating refresh tokens: each is spent once
		op.issue(w, subject)
	default:
		oauthError(w, "unsupported_grant_type")
	}
}

// clock is a settable clock for Config.Now.
type clock struct {
	mu  sync.Mutex
	off time.Duration
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return time.Now().Add(c.off) }
func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.off += d
	c.mu.Unlock()
}

func newClient(t *testing.T, op *fakeOP, dir string, clk *clock, out io.Writer) *Client {
	t.Helper()
	cfg := Config{Issuer: op.srv.URL, ClientID: "tether", IssuerCA: op.caPEM(), CacheDir: dir, Out: out,
		LoginCommand: "tether-proxy login --relay https://relay.example"}
	if clk != nil {
		cfg.Now = clk.now
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// deviceLogin logs alice in with the device flow (approved at the first
// poll).
func deviceLogin(t *testing.T, c *Client, op *fakeOP) *Entry {
	t.Helper()
	op.mu.Lock()
	op.device, op.devicePolls = []string{"ok"}, 0
	op.mu.Unlock()
	e, err := c.DeviceLogin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestDeviceFlow(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		answers []string
		wantErr error
		polls   int
	}{
		{name: "pending, slow_down, then approved", answers: []string{"authorization_pending", "slow_down", "ok"}, polls: 3},
		{name: "denied", answers: []string{"authorization_pending", "access_denied"}, wantErr: ErrDenied, polls: 2},
		{name: "code expired", answers: []string{"expired_token"}, wantErr: ErrCodeExpired, polls: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			op := newFakeOP(t)
			op.device = tc.answers
			var out strings.Builder
			c := newClient(t, op, t.TempDir(), nil, &out)
			start := time.Now()
			e, err := c.DeviceLogin(t.Context())
			took := time.Since(start)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("DeviceLogin: %v, want %v", err, tc.wantErr)
				}
				if _, err := os.Stat(c.CachePath()); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("a failed login left a cache file: %v", err)
				}
			} else {
				if err != nil {
					t.Fatalf("DeviceLogin: %v", err)
				}
				if e.Subject != "alice" || e.RefreshToken == "" {
					t.Errorf("entry: subject %q, refresh token given %v", e.Subject, e.RefreshToken != "")
				}
				// slow_down adds 5 s to the 1 s interval (RFC 8628 3.5).
				if took < 7*time.Second {
					t.Errorf("the login took %s: slow_down was not honoured", took)
				}
			}
			if op.devicePolls != tc.polls {
				t.Errorf("token endpoint polled %d times, want %d", op.devicePolls, tc.polls)
			}
			if !strings.Contains(out.String(), "Open "+op.srv.URL+"/device and enter ABCD-EFGH") {
				t.Errorf("progress does not say what to open and enter:\n%s", out.String())
			}
		})
	}
}

func TestBrowserFlowRefusesStateMismatch(t *testing.T) {
	t.Parallel()
	op := newFakeOP(t)
	op.redirectState = "forged-state"
	browser := op.srv.Client() // trusts the OP, follows its redirect to the loopback callback
	var statuses []int
	var out strings.Builder
	cfg := Config{Issuer: op.srv.URL, ClientID: "tether", IssuerCA: op.caPEM(), CacheDir: t.TempDir(), Out: &out,
		OpenBrowser: func(u string) error {
			// The first answer carries a forged state, the second the
			// real one.
			for range 2 {
				resp, err := browser.Get(u)
				if err != nil {
					return err
				}
				statuses = append(statuses, resp.StatusCode)
				resp.Body.Close()
			}
			return nil
		}}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e, err := c.BrowserLogin(t.Context())
	if err != nil {
		t.Fatalf("BrowserLogin: %v", err)
	}
	if fmt.Sprint(statuses) != "[400 200]" {
		t.Errorf("callback statuses %v, want [400 200]: the forged state must be refused", statuses)
	}
	if e.Subject != "alice" {
		t.Errorf("subject %q", e.Subject)
	}
	if !strings.Contains(out.String(), "state does not match") || !strings.Contains(out.String(), op.srv.URL+"/authorize?") {
		t.Errorf("progress:\n%s", out.String())
	}
}

func TestBrowserFlowOnlyForgedAnswerNeverLogsIn(t *testing.T) {
	t.Parallel()
	op := newFakeOP(t)
	op.redirectState = "forged-state"
	browser := op.srv.Client()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	status := 0
	c, err := New(Config{Issuer: op.srv.URL, ClientID: "tether", IssuerCA: op.caPEM(), CacheDir: t.TempDir(),
		OpenBrowser: func(u string) error {
			resp, err := browser.Get(u)
			if err != nil {
				return err
			}
			status = resp.StatusCode
			return resp.Body.Close()
		}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.BrowserLogin(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("BrowserLogin with only a forged answer: %v, want it still waiting at the deadline", err)
	}
	if status != http.StatusBadRequest {
		t.Errorf("forged callback answered %d", status)
	}
	if _, err := os.Stat(c.CachePath()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cache file after a refused login: %v", err)
	}
}

func TestRefresh(t *testing.T) {
	t.Parallel()
	op := newFakeOP(t)
	clk := op.clock
	dir := t.TempDir()
	c := newClient(t, op, dir, clk, nil)
	first := deviceLogin(t, c, op)

	tok, err := c.Token(t.Context())
	if err != nil || tok != first.IDToken {
		t.Fatalf("Token right after login: err %v, same token %v", err, tok == first.IDToken)
	}
	if op.refreshUses != 0 {
		t.Fatalf("a fresh token was refreshed")
	}
	// 10 minute tokens are renewed in their last minute.
	clk.advance(9*time.Minute + 30*time.Second)
	tok, err = c.Token(t.Context())
	if err != nil {
		t.Fatalf("Token near expiry: %v", err)
	}
	if tok == first.IDToken || op.refreshUses != 1 {
		t.Fatalf("near expiry: new token %v, refreshes %d", tok != first.IDToken, op.refreshUses)
	}
	// The renewal is in the cache, for the next process.
	e, err := (Cache{Dir: dir}).Load(op.srv.URL, "tether")
	if err != nil || e.IDToken != tok || e.RefreshToken == first.RefreshToken {
		t.Fatalf("cache after refresh: err %v, token cached %v, refresh token rotated %v", err, e != nil && e.IDToken == tok, e != nil && e.RefreshToken != first.RefreshToken)
	}
}

func TestRefreshFailure(t *testing.T) {
	t.Parallel()
	op := newFakeOP(t)
	clk := op.clock
	c := newClient(t, op, t.TempDir(), clk, nil)
	e := deviceLogin(t, c, op)
	op.mu.Lock()
	delete(op.refresh, e.RefreshToken) // revoked at the provider
	op.mu.Unlock()

	// Still valid: the current token is used, the renewal tried later.
	clk.advance(9*time.Minute + 30*time.Second)
	if tok, err := c.Token(t.Context()); err != nil || tok != e.IDToken {
		t.Fatalf("valid token, failed renewal: err %v", err)
	}
	// Expired: the error says so, and how to log in again.
	clk.advance(time.Minute)
	_, err := c.Token(t.Context())
	if !errors.Is(err, ErrLoginExpired) {
		t.Fatalf("expired login: %v, want ErrLoginExpired", err)
	}
	for _, want := range []string{"log in again with: tether-proxy login --relay https://relay.example", "invalid_grant", "alice@example.com"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if strings.Contains(err.Error(), e.IDToken) || strings.Contains(err.Error(), e.RefreshToken) {
		t.Errorf("the error holds a token")
	}
}

func TestNotLoggedIn(t *testing.T) {
	t.Parallel()
	op := newFakeOP(t)
	c := newClient(t, op, t.TempDir(), nil, nil)
	_, err := c.Token(t.Context())
	if !errors.Is(err, ErrNotLoggedIn) || !strings.Contains(err.Error(), "log in with: tether-proxy login") {
		t.Fatalf("Token without a login: %v", err)
	}
	if _, err := FromCache(t.TempDir()); !errors.Is(err, ErrNotLoggedIn) {
		t.Fatalf("FromCache of an empty directory: %v", err)
	}
}

func TestCacheFiles(t *testing.T) {
	t.Parallel()
	op := newFakeOP(t)
	dir := t.TempDir() + "/tether/login"
	c := newClient(t, op, dir, nil, nil)
	e := deviceLogin(t, c, op)
	for path, want := range map[string]os.FileMode{dir: 0o700, c.CachePath(): 0o600, dir + "/" + current: 0o600} {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s: mode %04o, want %04o", path, st.Mode().Perm(), want)
		}
	}
	entries, _ := os.ReadDir(dir)
	for _, de := range entries {
		if strings.Contains(de.Name(), ".tmp-") {
			t.Errorf("temporary file left behind: %s", de.Name())
		}
	}
	// The current login is found without naming the issuer.
	fc, err := FromCache(dir)
	if err != nil {
		t.Fatal(err)
	}
	if tok, err := fc.Token(t.Context()); err != nil || tok != e.IDToken {
		t.Fatalf("FromCache().Token: %v", err)
	}

	for _, mode := range []os.FileMode{0o640, 0o604, 0o660} {
		if err := os.Chmod(c.CachePath(), mode); err != nil {
			t.Fatal(err)
		}
		_, err := newClient(t, op, dir, nil, nil).Token(t.Context())
		if err == nil || !strings.Contains(err.Error(), "chmod 600 "+c.CachePath()) {
			t.Errorf("mode %04o: %v, want a refusal naming the chmod", mode, err)
		}
	}
}

// TestConcurrentRefreshSpendsOnce: two processes' clients (separate Client
// values, one cache directory) and several callers each, all finding the
// token near expiry at once, spend the rotating refresh token once.
func TestConcurrentRefreshSpendsOnce(t *testing.T) {
	t.Parallel()
	op := newFakeOP(t)
	op.refreshDelay = 300 * time.Millisecond
	clk := op.clock
	dir := t.TempDir()
	first := newClient(t, op, dir, clk, nil)
	deviceLogin(t, first, op)
	clk.advance(9*time.Minute + 30*time.Second)

	clients := []*Client{first, newClient(t, op, dir, clk, nil), newClient(t, op, dir, clk, nil)}
	var wg sync.WaitGroup
	tokens := make(chan string, 12)
	errs := make(chan error, 12)
	for i := range 12 {
		wg.Go(func() {
			tok, err := clients[i%len(clients)].Token(t.Context())
			tokens <- tok
			errs <- err
		})
	}
	wg.Wait()
	close(tokens)
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	for tok := range tokens {
		seen[tok] = true
	}
	if op.refreshUses != 1 || len(seen) != 1 {
		t.Fatalf("refresh token spent %d times, %d distinct tokens returned; want 1 and 1", op.refreshUses, len(seen))
	}
}

func TestLogout(t *testing.T) {
	t.Parallel()
	op := newFakeOP(t)
	c := newClient(t, op, t.TempDir(), nil, nil)
	e := deviceLogin(t, c, op)
	removed, revokeErr, err := c.Logout(t.Context())
	if err != nil || revokeErr != nil || !removed {
		t.Fatalf("Logout: removed %v, revoke %v, err %v", removed, revokeErr, err)
	}
	if fmt.Sprint(op.revoked) != fmt.Sprint([]string{e.RefreshToken}) {
		t.Errorf("revoked %d tokens, want the login's refresh token", len(op.revoked))
	}
	if _, err := os.Stat(c.CachePath()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cache file after logout: %v", err)
	}
	if _, err := c.Token(t.Context()); !errors.Is(err, ErrNotLoggedIn) {
		t.Errorf("Token after logout: %v", err)
	}

	// A failed revocation is reported; the login is gone all the same.
	deviceLogin(t, c, op)
	op.revokeStatus = http.StatusServiceUnavailable
	removed, revokeErr, err = c.Logout(t.Context())
	if err != nil || !removed || revokeErr == nil || !strings.Contains(revokeErr.Error(), "503") {
		t.Fatalf("Logout with the revocation endpoint down: removed %v, revoke %v, err %v", removed, revokeErr, err)
	}
}

func TestRefusesTamperedIDToken(t *testing.T) {
	t.Parallel()
	op := newFakeOP(t)
	c := newClient(t, op, t.TempDir(), nil, nil)
	p, err := c.Discover(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: other}, (&jose.SignerOptions{}).WithHeader("kid", "k1"))
	good := map[string]any{"iss": op.srv.URL, "sub": "alice", "aud": "tether", "exp": time.Now().Add(time.Hour).Unix()}
	forged, _ := jwt.Signed(signer).Claims(good).Serialize()
	if _, err := verifyIDToken(t.Context(), c.hc, p, "tether", forged, time.Now()); err == nil {
		t.Error("an ID token signed by another key was accepted")
	}
	hs, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: []byte("0123456789abcdef0123456789abcdef")}, nil)
	hmac, _ := jwt.Signed(hs).Claims(good).Serialize()
	if _, err := verifyIDToken(t.Context(), c.hc, p, "tether", hmac, time.Now()); err == nil {
		t.Error("an HS256 ID token was accepted")
	}
}

// TestDiscoveryRefusesPlainHTTPEndpoints: an https issuer whose discovery
// document points at plain-HTTP endpoints would send the device code, the
// PKCE verifier or the refresh token in clear.
func TestDiscoveryRefusesPlainHTTPEndpoints(t *testing.T) {
	for _, key := range []string{"token_endpoint", "device_authorization_endpoint", "jwks_uri", "authorization_endpoint", "revocation_endpoint"} {
		t.Run(key, func(t *testing.T) {
			op := newFakeOP(t)
			op.discovery = func(doc map[string]any) { doc[key] = strings.Replace(doc[key].(string), "https://", "http://", 1) }
			c := newClient(t, op, t.TempDir(), nil, io.Discard)
			_, err := c.DeviceLogin(t.Context())
			if err == nil || !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), "https") {
				t.Fatalf("DeviceLogin with a plain-HTTP %s: %v, want a refusal naming it", key, err)
			}
		})
	}
}

// TestDeviceFlowPrintsNoTerminalEscapes: what the provider says is printed
// to the user's terminal; control characters in it are not.
func TestDeviceFlowPrintsNoTerminalEscapes(t *testing.T) {
	op := newFakeOP(t)
	op.device = []string{"ok"}
	op.userCode = "ABCD\x1b]0;pwned\x07-EFGH"
	op.verificationURI = op.srv.URL + "/device\x1b[2J\r\n$ sudo rm -rf /"
	var out strings.Builder
	c := newClient(t, op, t.TempDir(), nil, &out)
	if _, err := c.DeviceLogin(t.Context()); err != nil {
		t.Fatal(err)
	}
	if strings.ContainsAny(out.String(), "\x1b\x07\r") || strings.Count(out.String(), "\n") > 4 {
		t.Fatalf("control characters reached the terminal: %q", out.String())
	}
	if !strings.Contains(out.String(), "ABCD") || !strings.Contains(out.String(), "EFGH") {
		t.Fatalf("the user code is not printed: %q", out.String())
	}
}

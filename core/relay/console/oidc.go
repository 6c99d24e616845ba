package console

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
)

// provider is the issuer's endpoints, read from its discovery document
// at the first sign-in and kept.
type provider struct {
	issuer string
	client *http.Client

	mu              sync.Mutex
	authURL, tokURL string
	last            time.Time // of the last failed fetch
}

// endpoints returns the authorization and token endpoints. A failed
// fetch is not retried for 5 s: sign-in pages are unauthenticated.
func (p *provider) endpoints(ctx context.Context) (authURL, tokenURL string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.authURL != "" {
		return p.authURL, p.tokURL, nil
	}
	if time.Since(p.last) < 5*time.Second {
		return "", "", errors.New("the identity provider's discovery document could not be read a moment ago")
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var doc struct {
		Issuer string `json:"issuer"`
		Auth   string `json:"authorization_endpoint"`
		Token  string `json:"token_endpoint"`
	}
	if err := p.getJSON(ctx, strings.TrimSuffix(p.issuer, "/")+"/.well-known/openid-configuration", &doc); err != nil {
		p.last = time.Now()
		return "", "", err
	}
	if doc.Issuer != p.issuer || !isHTTPS(doc.Auth) || !isHTTPS(doc.Token) {
		p.last = time.Now()
		return "", "", fmt.Errorf("the discovery document of %s names issuer %q, authorization endpoint %q, token endpoint %q: want this issuer and https endpoints",
			p.issuer, doc.Issuer, doc.Auth, doc.Token)
	}
	p.authURL, p.tokURL = doc.Auth, doc.Token
	return p.authURL, p.tokURL, nil
}

func isHTTPS(s string) bool {
	u, err := url.Parse(s)
	return err == nil && u.Scheme == "https" && u.Host != ""
}

func (p *provider) getJSON(ctx context.Context, u string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("discovery %s: %w", u, err)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return fmt.Errorf("discovery: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("discovery %s: %s", u, resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(v); err != nil {
		return fmt.Errorf("discovery %s: %w", u, err)
	}
	return nil
}

// exchange trades the code for the ID token at the token endpoint, with
// the PKCE verifier.
func (p *provider) exchange(ctx context.Context, tokenURL, clientID, redirect, code, verifier string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	form := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {redirect},
		"client_id": {clientID}, "code_verifier": {verifier}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, tokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return "", fmt.Errorf("token endpoint: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := p.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("token endpoint: %w", err)
	}
	defer resp.Body.Close()
	var out struct {
		IDToken string `json:"id_token"`
		Error   string `json:"error"`
		Desc    string `json:"error_description"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&out); err != nil {
		return "", fmt.Errorf("token endpoint answered %s, not JSON: %w", resp.Status, err)
	}
	if resp.StatusCode != http.StatusOK || out.Error != "" {
		return "", fmt.Errorf("token endpoint refused the code: %s %s %s", resp.Status, out.Error, out.Desc)
	}
	if out.IDToken == "" {
		return "", errors.New("token endpoint answered no id_token (is the openid scope allowed for this client?)")
	}
	return out.IDToken, nil
}

// s256 is the PKCE S256 challenge of verifier (RFC 7636 4.2).
func s256(verifier string) string {
	h := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(h[:])
}

// login starts a sign-in: a sealed cookie holds the state, nonce and PKCE
// verifier, and the browser goes to the issuer.
func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	authURL, _, err := c.oidc.endpoints(r.Context())
	if err != nil {
		c.log.Warn("console: the issuer cannot be reached", "issuer", c.cfg.Issuer, "error", err)
		c.render(w, r, http.StatusBadGateway, "message", page{Title: "Sign-in unavailable",
			Message: "The relay cannot reach its identity provider (" + c.cfg.Issuer + ") to sign you in: try again in a moment; if it persists, tell the relay's operator."})
		return
	}
	p := pending{State: randomString(32), Nonce: randomString(32), Verifier: randomString(48), Expires: c.cfg.Now().Add(LoginTimeout)}
	sealed, err := c.seal.seal(loginCookie, p)
	if err != nil {
		c.render(w, r, http.StatusInternalServerError, "message", page{Title: "Error", Message: "The sign-in could not start: try again."})
		return
	}
	setCookie(w, loginCookie, sealed, int(LoginTimeout/time.Second))
	u, _ := url.Parse(authURL)
	q := u.Query()
	q.Set("response_type", "code")
	q.Set("client_id", c.cfg.ClientID)
	q.Set("redirect_uri", c.cfg.RedirectURL)
	q.Set("scope", strings.Join(c.cfg.Scopes, " "))
	q.Set("state", p.State)
	q.Set("nonce", p.Nonce)
	q.Set("code_challenge", s256(p.Verifier))
	q.Set("code_challenge_method", "S256")
	u.RawQuery = q.Encode()
	http.Redirect(w, r, u.String(), http.StatusFound)
}

// refuseSignIn answers a failed callback: the pending sign-in is over.
func (c *Console) refuseSignIn(w http.ResponseWriter, r *http.Request, status int, msg string, logAttrs ...any) {
	setCookie(w, loginCookie, "", -1)
	c.log.Warn("console: sign-in refused", append([]any{"client", r.RemoteAddr, "why", msg}, logAttrs...)...)
	c.render(w, r, status, "message", page{Title: "Sign-in refused", Message: msg, SignIn: true})
}

// callback completes a sign-in: the state must be the pending one's, the
// code is exchanged with its verifier, and the ID token must verify and
// carry its nonce.
func (c *Console) callback(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	ck, err := r.Cookie(loginCookie)
	if err != nil {
		c.refuseSignIn(w, r, http.StatusBadRequest, "No sign-in is in progress in this browser (or its cookie was blocked): start again from the sign-in button.")
		return
	}
	var p pending
	if err := c.seal.open(loginCookie, ck.Value, &p); err != nil {
		c.refuseSignIn(w, r, http.StatusBadRequest, "This sign-in was not started by this relay (or the relay restarted since): start again.")
		return
	}
	if !c.cfg.Now().Before(p.Expires) {
		c.refuseSignIn(w, r, http.StatusBadRequest, fmt.Sprintf("This sign-in took more than %s: start again.", LoginTimeout))
		return
	}
	if subtle.ConstantTimeCompare([]byte(q.Get("state")), []byte(p.State)) != 1 {
		c.refuseSignIn(w, r, http.StatusBadRequest, "The identity provider's answer is not for the sign-in this browser started (its state does not match): start again.")
		return
	}
	if e := q.Get("error"); e != "" {
		c.refuseSignIn(w, r, http.StatusUnauthorized, "The identity provider refused the sign-in: "+e+" "+q.Get("error_description"))
		return
	}
	code := q.Get("code")
	if code == "" || len(code) > 4096 {
		c.refuseSignIn(w, r, http.StatusBadRequest, "The identity provider's answer carries no code: start again.")
		return
	}
	if !c.exchanges.Allow() {
		c.render(w, r, http.StatusTooManyRequests, "message", page{Title: "Busy", Message: "Too many sign-ins at once on this relay: try again in a few seconds."})
		return
	}
	_, tokenURL, err := c.oidc.endpoints(r.Context())
	if err != nil {
		c.refuseSignIn(w, r, http.StatusBadGateway, "The relay cannot reach its identity provider: try again in a moment.", "error", err)
		return
	}
	idToken, err := c.oidc.exchange(r.Context(), tokenURL, c.cfg.ClientID, c.cfg.RedirectURL, code, p.Verifier)
	if err != nil {
		c.refuseSignIn(w, r, http.StatusBadGateway, "The identity provider did not give the relay a token for this sign-in: start again.", "error", err)
		return
	}
	s, status, why := c.verify(r.Context(), idToken, p.Nonce)
	if s == nil {
		c.refuseSignIn(w, r, status, why)
		return
	}
	id, err := c.sessions.add(s, c.cfg.Now())
	if err != nil {
		c.refuseSignIn(w, r, http.StatusServiceUnavailable, "This relay holds too many signed-in sessions: try again later.")
		return
	}
	setCookie(w, loginCookie, "", -1)
	setCookie(w, sessionCookie, id, int(s.expires.Sub(c.cfg.Now())/time.Second)+1)
	c.log.Info("console: signed in", "user", s.who.Identity.User, "groups", len(s.who.Identity.Groups), "until", s.expires.UTC().Format(time.RFC3339), "client", r.RemoteAddr)
	http.Redirect(w, r, Path, http.StatusSeeOther)
}

// verify checks the ID token: the relay's authenticator first (signature,
// issuer, audience, expiry, not-before, claim mappings), then, on the
// payload it verified, what only the console knows: its issuer, its
// client, its nonce. It returns the session, or the status and why.
func (c *Console) verify(ctx context.Context, idToken, nonce string) (*session, int, string) {
	who, err := c.cfg.Authenticator.AuthenticateToken(ctx, idToken)
	if err != nil {
		return nil, http.StatusUnauthorized, "The relay refused the identity provider's token: " + strings.ReplaceAll(err.Error(), idToken, "<token>")
	}
	parts := strings.Split(idToken, ".")
	var claims struct {
		Iss   string    `json:"iss"`
		Nonce string    `json:"nonce"`
		Azp   string    `json:"azp"`
		Aud   audiences `json:"aud"`
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil || json.Unmarshal(b, &claims) != nil {
		return nil, http.StatusUnauthorized, "The identity provider's token has no readable claims."
	}
	switch {
	case claims.Iss != c.cfg.Issuer:
		return nil, http.StatusUnauthorized, fmt.Sprintf("The token is from issuer %q, not the console's (%s).", claims.Iss, c.cfg.Issuer)
	case subtle.ConstantTimeCompare([]byte(claims.Nonce), []byte(nonce)) != 1:
		return nil, http.StatusUnauthorized, "The token's nonce is not this sign-in's: it was issued for another sign-in (a replayed token?). Start again."
	case !slices.Contains(who.Audiences, c.cfg.ClientID):
		return nil, http.StatusForbidden, fmt.Sprintf("The token is for %v, not for the console's client %s.", who.Audiences, c.cfg.ClientID)
	case claims.Azp != "" && claims.Azp != c.cfg.ClientID:
		return nil, http.StatusForbidden, fmt.Sprintf("The token was issued to client %q, not to the console's (%s).", claims.Azp, c.cfg.ClientID)
	case who.Expires.IsZero() || !c.cfg.Now().Before(who.Expires):
		return nil, http.StatusUnauthorized, "The token has expired (or says no expiry): sign in again."
	}
	if c.cfg.RefusedAudience != nil {
		if err := c.cfg.RefusedAudience(who.Audiences); err != nil {
			return nil, http.StatusForbidden, "The relay refuses this token for its console: " + err.Error()
		}
	}
	return &session{who: who, expires: who.Expires, csrf: randomString(24)}, 0, ""
}

// audiences reads aud as a string or an array of strings.
type audiences []string

func (a *audiences) UnmarshalJSON(b []byte) error {
	var one string
	if json.Unmarshal(b, &one) == nil {
		*a = []string{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return err
	}
	*a = many
	return nil
}

// logout forgets the session. It is a POST with the session's form token,
// from a page of this origin: no other site can sign anyone out.
func (c *Console) logout(w http.ResponseWriter, r *http.Request) {
	s := c.signedIn(w, r)
	if s == nil {
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
	if err := r.ParseForm(); err != nil || subtle.ConstantTimeCompare([]byte(r.PostForm.Get("csrf")), []byte(s.csrf)) != 1 || !sameOrigin(r, c.origin) {
		c.render(w, r, http.StatusForbidden, "message", page{Title: "Not allowed", Message: "Sign out from the console's own page: this request did not come from it."})
		return
	}
	ck, _ := r.Cookie(sessionCookie)
	c.sessions.remove(ck.Value)
	setCookie(w, sessionCookie, "", -1)
	c.log.Info("console: signed out", "user", s.who.Identity.User, "client", r.RemoteAddr)
	http.Redirect(w, r, Path, http.StatusSeeOther)
}

// sameOrigin refuses a request a browser says came from another site:
// Sec-Fetch-Site, which current browsers send, decides; without it, an
// Origin other than the console's. (Under Referrer-Policy no-referrer a
// browser sends "Origin: null" for the console's own forms.)
func sameOrigin(r *http.Request, origin string) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" {
		return site == "same-origin" || site == "none"
	}
	o := r.Header.Get("Origin")
	return o == "" || o == "null" || o == origin
}

package login

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"html"
	"net"
	"net/http"
	"time"

	"golang.org/x/oauth2"
)

// Errors of the device flow (RFC 8628 section 3.5).
var (
	// ErrDenied: the user (or the provider) refused the login.
	ErrDenied = errors.New("the login was denied at the identity provider")
	// ErrCodeExpired: nobody entered the code before it expired.
	ErrCodeExpired = errors.New("the code expired before the login was approved")
)

// DeviceLogin logs in with the device authorization grant: it prints the
// verification URI and the code to enter to Config.Out, polls the token
// endpoint until the user approves, refuses or the code expires, and
// caches the login.
func (c *Client) DeviceLogin(ctx context.Context) (*Entry, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, err := c.discoverLocked(ctx)
	if err != nil {
		return nil, err
	}
	if p.DeviceAuthorizationEndpoint == "" {
		return nil, fmt.Errorf("login: %s offers no device authorization endpoint; log in with a browser instead (--browser)", c.cfg.Issuer)
	}
	oc := c.oauth2Config(p, "")
	octx := c.oauthCtx(ctx)
	da, err := oc.DeviceAuth(octx)
	if err != nil {
		return nil, fmt.Errorf("login: start the device login at %s: %w", p.DeviceAuthorizationEndpoint, describe(err))
	}
	fmt.Fprintf(c.cfg.Out, "Open %s and enter %s\n", printable(da.VerificationURI), printable(da.UserCode))
	if da.VerificationURIComplete != "" {
		fmt.Fprintf(c.cfg.Out, "(or open %s)\n", printable(da.VerificationURIComplete))
	}
	fmt.Fprintln(c.cfg.Out, "waiting…")
	tok, err := oc.DeviceAccessToken(octx, da)
	if err != nil {
		var re *oauth2.RetrieveError
		switch {
		case errors.As(err, &re) && re.ErrorCode == "access_denied":
			return nil, fmt.Errorf("login: %w", ErrDenied)
		case errors.As(err, &re) && re.ErrorCode == "expired_token",
			errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
			return nil, fmt.Errorf("login: %w; run the login again", ErrCodeExpired)
		}
		return nil, fmt.Errorf("login: wait for the device login: %w", describe(err))
	}
	return c.save(ctx, p, tok, nil, true)
}

// BrowserLogin logs in with the authorization code grant and PKCE (S256):
// it listens on a loopback port for the redirect, prints the
// authorization URL to Config.Out (and opens it with Config.OpenBrowser if
// set), checks the state of the callback, trades the code and caches the
// login.
func (c *Client) BrowserLogin(ctx context.Context) (*Entry, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, err := c.discoverLocked(ctx)
	if err != nil {
		return nil, err
	}
	if p.AuthorizationEndpoint == "" {
		return nil, fmt.Errorf("login: %s offers no authorization endpoint", c.cfg.Issuer)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("login: listen for the redirect on loopback: %w", err)
	}
	redirect := fmt.Sprintf("http://%s/callback", l.Addr())
	oc := c.oauth2Config(p, redirect)
	state := randomString()
	verifier := oauth2.GenerateVerifier()
	authURL := oc.AuthCodeURL(state, oauth2.S256ChallengeOption(verifier))

	type result struct {
		code string
		err  error
	}
	got := make(chan result, 1)
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second,
		IdleTimeout: 30 * time.Second, MaxHeaderBytes: 64 << 10, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/callback" {
				http.NotFound(w, r)
				return
			}
			q := r.URL.Query()
			var res result
			switch {
			case subtle.ConstantTimeCompare([]byte(q.Get("state")), []byte(state)) != 1:
				// Not the answer to our request (a stale tab, or a forged
				// redirect): refuse it and keep waiting for the real one.
				http.Error(w, "tether: this login answer does not match the login in progress (state mismatch); it was refused", http.StatusBadRequest)
				fmt.Fprintln(c.cfg.Out, "refused a callback whose state does not match this login")
				return
			case q.Get("error") != "":
				res.err = fmt.Errorf("login: the identity provider answered %s: %s", q.Get("error"), q.Get("error_description"))
			case q.Get("code") == "":
				res.err = errors.New("login: the identity provider's answer has no code")
			default:
				res.code = q.Get("code")
			}
			select {
			case got <- res:
			default: // a second answer after the first
			}
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			if res.err != nil {
				fmt.Fprintf(w, "<p>tether: the login failed: %s</p>", html.EscapeString(res.err.Error()))
				return
			}
			fmt.Fprint(w, "<p>tether: logged in. You may close this window.</p>")
		})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		<-served
	}()

	fmt.Fprintf(c.cfg.Out, "Open this URL in a browser to log in:\n%s\n", authURL)
	if c.cfg.OpenBrowser != nil {
		if err := c.cfg.OpenBrowser(authURL); err != nil {
			fmt.Fprintf(c.cfg.Out, "(could not open a browser: %v)\n", err)
		}
	}
	fmt.Fprintln(c.cfg.Out, "waiting…")
	var res result
	select {
	case <-ctx.Done():
		return nil, fmt.Errorf("login: waiting for the browser: %w", ctx.Err())
	case res = <-got:
	}
	if res.err != nil {
		return nil, res.err
	}
	tok, err := oc.Exchange(c.oauthCtx(ctx), res.code, oauth2.VerifierOption(verifier))
	if err != nil {
		return nil, fmt.Errorf("login: trade the code at %s: %w", p.TokenEndpoint, describe(err))
	}
	return c.save(ctx, p, tok, nil, true)
}

// randomString is 32 random bytes, base64url.
func randomString() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// describe shortens an oauth2 error to the provider's code and
// description (the raw body could hold anything).
func describe(err error) error {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) && re.ErrorCode != "" {
		if re.ErrorDescription != "" {
			return fmt.Errorf("%s (%s)", re.ErrorCode, re.ErrorDescription)
		}
		return errors.New(re.ErrorCode)
	}
	return err
}

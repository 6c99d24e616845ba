package login

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

// DefaultScopes are the scopes asked for when Config.Scopes is empty:
// offline_access for a refresh token, groups for the groups claim.
var DefaultScopes = []string{"openid", "profile", "email", "groups", "offline_access"}

// DefaultLoginCommand is the command errors tell the user to run when a
// login expired, when Config.LoginCommand is empty.
const DefaultLoginCommand = "tether-proxy login"

// Config configures a Client.
type Config struct {
	// Issuer is the OpenID provider's issuer URL (https). Required.
	Issuer string
	// ClientID is the public client registered for tether at the
	// provider; the ID token's audience. Required.
	ClientID string
	// Scopes to ask for. Empty means DefaultScopes.
	Scopes []string
	// IssuerCA, when not empty, is a PEM bundle of CAs that verify the
	// issuer's certificate instead of the system's roots (a private
	// provider). It is kept in the cache, so refreshes trust it too.
	IssuerCA []byte
	// CacheDir holds the cached logins. Empty means
	// os.UserConfigDir()/tether/login.
	CacheDir string
	// Out receives progress for the user (the URL to open, the code to
	// enter, who logged in). Nil discards. Tokens are never written to it.
	Out io.Writer
	// OpenBrowser, when not nil, is called with the authorization URL in
	// the browser flow (after it was printed to Out); its error is
	// reported to Out and the flow goes on waiting.
	OpenBrowser func(url string) error
	// LoginCommand is the command that logs in again, quoted in the
	// error of an expired login. Empty means DefaultLoginCommand.
	LoginCommand string
	// HTTPTimeout bounds each request to the provider. Zero means 30s.
	HTTPTimeout time.Duration
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
}

// Validate checks cfg.
func (c *Config) Validate() error {
	if c.Issuer == "" {
		return errors.New("login: the issuer URL is required")
	}
	u, err := url.Parse(c.Issuer)
	if err != nil || u.Host == "" || u.Scheme != "https" {
		return fmt.Errorf("login: issuer %q: want an https URL", c.Issuer)
	}
	if c.ClientID == "" {
		return errors.New("login: the client ID is required")
	}
	if len(c.IssuerCA) > 0 && !x509.NewCertPool().AppendCertsFromPEM(c.IssuerCA) {
		return errors.New("login: the issuer CA holds no PEM certificate")
	}
	if c.HTTPTimeout < 0 {
		return fmt.Errorf("login: HTTPTimeout %s is negative", c.HTTPTimeout)
	}
	return nil
}

// withDefaults returns cfg with its zero fields filled in.
func (c Config) withDefaults() (Config, error) {
	if len(c.Scopes) == 0 {
		c.Scopes = DefaultScopes
	}
	if c.CacheDir == "" {
		dir, err := DefaultCacheDir()
		if err != nil {
			return c, err
		}
		c.CacheDir = dir
	}
	if c.Out == nil {
		c.Out = io.Discard
	}
	if c.LoginCommand == "" {
		c.LoginCommand = DefaultLoginCommand
	}
	if c.HTTPTimeout == 0 {
		c.HTTPTimeout = 30 * time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c, nil
}

// DefaultCacheDir is os.UserConfigDir()/tether/login
// ($XDG_CONFIG_HOME/tether/login or ~/.config/tether/login on Linux,
// ~/Library/Application Support/tether/login on macOS).
func DefaultCacheDir() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("login: no directory for the token cache: %w", err)
	}
	return filepath.Join(dir, "tether", "login"), nil
}

// httpClient returns a client that trusts ca (PEM; empty: the system's
// roots).
func httpClient(ca []byte, timeout time.Duration) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if len(ca) > 0 {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(ca)
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: tr, Timeout: timeout,
		// A provider's endpoints answer; they never need a redirect
		// followed with the user's codes or tokens in the body.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

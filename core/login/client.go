package login

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"
)

// ErrLoginExpired is returned when the cached ID token expired and the
// refresh token no longer renews it: the user must log in again.
var ErrLoginExpired = errors.New("login expired")

// Client logs in to one issuer as one client and keeps the login fresh.
// Its methods are safe for concurrent use.
type Client struct {
	cfg   Config
	cache Cache
	hc    *http.Client

	mu       sync.Mutex
	entry    *Entry    // the login in memory, nil until loaded
	retryAt  time.Time // no refresh attempt before (after one failed)
	lastErr  error     // why the login expired, returned until retryAt
	provider *Provider // discovered once per Client
	// exchanged are the tokens TokenFor got, by audience, in memory only.
	exchanged map[string]*exchangedToken
}

// New validates cfg and returns a Client. It does no I/O.
func New(cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Client{cfg: cfg, cache: Cache{Dir: cfg.CacheDir}, hc: httpClient(cfg.IssuerCA, cfg.HTTPTimeout)}, nil
}

// FromCache returns a Client for the current cached login (the last one
// made) in dir (empty: DefaultCacheDir), with the issuer CA and scopes it
// was made with, and the login command it recorded.
func FromCache(dir string) (*Client, error) {
	if dir == "" {
		d, err := DefaultCacheDir()
		if err != nil {
			return nil, err
		}
		dir = d
	}
	c := Cache{Dir: dir}
	issuer, clientID, err := c.Current()
	if err != nil {
		return nil, err
	}
	e, err := c.Load(issuer, clientID)
	if err != nil {
		return nil, err
	}
	return New(Config{Issuer: issuer, ClientID: clientID, IssuerCA: []byte(e.IssuerCA), Scopes: e.Scopes,
		CacheDir: dir, LoginCommand: e.LoginCommand})
}

// CachePath is the file this client's login is cached in.
func (c *Client) CachePath() string { return c.cache.Path(c.cfg.Issuer, c.cfg.ClientID) }

// Discover reads (once) the issuer's discovery document.
func (c *Client) Discover(ctx context.Context) (*Provider, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.discoverLocked(ctx)
}

func (c *Client) discoverLocked(ctx context.Context) (*Provider, error) {
	if c.provider != nil {
		return c.provider, nil
	}
	p, err := discover(ctx, c.hc, c.cfg.Issuer)
	if err != nil {
		return nil, err
	}
	c.provider = p
	return p, nil
}

// oauth2Config is the public client at provider p.
func (c *Client) oauth2Config(p *Provider, redirect string) *oauth2.Config {
	return &oauth2.Config{
		ClientID: c.cfg.ClientID,
		Endpoint: oauth2.Endpoint{AuthURL: p.AuthorizationEndpoint, TokenURL: p.TokenEndpoint,
			DeviceAuthURL: p.DeviceAuthorizationEndpoint, AuthStyle: oauth2.AuthStyleInParams},
		RedirectURL: redirect,
		Scopes:      c.cfg.Scopes,
	}
}

// ctx returns ctx carrying the client's HTTP client for oauth2.
func (c *Client) oauthCtx(ctx context.Context) context.Context {
	return context.WithValue(ctx, oauth2.HTTPClient, c.hc)
}

// save verifies the ID token in tok and caches the login; prev, if not
// nil, gives the refresh token to keep when tok carries none.
func (c *Client) save(ctx context.Context, p *Provider, tok *oauth2.Token, prev *Entry, current bool) (*Entry, error) {
	raw, _ := tok.Extra("id_token").(string)
	claims, err := verifyIDToken(ctx, c.hc, p, c.cfg.ClientID, raw, c.cfg.Now())
	if err != nil {
		return nil, err
	}
	e := &Entry{Issuer: c.cfg.Issuer, ClientID: c.cfg.ClientID, IssuerCA: string(c.cfg.IssuerCA), Scopes: c.cfg.Scopes,
		IDToken: raw, RefreshToken: tok.RefreshToken, Expiry: claims.Expiry.Time(), IssuedAt: c.cfg.Now(),
		Subject: claims.Subject, Email: claims.Email, LoginCommand: c.cfg.LoginCommand}
	if claims.IssuedAt != nil {
		e.IssuedAt = claims.IssuedAt.Time()
	}
	if e.RefreshToken == "" && prev != nil {
		e.RefreshToken = prev.RefreshToken // the provider does not rotate them
	}
	if prev != nil && prev.Subject != e.Subject {
		return nil, fmt.Errorf("login: the refreshed ID token is for %q, the login was for %q", e.Subject, prev.Subject)
	}
	if current {
		err = c.cache.Store(e)
	} else {
		err = c.cache.store(e)
	}
	if err != nil {
		return nil, err
	}
	c.entry = e
	c.retryAt, c.lastErr = time.Time{}, nil
	return e, nil
}

// Logout removes the cached login and revokes its refresh token at the
// provider's revocation endpoint, when it has one (RFC 7009). removed
// reports whether there was a login; revokeErr says why the revocation
// failed (the login is removed all the same); err is a failure to read or
// remove the cache.
func (c *Client) Logout(ctx context.Context) (removed bool, revokeErr, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	unlock, err := c.cache.lock(c.cfg.Issuer, c.cfg.ClientID)
	if err != nil {
		return false, nil, err
	}
	defer unlock()
	e, lerr := c.cache.Load(c.cfg.Issuer, c.cfg.ClientID)
	if lerr == nil && e.RefreshToken != "" {
		revokeErr = c.revoke(ctx, e.RefreshToken)
	}
	c.entry = nil
	removed, err = c.cache.Remove(c.cfg.Issuer, c.cfg.ClientID)
	if lerr != nil && !errors.Is(lerr, ErrNotLoggedIn) {
		// A file we refused to read (its mode) is removed all the same:
		// its tokens were not revoked.
		revokeErr = fmt.Errorf("the cache file could not be read, so its refresh token was not revoked: %w", lerr)
	}
	return removed, revokeErr, err
}

func (c *Client) revoke(ctx context.Context, refreshToken string) error {
	p, err := c.discoverLocked(ctx)
	if err != nil {
		return err
	}
	if p.RevocationEndpoint == "" {
		return nil
	}
	form := url.Values{"token": {refreshToken}, "token_type_hint": {"refresh_token"}, "client_id": {c.cfg.ClientID}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.RevocationEndpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("revoke the refresh token at %s: %w", p.RevocationEndpoint, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("revoke the refresh token at %s: %s", p.RevocationEndpoint, resp.Status)
	}
	return nil
}

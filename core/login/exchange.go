package login

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// ErrExchangeUnsupported is wrapped by TokenFor's error when the provider
// does not offer the token exchange grant (RFC 8693) to the client: the
// caller may then fall back to the login's own ID token, at the cost
// docs/security.md states.
var ErrExchangeUnsupported = errors.New("the identity provider does not exchange tokens")

// The token exchange grant's names (RFC 8693).
const (
	grantTokenExchange = "urn:ietf:params:oauth:grant-type:token-exchange"
	tokenTypeIDToken   = "urn:ietf:params:oauth:token-type:id_token"
	tokenTypeJWT       = "urn:ietf:params:oauth:token-type:jwt"
)

// exchangedToken is a token TokenFor got for one audience.
type exchangedToken struct {
	token          string
	issued, expiry time.Time
	from           string // the login's ID token it was exchanged from
}

// TokenFor returns a token for audience: the login's ID token (Token)
// exchanged at the provider's token endpoint (OAuth 2.0 Token Exchange, RFC
// 8693: subject_token the ID token, requested_token_type id_token) for an
// ID token whose audiences include audience, with the login's subject. The
// login's own ID token never leaves this process, so that no hop sees a
// token it could exchange itself; each hop gets a token for its audience
// only (the relay's, each cluster's). An empty audience returns Token.
//
// The token is checked as a login's is (signature, issuer, expiry, the
// audience asked for, and the login's subject) and kept in memory until
// close to its expiry or until the login is renewed. When the provider
// does not offer the grant, the error wraps ErrExchangeUnsupported.
func (c *Client) TokenFor(ctx context.Context, audience string) (string, error) {
	login, err := c.Token(ctx)
	if err != nil || audience == "" {
		return login, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.cfg.Now()
	if x := c.exchanged[audience]; x != nil && x.from == login &&
		now.Before(x.expiry.Add(-RefreshMargin(x.expiry.Sub(x.issued)))) {
		return x.token, nil
	}
	p, err := c.discoverLocked(ctx)
	if err != nil {
		return "", err
	}
	if len(p.GrantTypes) > 0 && !slices.Contains(p.GrantTypes, grantTokenExchange) {
		return "", fmt.Errorf("login: %w: %s does not offer the token exchange grant (grant_types_supported %v)", ErrExchangeUnsupported, c.cfg.Issuer, p.GrantTypes)
	}
	raw, err := c.exchange(ctx, p, login, audience)
	if err != nil {
		return "", err
	}
	claims, err := verifyIDToken(ctx, c.hc, p, audience, raw, now)
	if err != nil {
		return "", fmt.Errorf("login: the token exchanged for %s: %w", audience, err)
	}
	if c.entry == nil || claims.Subject != c.entry.Subject {
		want := ""
		if c.entry != nil {
			want = c.entry.Subject
		}
		return "", fmt.Errorf("login: the token exchanged for %s is for %q, the login is %q: the provider is misbehaving, so the token is not used", audience, claims.Subject, want)
	}
	x := &exchangedToken{token: raw, issued: now, expiry: claims.Expiry.Time(), from: login}
	if claims.IssuedAt != nil {
		x.issued = claims.IssuedAt.Time()
	}
	if c.exchanged == nil {
		c.exchanged = map[string]*exchangedToken{}
	}
	c.exchanged[audience] = x
	return raw, nil
}

// exchange posts the token exchange request and returns the issued token.
func (c *Client) exchange(ctx context.Context, p *Provider, subject, audience string) (string, error) {
	form := url.Values{"grant_type": {grantTokenExchange}, "subject_token": {subject}, "subject_token_type": {tokenTypeIDToken},
		"requested_token_type": {tokenTypeIDToken}, "audience": {audience}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.TokenEndpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return "", fmt.Errorf("login: token exchange: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	// A public client authenticates by its ID alone (RFC 6749 2.3.1:
	// HTTP Basic, the ID URL-encoded, an empty secret).
	req.SetBasicAuth(url.QueryEscape(c.cfg.ClientID), "")
	resp, err := c.hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("login: token exchange at %s: %w", p.TokenEndpoint, err)
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken     string `json:"access_token"`
		IssuedTokenType string `json:"issued_token_type"`
		Error           string `json:"error"`
		Description     string `json:"error_description"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxIDToken+4096)).Decode(&body); err != nil {
		return "", fmt.Errorf("login: token exchange at %s: %s, and the answer is not JSON: %w", p.TokenEndpoint, resp.Status, err)
	}
	if resp.StatusCode != http.StatusOK {
		why := printable(strings.TrimSpace(body.Error + ": " + body.Description))
		if body.Error == "unsupported_grant_type" {
			return "", fmt.Errorf("login: %w: %s answered %s", ErrExchangeUnsupported, p.TokenEndpoint, why)
		}
		return "", fmt.Errorf("login: the provider refused to exchange the login for a token for %s: %s (%s); the provider must allow the client %s to exchange for that audience",
			audience, why, resp.Status, c.cfg.ClientID)
	}
	if body.IssuedTokenType != tokenTypeIDToken && body.IssuedTokenType != tokenTypeJWT {
		return "", fmt.Errorf("login: the provider exchanged the login for a %q, not an ID token", printable(body.IssuedTokenType))
	}
	return body.AccessToken, nil
}

// SourceFor returns TokenFor(audience) as the func() (string, error)
// tether-proxy takes, each call bounded by timeout.
func (c *Client) SourceFor(audience string, timeout time.Duration) func() (string, error) {
	return func() (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return c.TokenFor(ctx, audience)
	}
}

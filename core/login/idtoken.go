package login

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// maxIDToken bounds an ID token (a groups claim of 1,000 names fits).
const maxIDToken = 256 << 10

// asymmetric are the signature algorithms an ID token may use: never
// none, never HMAC.
var asymmetric = []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA}

// Claims are the ID token claims the login reads.
type Claims struct {
	Issuer   string           `json:"iss"`
	Subject  string           `json:"sub"`
	Audience jwt.Audience     `json:"aud"`
	Expiry   *jwt.NumericDate `json:"exp"`
	IssuedAt *jwt.NumericDate `json:"iat"`
	Email    string           `json:"email"`
	Name     string           `json:"preferred_username"`
}

// verifyIDToken checks raw's signature against the issuer's JWKS, its
// issuer, audience and expiry, and returns its claims.
func verifyIDToken(ctx context.Context, hc *http.Client, p *Provider, clientID, raw string, now time.Time) (*Claims, error) {
	if raw == "" {
		return nil, errors.New("login: the provider returned no ID token (is the openid scope allowed for the client?)")
	}
	if len(raw) > maxIDToken {
		return nil, fmt.Errorf("login: the ID token is %d bytes, more than %d", len(raw), maxIDToken)
	}
	tok, err := jwt.ParseSigned(raw, asymmetric)
	if err != nil {
		return nil, fmt.Errorf("login: the ID token does not parse: %w", err)
	}
	if len(tok.Headers) != 1 {
		return nil, errors.New("login: the ID token has more than one signature")
	}
	var set jose.JSONWebKeySet
	if err := getJSON(ctx, hc, p.JWKSURI, &set); err != nil {
		return nil, fmt.Errorf("login: the issuer's keys: %w", err)
	}
	keys := set.Keys
	if kid := tok.Headers[0].KeyID; kid != "" {
		keys = set.Key(kid)
	}
	var c Claims
	var verr error = fmt.Errorf("no key in the issuer's JWKS has kid %q", tok.Headers[0].KeyID)
	for _, k := range keys {
		if verr = tok.Claims(k.Public(), &c); verr == nil {
			break
		}
	}
	if verr != nil {
		return nil, fmt.Errorf("login: the ID token's signature: %w", verr)
	}
	if strings.TrimSuffix(c.Issuer, "/") != strings.TrimSuffix(p.Issuer, "/") {
		return nil, fmt.Errorf("login: the ID token's issuer is %q, not %q", c.Issuer, p.Issuer)
	}
	if !slices.Contains(c.Audience, clientID) {
		return nil, fmt.Errorf("login: the ID token is not for client %q (audience %v)", clientID, []string(c.Audience))
	}
	if c.Expiry == nil {
		return nil, errors.New("login: the ID token has no expiry")
	}
	if !c.Expiry.Time().After(now) {
		return nil, fmt.Errorf("login: the ID token the provider returned expired at %s", c.Expiry.Time().Format(time.RFC3339))
	}
	return &c, nil
}

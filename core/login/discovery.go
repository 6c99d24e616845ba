package login

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// maxDocument bounds a discovery document or JWKS.
const maxDocument = 1 << 20

// Provider is what the issuer's discovery document says.
type Provider struct {
	Issuer                      string   `json:"issuer"`
	AuthorizationEndpoint       string   `json:"authorization_endpoint"`
	TokenEndpoint               string   `json:"token_endpoint"`
	DeviceAuthorizationEndpoint string   `json:"device_authorization_endpoint"`
	JWKSURI                     string   `json:"jwks_uri"`
	RevocationEndpoint          string   `json:"revocation_endpoint"`
	EndSessionEndpoint          string   `json:"end_session_endpoint"`
	CodeChallengeMethods        []string `json:"code_challenge_methods_supported"`
	GrantTypes                  []string `json:"grant_types_supported"`
}

// discover reads issuer/.well-known/openid-configuration and checks that
// it names the issuer it was fetched from (OpenID Connect Discovery 4.3).
func discover(ctx context.Context, hc *http.Client, issuer string) (*Provider, error) {
	u := strings.TrimSuffix(issuer, "/") + "/.well-known/openid-configuration"
	var p Provider
	if err := getJSON(ctx, hc, u, &p); err != nil {
		return nil, fmt.Errorf("login: discovery at %s: %w", issuer, err)
	}
	if strings.TrimSuffix(p.Issuer, "/") != strings.TrimSuffix(issuer, "/") {
		return nil, fmt.Errorf("login: discovery at %s names another issuer, %q", issuer, p.Issuer)
	}
	if p.TokenEndpoint == "" || p.JWKSURI == "" {
		return nil, fmt.Errorf("login: discovery at %s lists no token endpoint or JWKS", issuer)
	}
	// The issuer is https; so must be every endpoint it sends the login
	// to: the device code, the PKCE verifier and the refresh token travel
	// there.
	for _, e := range []struct{ name, url string }{{"token_endpoint", p.TokenEndpoint}, {"jwks_uri", p.JWKSURI},
		{"device_authorization_endpoint", p.DeviceAuthorizationEndpoint}, {"authorization_endpoint", p.AuthorizationEndpoint},
		{"revocation_endpoint", p.RevocationEndpoint}} {
		if e.url == "" {
			continue
		}
		if u, err := url.Parse(e.url); err != nil || u.Scheme != "https" || u.Host == "" {
			return nil, fmt.Errorf("login: discovery at %s: %s %q: want an https URL", issuer, e.name, printable(e.url))
		}
	}
	return &p, nil
}

// printable replaces every control character of s (terminal escapes, CR,
// LF, C1 controls) with U+FFFD and caps its length, so that what a provider
// sends cannot rewrite the user's terminal when it is printed.
func printable(s string) string {
	const maxLen = 512
	var b strings.Builder
	for i, r := range s {
		if i >= maxLen {
			b.WriteString("…")
			break
		}
		if r < 0x20 || r == 0x7f || r >= 0x80 && r <= 0x9f {
			r = '\uFFFD'
		}
		b.WriteRune(r)
	}
	return b.String()
}

func getJSON(ctx context.Context, hc *http.Client, u string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDocument))
	if err != nil {
		return fmt.Errorf("read %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("GET %s: not JSON: %w", u, err)
	}
	return nil
}

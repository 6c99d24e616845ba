package tokensource

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"
)

// The environment GitHub Actions gives a job that has
// `permissions: id-token: write`.
const (
	GitHubRequestURLEnv   = "ACTIONS_ID_TOKEN_REQUEST_URL"
	GitHubRequestTokenEnv = "ACTIONS_ID_TOKEN_REQUEST_TOKEN"
)

// InGitHubActions reports whether this process runs in a GitHub Actions job
// that may request OIDC tokens.
func InGitHubActions() bool { return os.Getenv(GitHubRequestURLEnv) != "" }

// GitHubActions returns a token source for a GitHub Actions job: it
// asks the job's token endpoint for an OIDC token for audience, and reuses
// it until a minute before it expires. hc nil means a client with a 30 s
// timeout. No secret is stored anywhere: the job's own identity is the
// credential.
func GitHubActions(audience string, hc *http.Client) Source {
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	var (
		mu     sync.Mutex
		cached string
		until  time.Time
	)
	return func() (string, error) {
		mu.Lock()
		defer mu.Unlock()
		if cached != "" && time.Now().Before(until) {
			return cached, nil
		}
		endpoint, bearer := os.Getenv(GitHubRequestURLEnv), os.Getenv(GitHubRequestTokenEnv)
		if endpoint == "" || bearer == "" {
			return "", fmt.Errorf("GitHub Actions OIDC: %s and %s are not set: give the job `permissions: id-token: write`", GitHubRequestURLEnv, GitHubRequestTokenEnv)
		}
		u, err := url.Parse(endpoint)
		if err != nil {
			return "", fmt.Errorf("GitHub Actions OIDC: %s: %w", GitHubRequestURLEnv, err)
		}
		q := u.Query()
		q.Set("audience", audience)
		u.RawQuery = q.Encode()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return "", fmt.Errorf("GitHub Actions OIDC: %w", err)
		}
		req.Header.Set("Authorization", "bearer "+bearer)
		req.Header.Set("Accept", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			return "", fmt.Errorf("GitHub Actions OIDC: request a token: %w", err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("GitHub Actions OIDC: the token endpoint answered %s: %s", resp.Status, strings.TrimSpace(string(body)))
		}
		var out struct {
			Value string `json:"value"`
		}
		if err := json.Unmarshal(body, &out); err != nil || out.Value == "" {
			return "", errors.New("GitHub Actions OIDC: the token endpoint's answer has no value")
		}
		cached, until = out.Value, time.Now().Add(time.Minute)
		if exp, ok := UnverifiedExpiry(out.Value); ok {
			until = exp.Add(-time.Minute)
		}
		return cached, nil
	}
}

// UnverifiedExpiry reads a JWT's exp claim without verifying anything: only
// to know when to ask for a new token (the relay and the agent verify it).
// It reports false for anything that is not three base64url parts with a
// JSON payload holding a positive exp.
func UnverifiedExpiry(jwt string) (time.Time, bool) {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, false
	}
	var c struct {
		Exp int64 `json:"exp"`
	}
	if json.Unmarshal(b, &c) != nil || c.Exp <= 0 {
		return time.Time{}, false
	}
	return time.Unix(c.Exp, 0), true
}

// ExpiredHint returns, for a refused token whose (unverified) exp is before
// now, what to tell its holder: when it expired and how to get another.
// Empty for a token that has not expired or is not a JWT: the refusal's own
// reason says what is wrong then.
func ExpiredHint(token string, now time.Time) string {
	exp, ok := UnverifiedExpiry(token)
	if !ok || exp.After(now) {
		return ""
	}
	return fmt.Sprintf(" (it expired at %s: log in again (tether-proxy login), or fetch a fresh token)", exp.UTC().Format(time.RFC3339))
}

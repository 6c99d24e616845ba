package login

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/oauth2"
)

// retryAfterFailure is how long a client waits before trying a refresh
// again after one failed while its ID token was still valid.
const retryAfterFailure = 10 * time.Second

// RefreshMargin is how long before expiry a token of lifetime life is
// renewed: a minute, or a fifth of its lifetime if that is shorter.
func RefreshMargin(life time.Duration) time.Duration {
	return min(time.Minute, life/5)
}

// fresh says whether e's ID token needs no renewal at now.
func fresh(e *Entry, now time.Time) bool {
	return now.Before(e.Expiry.Add(-RefreshMargin(e.Expiry.Sub(e.IssuedAt))))
}

// Token returns the cached ID token, renewing it first when it is close to
// expiry. Concurrent callers, in this process or others, spend the refresh
// token once: the renewal happens under the cache's lock, and a caller that
// waited for it finds the new token. It returns an error wrapping
// ErrNotLoggedIn when there is no login, and ErrLoginExpired (with the
// command that logs in again) when the ID token expired and could not be
// renewed. While the ID token is still valid, a failed renewal is retried
// later and the current token returned.
func (c *Client) Token(ctx context.Context) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.cfg.Now()
	if c.entry != nil && fresh(c.entry, now) {
		return c.entry.IDToken, nil
	}
	if c.entry != nil && now.Before(c.retryAt) {
		// A renewal failed a moment ago: do not ask the provider again on
		// every request.
		if now.Before(c.entry.Expiry) {
			return c.entry.IDToken, nil
		}
		if c.lastErr != nil {
			return "", c.lastErr
		}
	}
	// Another process may have renewed it: read the file first.
	e, err := c.cache.Load(c.cfg.Issuer, c.cfg.ClientID)
	if err != nil {
		return "", c.notLoggedIn(err)
	}
	c.entry = e
	if fresh(e, now) {
		return e.IDToken, nil
	}
	unlock, err := c.cache.lock(c.cfg.Issuer, c.cfg.ClientID)
	if err != nil {
		return "", err
	}
	defer unlock()
	// Under the lock, read again: who held it before us may have renewed.
	if e, err = c.cache.Load(c.cfg.Issuer, c.cfg.ClientID); err != nil {
		return "", c.notLoggedIn(err)
	}
	c.entry = e
	if fresh(e, now) {
		return e.IDToken, nil
	}
	ne, rerr := c.refreshLocked(ctx, e)
	if rerr == nil {
		return ne.IDToken, nil
	}
	c.retryAt = now.Add(retryAfterFailure)
	if now.Before(e.Expiry) {
		return e.IDToken, nil
	}
	c.lastErr = fmt.Errorf("%w: your login at %s as %s ended at %s and could not be renewed: %w; log in again with: %s",
		ErrLoginExpired, e.Issuer, e.Who(), e.Expiry.Local().Format("15:04:05"), rerr, e.LoginCommand)
	return "", c.lastErr
}

func (c *Client) notLoggedIn(err error) error {
	if errors.Is(err, ErrNotLoggedIn) {
		return fmt.Errorf("%w; log in with: %s", err, c.cfg.LoginCommand)
	}
	return err
}

// refreshLocked trades e's refresh token for a new ID token and caches it.
// The caller holds c.mu and the cache's lock.
func (c *Client) refreshLocked(ctx context.Context, e *Entry) (*Entry, error) {
	if e.RefreshToken == "" {
		return nil, errors.New("the login has no refresh token (was offline_access granted?)")
	}
	p, err := c.discoverLocked(ctx)
	if err != nil {
		return nil, err
	}
	oc := c.oauth2Config(p, "")
	tok, err := oc.TokenSource(c.oauthCtx(ctx), &oauth2.Token{RefreshToken: e.RefreshToken}).Token()
	if err != nil {
		return nil, fmt.Errorf("refresh at %s: %w", p.TokenEndpoint, describe(err))
	}
	return c.save(ctx, p, tok, e, false)
}

// Refresh renews the login now, whatever its expiry, and returns it.
func (c *Client) Refresh(ctx context.Context) (*Entry, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	unlock, err := c.cache.lock(c.cfg.Issuer, c.cfg.ClientID)
	if err != nil {
		return nil, err
	}
	defer unlock()
	e, err := c.cache.Load(c.cfg.Issuer, c.cfg.ClientID)
	if err != nil {
		return nil, c.notLoggedIn(err)
	}
	ne, err := c.refreshLocked(ctx, e)
	if err != nil {
		return nil, fmt.Errorf("login: %w", err)
	}
	return ne, nil
}

// Source returns Token as the func() (string, error) tether-proxy takes,
// each call bounded by timeout.
func (c *Client) Source(timeout time.Duration) func() (string, error) {
	return func() (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return c.Token(ctx)
	}
}

package authn

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Defaults of the key set's refresh policy.
const (
	// DefaultJWKSMaxAge is how long an issuer's keys are trusted after
	// they were fetched, unless the JWKS response's Cache-Control max-age
	// says less. After it, the next token makes the key set refetch, so a
	// key the issuer retired stops working within this time.
	DefaultJWKSMaxAge = 10 * time.Minute
	// DefaultJWKSMinRefresh is the least time between two fetches of an
	// issuer's keys: a storm of tokens with unknown kids costs at most one
	// fetch per interval (they wait for it together).
	DefaultJWKSMinRefresh = time.Second
	// DefaultJWKSFetchTimeout bounds one fetch of an issuer's keys
	// (discovery and JWKS together).
	DefaultJWKSFetchTimeout = 10 * time.Second
	// issuerDownRetry is how long after a failed fetch the key set serves
	// the keys it has (or refuses at once) without fetching again: only
	// one verification per interval waits for an issuer that is down.
	issuerDownRetry = 5 * time.Second
	// maxJWKSBytes bounds a discovery document or a JWKS.
	maxJWKSBytes = 1 << 20
	// issuerWarnEvery is how often an issuer that keeps failing with the
	// same error is logged again (a changed error is logged at once).
	issuerWarnEvery = 5 * time.Minute
)

// errUnknownKey is the error for a token whose key the issuer does not
// publish.
var errUnknownKey = errors.New("the token's signing key (kid) is not in the issuer's JWKS: it was retired, or the token is not the issuer's")

// keySet verifies tokens' signatures with an issuer's published keys
// (go-oidc's KeySet, which k8s.io/apiserver's JWT authenticator takes). It
// differs from go-oidc's remote key set, which trusts a key it once fetched
// for as long as the process lives, in two ways:
//
//   - keys expire: after maxAge (or the JWKS's Cache-Control max-age, when
//     shorter) the next verification refetches them, so a retired key stops
//     working;
//   - a token with an unknown kid triggers a refetch at once, but fetches
//     are at least minRefresh apart, and concurrent verifications share one.
//
// If a refetch fails, the keys fetched last stay in use (an issuer outage
// does not lock every caller out) and the failure is logged. A fetch takes
// at most fetchTimeout; after one failed, verifications neither wait for
// another nor start one for issuerDownRetry (or minRefresh, if longer), so
// an issuer that accepts and never answers costs one verification in that
// interval the wait, not every one.
type keySet struct {
	issuer       string
	discoveryURL string
	client       *http.Client
	algs         []jose.SignatureAlgorithm
	maxAge       time.Duration
	minRefresh   time.Duration
	fetchTimeout time.Duration
	now          func() time.Time
	log          *slog.Logger

	mu       sync.Mutex
	jwksURL  string
	keys     []jose.JSONWebKey
	expires  time.Time
	lastTry  time.Time
	lastErr  error
	inflight chan struct{} // closed when the fetch in flight ends
	// failing is set while the last fetch failed, and downUntil is when
	// the next may start.
	failing   bool
	downUntil time.Time
	// outage counts the fetches failed in a row since failingSince;
	// warned is when, and warnedErr what, the outage was last logged.
	outage       int
	failingSince time.Time
	warned       time.Time
	warnedErr    string
}

func newKeySet(issuer, discoveryURL string, client *http.Client, algs []string, maxAge, minRefresh, fetchTimeout time.Duration, log *slog.Logger) *keySet {
	if discoveryURL == "" {
		discoveryURL = strings.TrimSuffix(issuer, "/") + "/.well-known/openid-configuration"
	}
	ks := &keySet{issuer: issuer, discoveryURL: discoveryURL, client: client, maxAge: maxAge, minRefresh: minRefresh,
		fetchTimeout: fetchTimeout, now: time.Now, log: log, lastErr: fmt.Errorf("authn: the keys of issuer %q are not fetched yet", issuer)}
	for _, a := range algs {
		ks.algs = append(ks.algs, jose.SignatureAlgorithm(a))
	}
	return ks
}

// healthy reports nil once keys were fetched.
func (ks *keySet) healthy() error {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.keys != nil {
		return nil
	}
	return ks.lastErr
}

// VerifySignature implements go-oidc's KeySet: it returns the payload of
// jwt if one of the issuer's keys signed it.
func (ks *keySet) VerifySignature(ctx context.Context, jwt string) ([]byte, error) {
	jws, err := jose.ParseSigned(jwt, ks.algs)
	if err != nil {
		return nil, fmt.Errorf("malformed jwt: %w", err)
	}
	if len(jws.Signatures) != 1 {
		return nil, errors.New("a token must have exactly one signature")
	}
	kid := jws.Signatures[0].Header.KeyID
	ks.mu.Lock()
	keys, stale := ks.keys, ks.now().After(ks.expires)
	ks.mu.Unlock()
	if stale {
		keys = ks.refresh(ctx, false)
	}
	if p, ok := verifyWith(jws, keys, kid); ok {
		return p, nil
	}
	if !stale {
		// An unknown kid: the issuer may have rotated its keys.
		keys = ks.refresh(ctx, false)
		if p, ok := verifyWith(jws, keys, kid); ok {
			return p, nil
		}
	}
	for _, k := range keys {
		if k.KeyID == kid {
			return nil, errors.New("failed to verify the token's signature")
		}
	}
	ks.mu.Lock()
	failing, lastErr := ks.failing || ks.keys == nil, ks.lastErr
	ks.mu.Unlock()
	switch {
	case len(keys) == 0:
		return nil, fmt.Errorf("the issuer's keys could not be fetched (retried at most every %s): %w", max(ks.minRefresh, issuerDownRetry), lastErr)
	case failing:
		return nil, fmt.Errorf("the token's signing key (kid) is not among the keys fetched last, and the issuer's keys could not be fetched since: %w", lastErr)
	}
	return nil, errUnknownKey
}

func verifyWith(jws *jose.JSONWebSignature, keys []jose.JSONWebKey, kid string) ([]byte, bool) {
	for i := range keys {
		if kid != "" && keys[i].KeyID != kid {
			continue
		}
		if p, err := jws.Verify(&keys[i]); err == nil {
			return p, true
		}
	}
	return nil, false
}

// refresh fetches the keys, at most once per minRefresh (callers inside
// that interval wait for its end, or for ctx), sharing a fetch in flight,
// and returns the keys to use: the new ones, or on failure the last ones.
// While the issuer is known down (the last fetch failed) it returns the
// last keys at once, neither waiting for a fetch in flight nor starting one
// before downUntil. background says no token waits for this fetch (the
// start-up prime), which only changes what is logged.
func (ks *keySet) refresh(ctx context.Context, background bool) []jose.JSONWebKey {
	for {
		ks.mu.Lock()
		if ks.failing && (ks.inflight != nil || ks.now().Before(ks.downUntil)) {
			keys := ks.keys
			ks.mu.Unlock()
			return keys
		}
		if ch := ks.inflight; ch != nil {
			ks.mu.Unlock()
			select {
			case <-ch:
				ks.mu.Lock()
				keys := ks.keys
				ks.mu.Unlock()
				return keys
			case <-ctx.Done():
				return ks.current()
			}
		}
		if wait := ks.lastTry.Add(ks.minRefresh).Sub(ks.now()); wait > 0 {
			ks.mu.Unlock()
			t := time.NewTimer(wait)
			select {
			case <-t.C:
				continue
			case <-ctx.Done():
				t.Stop()
				return ks.current()
			}
		}
		ch := make(chan struct{})
		ks.inflight, ks.lastTry = ch, ks.now()
		ks.mu.Unlock()

		fctx, cancel := context.WithTimeout(ctx, ks.fetchTimeout)
		keys, maxAge, err := ks.fetch(fctx)
		cancel()
		ks.mu.Lock()
		switch {
		case err != nil && ctx.Err() != nil:
			// The caller went away: that says nothing of the issuer.
		case err != nil:
			if errors.Is(err, context.DeadlineExceeded) {
				err = fmt.Errorf("%w (no answer within %s)", err, ks.fetchTimeout)
			}
			ks.lastErr, ks.failing = err, true
			ks.downUntil = ks.now().Add(max(ks.minRefresh, issuerDownRetry))
			ks.noteFailureLocked(err, background)
		default:
			age := ks.maxAge
			if maxAge >= 0 && maxAge < age {
				age = max(maxAge, ks.minRefresh)
			}
			ks.keys, ks.expires, ks.lastErr, ks.failing = keys, ks.now().Add(age), nil, false
			if ks.outage > 0 && !ks.warned.IsZero() {
				ks.log.Info("authn: the issuer answers again; its keys are fetched", "issuer", ks.issuer,
					"failedFetches", ks.outage, "down", ks.now().Sub(ks.failingSince).Round(time.Second))
			}
			ks.outage, ks.warned, ks.warnedErr = 0, time.Time{}, ""
		}
		ks.inflight = nil
		keys = ks.keys
		ks.mu.Unlock()
		close(ch)
		return keys
	}
}

// noteFailureLocked counts a failed fetch and logs it when an operator
// needs to hear of it: the first failure a token waits for, the second in a
// row otherwise (the start-up fetch failing once, just before a relay that
// failed to start exits, is not news), a changed error, and every
// issuerWarnEvery while it lasts. It says whether tokens of the issuer are
// refused meanwhile (no keys yet) or still verified with the keys fetched
// last. ks.mu is held.
func (ks *keySet) noteFailureLocked(err error, background bool) {
	now := ks.now()
	if ks.outage == 0 {
		ks.failingSince = now
	}
	ks.outage++
	msg := err.Error()
	switch {
	case ks.warned.IsZero() && background && ks.outage < 2:
		return
	case !ks.warned.IsZero() && msg == ks.warnedErr && now.Sub(ks.warned) < issuerWarnEvery:
		return
	}
	ks.warned, ks.warnedErr = now, msg
	effect := "the keys fetched last stay in use"
	if len(ks.keys) == 0 {
		effect = "no keys were ever fetched, so every token of this issuer is refused until it answers"
	}
	ks.log.Warn("authn: fetching the issuer's keys failed; "+effect+"; check that the issuer URL is right and reachable from here",
		"issuer", ks.issuer, "err", err, "failedFetches", ks.outage,
		"since", ks.failingSince.UTC().Format(time.RFC3339), "retryEvery", max(ks.minRefresh, issuerDownRetry),
		"nextWarningUnlessTheErrorChanges", issuerWarnEvery)
}

func (ks *keySet) current() []jose.JSONWebKey {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.keys
}

// fetch reads the JWKS (finding its URL in the discovery document first)
// and its Cache-Control max-age (-1 when absent).
func (ks *keySet) fetch(ctx context.Context) ([]jose.JSONWebKey, time.Duration, error) {
	ks.mu.Lock()
	jwksURL := ks.jwksURL
	ks.mu.Unlock()
	if jwksURL == "" {
		var doc struct {
			Issuer  string `json:"issuer"`
			JWKSURI string `json:"jwks_uri"`
		}
		if _, err := ks.getJSON(ctx, ks.discoveryURL, &doc); err != nil {
			return nil, 0, fmt.Errorf("authn: issuer %q: discovery: %w", ks.issuer, err)
		}
		if doc.Issuer != ks.issuer {
			return nil, 0, fmt.Errorf("authn: issuer %q: the discovery document names issuer %q", ks.issuer, doc.Issuer)
		}
		if !strings.HasPrefix(doc.JWKSURI, "https://") {
			return nil, 0, fmt.Errorf("authn: issuer %q: the discovery document's jwks_uri %q is not https", ks.issuer, doc.JWKSURI)
		}
		jwksURL = doc.JWKSURI
		ks.mu.Lock()
		ks.jwksURL = jwksURL
		ks.mu.Unlock()
	}
	var set jose.JSONWebKeySet
	resp, err := ks.getJSON(ctx, jwksURL, &set)
	if err != nil {
		return nil, 0, fmt.Errorf("authn: issuer %q: keys: %w", ks.issuer, err)
	}
	keys := set.Keys[:0]
	for _, k := range set.Keys {
		if k.Valid() && k.IsPublic() && (k.Use == "" || k.Use == "sig") {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil, 0, fmt.Errorf("authn: issuer %q: %s holds no public signing key", ks.issuer, jwksURL)
	}
	return keys, cacheMaxAge(resp.Header.Get("Cache-Control")), nil
}

func (ks *keySet) getJSON(ctx context.Context, url string, v any) (*http.Response, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := ks.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if len(body) > maxJWKSBytes {
		return nil, fmt.Errorf("GET %s: more than %d bytes", url, maxJWKSBytes)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	return resp, nil
}

// cacheMaxAge reads max-age from a Cache-Control header: -1 when absent,
// 0 for no-cache or no-store.
func cacheMaxAge(h string) time.Duration {
	age := time.Duration(-1)
	for _, d := range strings.Split(h, ",") {
		d = strings.ToLower(strings.TrimSpace(d))
		switch {
		case d == "no-cache" || d == "no-store":
			return 0
		case strings.HasPrefix(d, "max-age="):
			if n, err := strconv.Atoi(strings.TrimPrefix(d, "max-age=")); err == nil && n >= 0 {
				age = time.Duration(n) * time.Second
			}
		}
	}
	return age
}

// prime fetches the keys until it succeeds or ctx ends, retrying every
// few seconds.
func (ks *keySet) prime(ctx context.Context) {
	for ks.healthy() != nil {
		ks.refresh(ctx, true)
		if ks.healthy() == nil {
			return
		}
		t := time.NewTimer(2 * time.Second)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
}

package authn_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/tether-k8s/tether/core/authn"
)

// rotatingIssuer publishes a JWKS the test changes, counts its fetches,
// and can fail them.
type rotatingIssuer struct {
	*issuer
	mu           sync.Mutex
	keys         map[string]*ecdsa.PrivateKey
	fetches      atomic.Int32
	down         atomic.Bool
	cacheControl string
}

func newRotatingIssuer(t *testing.T, cacheControl string) *rotatingIssuer {
	t.Helper()
	ri := &rotatingIssuer{issuer: &issuer{}, keys: map[string]*ecdsa.PrivateKey{}, cacheControl: cacheControl}
	ri.addKey(t, "k1")
	mux := http.NewServeMux()
	ri.srv = httptest.NewUnstartedServer(mux)
	ri.srv.StartTLS()
	t.Cleanup(ri.srv.Close)
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{"issuer": ri.srv.URL, "jwks_uri": ri.srv.URL + "/jwks"})
	})
	mux.HandleFunc("/jwks", func(w http.ResponseWriter, _ *http.Request) {
		ri.fetches.Add(1)
		if ri.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		ri.mu.Lock()
		var set jose.JSONWebKeySet
		for kid, k := range ri.keys {
			set.Keys = append(set.Keys, jose.JSONWebKey{Key: &k.PublicKey, KeyID: kid, Algorithm: "ES256", Use: "sig"})
		}
		ri.mu.Unlock()
		if ri.cacheControl != "" {
			w.Header().Set("Cache-Control", ri.cacheControl)
		}
		_ = json.NewEncoder(w).Encode(set)
	})
	ri.caPEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ri.srv.Certificate().Raw}))
	return ri
}

func (ri *rotatingIssuer) addKey(t *testing.T, kid string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ri.mu.Lock()
	defer ri.mu.Unlock()
	ri.keys[kid] = k
}

func (ri *rotatingIssuer) retire(kid string) {
	ri.mu.Lock()
	defer ri.mu.Unlock()
	delete(ri.keys, kid)
}

func (ri *rotatingIssuer) token(t *testing.T, kid string) string {
	t.Helper()
	ri.mu.Lock()
	k := ri.keys[kid]
	ri.mu.Unlock()
	return signWith(t, jose.SigningKey{Algorithm: jose.ES256, Key: k}, kid, ri.claims("cluster-a", nil))
}

// eventually polls cond every 100 ms for up to 15 s.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestKeyRotationAndRetirement(t *testing.T) {
	ri := newRotatingIssuer(t, "max-age=1")
	a := newAuthn(t, configYAML(ri.issuer, "cluster-a", "oidc:"))
	old := ri.token(t, "k1")
	if _, err := a.AuthenticateToken(t.Context(), old); err != nil {
		t.Fatalf("k1 token: %v", err)
	}
	// A new key works at once: its unknown kid makes the key set refetch.
	ri.addKey(t, "k2")
	if _, err := a.AuthenticateToken(t.Context(), ri.token(t, "k2")); err != nil {
		t.Fatalf("k2 token right after rotation: %v", err)
	}
	if _, err := a.AuthenticateToken(t.Context(), old); err != nil {
		t.Fatalf("k1 token after rotation: %v", err)
	}
	// A retired key stops working once the fetched keys expire (the JWKS
	// says max-age=1).
	ri.retire("k1")
	eventually(t, "the retired key's token is refused", func() error {
		_, err := a.AuthenticateToken(t.Context(), old)
		if err == nil {
			return errorString("still accepted")
		}
		if !strings.Contains(err.Error(), "not in the issuer's JWKS") {
			t.Fatalf("refusal does not say the key is unknown: %v", err)
		}
		return nil
	})
}

type errorString string

func (e errorString) Error() string { return string(e) }

func TestKeysExpireWithoutCacheControl(t *testing.T) {
	ri := newRotatingIssuer(t, "")
	a := newAuthn(t, configYAML(ri.issuer, "cluster-a", "oidc:"), func(c *authn.Config) { c.JWKSMaxAge = 500 * time.Millisecond })
	old := ri.token(t, "k1")
	if _, err := a.AuthenticateToken(t.Context(), old); err != nil {
		t.Fatal(err)
	}
	ri.addKey(t, "k2")
	ri.retire("k1")
	eventually(t, "the retired key's token is refused after JWKSMaxAge", func() error {
		if _, err := a.AuthenticateToken(t.Context(), old); err == nil {
			return errorString("still accepted")
		}
		return nil
	})
}

func TestIssuerOutageKeepsTheLastKeys(t *testing.T) {
	ri := newRotatingIssuer(t, "max-age=1")
	a := newAuthn(t, configYAML(ri.issuer, "cluster-a", "oidc:"))
	tok := ri.token(t, "k1")
	if _, err := a.AuthenticateToken(t.Context(), tok); err != nil {
		t.Fatal(err)
	}
	ri.down.Store(true)
	before := ri.fetches.Load()
	eventually(t, "a refetch was tried", func() error {
		if _, err := a.AuthenticateToken(t.Context(), tok); err != nil {
			t.Fatalf("with the JWKS endpoint down, a token of a key fetched before is refused: %v", err)
		}
		if ri.fetches.Load() == before {
			return errorString("no refetch yet")
		}
		return nil
	})
}

func TestUnknownKidStormIsRateLimited(t *testing.T) {
	ri := newRotatingIssuer(t, "max-age=3600")
	const minRefresh = 500 * time.Millisecond
	a := newAuthn(t, configYAML(ri.issuer, "cluster-a", "oidc:"), func(c *authn.Config) { c.JWKSMinRefresh = minRefresh })
	forger, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	start, before := time.Now(), ri.fetches.Load()
	var wg sync.WaitGroup
	var accepted atomic.Int32
	for i := range 200 {
		tok := signWith(t, jose.SigningKey{Algorithm: jose.ES256, Key: forger}, "unknown-"+string(rune('a'+i%26)), ri.claims("cluster-a", nil))
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, err := a.AuthenticateToken(ctx, tok); err == nil {
				accepted.Add(1)
			}
		})
	}
	wg.Wait()
	if accepted.Load() != 0 {
		t.Fatalf("%d forged tokens accepted", accepted.Load())
	}
	// At most one fetch per minRefresh, plus the one at the start.
	fetches, allowed := ri.fetches.Load()-before, int32(time.Since(start)/minRefresh)+1
	t.Logf("200 tokens with unknown kids: %d JWKS fetches in %v", fetches, time.Since(start).Round(time.Millisecond))
	if fetches > allowed {
		t.Fatalf("%d JWKS fetches for 200 unknown kids in %v; at most %d allowed", fetches, time.Since(start), allowed)
	}
}

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
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/tether-k8s/tether/core/authn"
)

// hangingIssuer is an issuer whose discovery or JWKS endpoint, once told
// to, accepts requests and never answers them (until the test ends).
type hangingIssuer struct {
	*issuer
	key             *ecdsa.PrivateKey
	hangDiscovery   atomic.Bool
	hangJWKS        atomic.Bool
	requests, hangs atomic.Int32
}

func newHangingIssuer(t *testing.T) *hangingIssuer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	hi := &hangingIssuer{issuer: &issuer{}, key: k}
	release := make(chan struct{})
	hang := func(r *http.Request) {
		hi.hangs.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		hi.requests.Add(1)
		if hi.hangDiscovery.Load() {
			hang(r)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"issuer": hi.srv.URL, "jwks_uri": hi.srv.URL + "/jwks"})
	})
	mux.HandleFunc("/jwks", func(w http.ResponseWriter, r *http.Request) {
		hi.requests.Add(1)
		if hi.hangJWKS.Load() {
			hang(r)
			return
		}
		w.Header().Set("Cache-Control", "max-age=1")
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &k.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	})
	hi.srv = httptest.NewUnstartedServer(mux)
	hi.srv.StartTLS()
	t.Cleanup(hi.srv.Close)
	t.Cleanup(func() { close(release) }) // before Close, which waits for handlers
	hi.caPEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: hi.srv.Certificate().Raw}))
	return hi
}

func (hi *hangingIssuer) token(t *testing.T, kid string) string {
	t.Helper()
	return signWith(t, jose.SigningKey{Algorithm: jose.ES256, Key: hi.key}, kid, hi.claims("cluster-a", nil))
}

// authenticateWithin verifies tok with no deadline of the caller's own and
// fails the test unless it returns within limit; it returns the error.
func authenticateWithin(t *testing.T, a *authn.Authenticator, tok string, limit time.Duration) (time.Duration, error) {
	t.Helper()
	start := time.Now()
	done := make(chan error, 1)
	go func() { _, err := a.AuthenticateToken(context.Background(), tok); done <- err }()
	select {
	case err := <-done:
		return time.Since(start), err
	case <-time.After(limit):
		t.Fatalf("token verification still waiting after %v for an issuer that never answers", limit)
		return 0, nil
	}
}

// TestSlowIssuerBoundsVerification: an issuer whose discovery or JWKS
// endpoint accepts and never answers cannot hang verification: it fails
// within JWKSFetchTimeout with an error saying the keys could not be
// fetched, and while the issuer is known down later tokens do not each
// wait that long again, nor leave goroutines behind.
func TestSlowIssuerBoundsVerification(t *testing.T) {
	const bound = 500 * time.Millisecond
	t.Run("discovery never answers", func(t *testing.T) {
		hi := newHangingIssuer(t)
		hi.hangDiscovery.Store(true)
		ac, err := authn.LoadConfig([]byte(configYAML(hi.issuer, "cluster-a", "oidc:")))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		a, err := authn.New(ctx, authn.Config{Authentication: ac, JWKSFetchTimeout: bound})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cancel(); a.Close() })
		tok := hi.token(t, "k1")
		took, err := authenticateWithin(t, a, tok, 4*bound)
		if err == nil || !strings.Contains(err.Error(), "could not be fetched") {
			t.Fatalf("verification with the issuer's discovery hanging: %v after %v, want an error saying its keys could not be fetched", err, took)
		}
		if strings.Contains(err.Error(), tok) {
			t.Fatal("the error contains the token")
		}
		t.Logf("first verification: %v: %v", took.Round(time.Millisecond), err)
		base := runtime.NumGoroutine()
		var wg sync.WaitGroup
		var slow atomic.Int32
		for range 50 {
			wg.Go(func() {
				if took, _ := authenticateWithin(t, a, tok, 4*bound); took > bound/2 {
					slow.Add(1)
				}
			})
		}
		wg.Wait()
		if n := slow.Load(); n > 0 {
			t.Fatalf("%d of 50 verifications waited over %v although the issuer was known down", n, bound/2)
		}
		eventually(t, "goroutines back to the baseline", func() error {
			if n := runtime.NumGoroutine(); n > base+5 {
				return errorString("goroutines: " + itoa(n) + ", baseline " + itoa(base))
			}
			return nil
		})
	})
	t.Run("keys fetched, then the JWKS never answers", func(t *testing.T) {
		hi := newHangingIssuer(t)
		a := newAuthn(t, configYAML(hi.issuer, "cluster-a", "oidc:"), func(c *authn.Config) { c.JWKSFetchTimeout = bound })
		tok := hi.token(t, "k1")
		if _, err := a.AuthenticateToken(t.Context(), tok); err != nil {
			t.Fatal(err)
		}
		hi.hangJWKS.Store(true)
		time.Sleep(1100 * time.Millisecond) // the keys' max-age=1 passes
		// The first verification after may wait for the bound; the keys
		// fetched before stay in use.
		if took, err := authenticateWithin(t, a, tok, 4*bound); err != nil {
			t.Fatalf("a token of the key fetched before, with the JWKS hanging: %v after %v", err, took)
		}
		for i := range 10 {
			took, err := authenticateWithin(t, a, tok, 4*bound)
			if err != nil || took > bound/2 {
				t.Fatalf("verification %d with the JWKS known down: %v after %v, want the last keys at once", i, err, took)
			}
			took, err = authenticateWithin(t, a, hi.token(t, "k2"), 4*bound)
			if err == nil || took > bound/2 || !strings.Contains(err.Error(), "could not be fetched") {
				t.Fatalf("an unknown kid with the JWKS known down: %v after %v, want a refusal at once saying the keys could not be fetched", err, took)
			}
		}
		if hi.hangs.Load() == 0 {
			t.Fatal("the key set never tried the hanging JWKS")
		}
	})
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

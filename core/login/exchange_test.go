package login

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
)

func TestTokenForExchangesTheLogin(t *testing.T) {
	t.Parallel()
	op := newFakeOP(t)
	clk := op.clock
	c := newClient(t, op, t.TempDir(), clk, nil)
	login := deviceLogin(t, c, op)

	relay, err := c.TokenFor(t.Context(), "tether:relay")
	if err != nil {
		t.Fatal(err)
	}
	prod, err := c.TokenFor(t.Context(), "tether:cluster:prod")
	if err != nil {
		t.Fatal(err)
	}
	for aud, tok := range map[string]string{"tether:relay": relay, "tether:cluster:prod": prod} {
		if tok == login.IDToken {
			t.Fatalf("TokenFor(%s) returned the login's own ID token", aud)
		}
		if got := audOf(t, tok); got[0] != aud {
			t.Fatalf("TokenFor(%s): aud %v", aud, got)
		}
	}
	// Kept in memory until close to expiry: one exchange per audience.
	if again, _ := c.TokenFor(t.Context(), "tether:relay"); again != relay || op.exchanges != 2 {
		t.Fatalf("a second TokenFor exchanged again (%d exchanges)", op.exchanges)
	}
	clk.advance(9*time.Minute + 30*time.Second)
	if again, err := c.TokenFor(t.Context(), "tether:relay"); err != nil || again == relay {
		t.Fatalf("close to expiry: %v, same token %v", err, again == relay)
	}
	// TokenFor("") is the login's ID token.
	if tok, err := c.TokenFor(t.Context(), ""); err != nil || tok == relay {
		t.Fatalf("TokenFor(\"\"): %v", err)
	}
}

func TestTokenForRefusesWhatTheProviderShouldNotHaveIssued(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		edit      func(*fakeOP)
		wantErr   string
		errorIsNo bool // wants ErrExchangeUnsupported
	}{
		{name: "attack: a token for another audience than asked", edit: func(op *fakeOP) { op.exchangeAud = "tether:cluster:staging" },
			wantErr: `not for client "tether:cluster:prod"`},
		{name: "attack: a token for another user", edit: func(op *fakeOP) { op.exchangeSub = "mallory" },
			wantErr: `is for "mallory", the login is "alice"`},
		{name: "a provider that does not offer the grant", edit: func(op *fakeOP) {
			op.discovery = func(d map[string]any) { d["grant_types_supported"] = []string{"authorization_code", "refresh_token"} }
		}, wantErr: "does not offer the token exchange grant", errorIsNo: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			op := newFakeOP(t)
			c := newClient(t, op, t.TempDir(), op.clock, nil)
			op.mu.Lock()
			tc.edit(op)
			op.mu.Unlock()
			deviceLogin(t, c, op)
			_, err := c.TokenFor(t.Context(), "tether:cluster:prod")
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || errors.Is(err, ErrExchangeUnsupported) != tc.errorIsNo {
				t.Fatalf("got %v, want %q (ErrExchangeUnsupported: %v)", err, tc.wantErr, tc.errorIsNo)
			}
		})
	}
}

func audOf(t *testing.T, tok string) []string {
	t.Helper()
	p, err := jwt.ParseSigned(tok, asymmetric)
	if err != nil {
		t.Fatal(err)
	}
	var c Claims
	if err := p.UnsafeClaimsWithoutVerification(&c); err != nil {
		t.Fatal(err)
	}
	return c.Audience
}

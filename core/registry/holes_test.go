package registry_test

import (
	"crypto"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tether-k8s/tether/core/registry"
)

// renewWith renews cur with a CSR for key.
func (f *fixture) renewWith(t *testing.T, cur *x509.Certificate, key crypto.Signer) (*x509.Certificate, error) {
	t.Helper()
	cred, err := f.reg.Renew(cur, csrFor(t, key, "ignored"))
	if err != nil {
		return nil, err
	}
	return parseCert(t, cred.CertPEM), nil
}

// Issue 15, hole 7: whoever holds a copy of a credential renewed it four
// times, pushed the owner's serial out and renewed forever. Renewal now
// replaces the presenting certificate, and a second renewal of one serial
// with another key is theft: the whole chain is revoked, and the error
// says so.
func TestACopiedCredentialCannotLockOutItsOwner(t *testing.T) {
	forBackends(t, func(t *testing.T, open func(t *testing.T) *fixture) {
		f := open(t)
		owner := f.join(t, mustCreate(t, f, "prod"))

		// The thief holds a copy of the owner's certificate (and key) and
		// renews from it, again and again.
		cur := owner
		var stolen []*x509.Certificate
		for range 4 {
			_, key := csr(t, "prod")
			next, err := f.renewWith(t, cur, key)
			if err != nil {
				t.Fatalf("thief's renewal: %v", err)
			}
			stolen = append(stolen, next)
			cur = next
		}

		// The owner renews from its own certificate, with its own new key.
		_, ownerKey := csr(t, "prod")
		_, err := f.renewWith(t, owner, ownerKey)
		if !errors.Is(err, registry.ErrCredentialReused) {
			t.Fatalf("owner's renewal after the thief's = %v, want ErrCredentialReused", err)
		}
		if !strings.Contains(err.Error(), "rotate prod") {
			t.Fatalf("the theft error does not say what to do: %v", err)
		}
		for i, c := range append([]*x509.Certificate{owner}, stolen...) {
			if _, err := f.reg.VerifyPeer(c); !errors.Is(err, registry.ErrCredentialRevoked) {
				t.Errorf("certificate %d of the stolen chain: VerifyPeer = %v, want ErrCredentialRevoked", i, err)
			}
		}
		_, key := csr(t, "prod")
		if _, err := f.renewWith(t, cur, key); err == nil {
			t.Fatal("the thief renewed again after the theft was detected")
		}
		if !strings.Contains(f.logs.String(), "level=ERROR") || !strings.Contains(f.logs.String(), "renewed twice") {
			t.Fatalf("the theft is not logged as an error:\n%s", f.logs)
		}
	})
}

// Renewal replaces the presenting certificate: after a grace for sessions
// dialled while the answer travelled, the old one is refused.
func TestRenewReplacesThePresentingCertificate(t *testing.T) {
	forBackends(t, func(t *testing.T, open func(t *testing.T) *fixture) {
		f := open(t)
		first := f.join(t, mustCreate(t, f, "prod"))
		_, key := csr(t, "prod")
		second, err := f.renewWith(t, first, key)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.reg.VerifyPeer(first); err != nil {
			t.Fatalf("within the grace, the renewed certificate is refused: %v", err)
		}
		// The answer was lost: the agent retries with the same old certificate
		// and the same new key. That is no theft, and it gets the same
		// credential again.
		again, err := f.renewWith(t, first, key)
		if err != nil {
			t.Fatalf("retry of a renewal whose answer was lost: %v", err)
		}
		if again.SerialNumber.Cmp(second.SerialNumber) != 0 {
			t.Fatalf("the retry got serial %x, want the first answer's %x", again.SerialNumber, second.SerialNumber)
		}
		f.clk.Advance(registry.DefaultRenewalGrace)
		if _, err := f.reg.VerifyPeer(first); !errors.Is(err, registry.ErrCredentialRevoked) {
			t.Fatalf("after the grace, the renewed certificate: VerifyPeer = %v, want ErrCredentialRevoked", err)
		}
		// A late retry with the same key still gets the same credential.
		if again, err = f.renewWith(t, first, key); err != nil || again.SerialNumber.Cmp(second.SerialNumber) != 0 {
			t.Fatalf("late retry = %v, %v; want serial %x", again, err, second.SerialNumber)
		}
		for _, c := range []*x509.Certificate{second, again} {
			if _, err := f.reg.VerifyPeer(c); err != nil {
				t.Fatalf("the renewed certificate is refused: %v", err)
			}
		}
		// The chain goes on: renewing the new one works, and the superseded
		// one cannot renew with another key.
		_, key3 := csr(t, "prod")
		if _, err := f.renewWith(t, second, key3); err != nil {
			t.Fatal(err)
		}
		f.clk.Advance(time.Minute)
		_, key4 := csr(t, "prod")
		if _, err := f.renewWith(t, first, key4); !errors.Is(err, registry.ErrCredentialReused) {
			t.Fatalf("renewing a superseded certificate with a new key = %v, want ErrCredentialReused", err)
		}
	})
}

// Issue 15, hole 9: any tether-join.-prefixed junk sent to the
// unauthenticated join endpoint cost a write transaction (and an fsync).
// Only a token that exists may cost a write.
func TestBogusJoinsCostNoWrite(t *testing.T) {
	forBackends(t, func(t *testing.T, open func(t *testing.T) *fixture) {
		f := open(t)
		tok := mustCreate(t, f, "prod")
		before := registry.WriteTransactions(f.reg)
		req, _ := csr(t, "prod")
		for i := range 200 {
			junk := registry.JoinTokenPrefix + strings.Repeat("x", i%64+1)
			if _, err := f.reg.Join(junk, req); !errors.Is(err, registry.ErrInvalidJoinToken) {
				t.Fatalf("Join(junk) = %v", err)
			}
		}
		if after := registry.WriteTransactions(f.reg); after != before {
			t.Fatalf("200 bogus joins cost %d write transactions, want 0", after-before)
		}
		f.join(t, tok)
		if after := registry.WriteTransactions(f.reg); after == before {
			t.Fatal("a real join wrote nothing: the counter counts nothing")
		}
	})
}

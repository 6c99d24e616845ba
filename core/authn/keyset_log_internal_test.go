package authn

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestAnIssuerOutageIsLoggedOnceAndItsEnd: an unreachable issuer was logged
// every few seconds for as long as it was down, always saying "the last ones
// stay in use" although there were none, and a relay that failed to start
// logged it too. Now: the start-up fetch failing once is quiet, the outage is
// logged once with what it means, again only when the error changes or
// issuerWarnEvery has passed, and its end once.
func TestAnIssuerOutageIsLoggedOnceAndItsEnd(t *testing.T) {
	var down atomic.Bool
	down.Store(true)
	var srv *httptest.Server
	srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			http.Error(w, "down", http.StatusBadGateway)
			return
		}
		switch r.URL.Path {
		case "/.well-known/openid-configuration":
			_, _ = w.Write([]byte(`{"issuer":"` + srv.URL + `","jwks_uri":"` + srv.URL + `/jwks"}`))
		default:
			_, _ = w.Write([]byte(`{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"k1","use":"sig"}]}`))
		}
	}))
	defer srv.Close()
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	ks := newKeySet(srv.URL, "", srv.Client(), []string{"ES256"}, DefaultJWKSMaxAge, DefaultJWKSMinRefresh, DefaultJWKSFetchTimeout, log)
	clock := time.Unix(1_800_000_000, 0)
	ks.now = func() time.Time { return clock }
	ctx := context.Background()
	lines := func() []string {
		s := strings.TrimSpace(logs.String())
		if s == "" {
			return nil
		}
		return strings.Split(s, "\n")
	}

	// The start-up fetch fails once: nothing logged yet.
	ks.refresh(ctx, true)
	if l := lines(); len(l) != 0 {
		t.Fatalf("the first start-up failure was logged: %q", l)
	}
	// It keeps failing for four minutes, a fetch every issuerDownRetry:
	// logged once, saying tokens are refused (no keys were ever fetched).
	for range 4 * 60 / 5 {
		clock = clock.Add(issuerDownRetry)
		ks.refresh(ctx, true)
	}
	l := lines()
	if len(l) != 1 {
		t.Fatalf("four minutes of outage logged %d lines, want 1:\n%s", len(l), logs.String())
	}
	if !strings.Contains(l[0], "every token of this issuer is refused") || strings.Contains(l[0], "stay in use") {
		t.Errorf("the warning does not say what the outage means with no keys: %s", l[0])
	}
	// Past issuerWarnEvery it is logged again, with the count.
	for range 2 * 60 / 5 {
		clock = clock.Add(issuerDownRetry)
		ks.refresh(ctx, true)
	}
	if l := lines(); len(l) != 2 || !strings.Contains(l[1], "failedFetches=") {
		t.Fatalf("after issuerWarnEvery, want a second warning with the count, got:\n%s", logs.String())
	}
	// The issuer answers: one line says so.
	down.Store(false)
	clock = clock.Add(issuerDownRetry)
	ks.refresh(ctx, true)
	if ks.healthy() != nil {
		t.Fatalf("the keys were not fetched once the issuer answered: %v", ks.healthy())
	}
	if l := lines(); len(l) != 3 || !strings.Contains(l[2], "answers again") {
		t.Fatalf("the end of the outage was not logged once:\n%s", logs.String())
	}
	// Down again, with keys in hand, and a token waiting: logged at once,
	// saying the last keys stay in use.
	down.Store(true)
	clock = clock.Add(DefaultJWKSMaxAge + time.Second)
	ks.refresh(ctx, false)
	if l := lines(); len(l) != 4 || !strings.Contains(l[3], "the keys fetched last stay in use") {
		t.Fatalf("a failure a token waits for, with keys in hand, was not logged as such:\n%s", logs.String())
	}
}

package relay

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"

	apiserverapi "k8s.io/apiserver/pkg/apis/apiserver"

	"github.com/tether-k8s/tether/core/relayapi"
)

// TestAuditRingKeepsTunnelLines: the console's ring keeps the latest
// tunnel lines, newest first, with their attributes, and passes every
// record on to the audit log's handler.
func TestAuditRingKeepsTunnelLines(t *testing.T) {
	var out strings.Builder
	ring := newAuditRing(3)
	log := slog.New(auditTee{ring: ring, inner: slog.NewTextHandler(&out, nil)}).With("audit", true)
	for i := range 5 {
		log.Info("relay: tunnel", "request", fmt.Sprint(i), "cluster", "prod")
		log.Info("relay: admin request", "user", "root")
	}
	got := ring.lines()
	if len(got) != 3 || got[0].Attrs[0] != "request=4" || got[2].Attrs[0] != "request=2" || got[0].Attrs[1] != "cluster=prod" {
		t.Errorf("ring = %+v, want requests 4, 3, 2", got)
	}
	if n := strings.Count(out.String(), "audit=true"); n != 10 {
		t.Errorf("the audit log got %d lines, want all 10:\n%s", n, out.String())
	}
	if (*auditRing)(nil).lines() != nil {
		t.Error("a nil ring has lines")
	}
}

// TestCheckConsole: a console that could sign no one in, or whose client
// is another hop's audience, is refused before the relay starts.
func TestCheckConsole(t *testing.T) {
	login := relayapi.LoginSettings{Issuer: "https://op.example", ClientID: "tether"}
	ac := &apiserverapi.AuthenticationConfiguration{JWT: []apiserverapi.JWTAuthenticator{{Issuer: apiserverapi.Issuer{
		URL: "https://op.example", Audiences: []string{"tether", "tether:relay", "tether-console"}}}}}
	ok := ConsoleConfig{RedirectURL: "https://relay.example:8443/ui/callback"}
	if err := checkConsole(ok, login, "", ac); err != nil {
		t.Fatalf("the login's client: %v", err)
	}
	if err := checkConsole(ConsoleConfig{ClientID: "tether-console", RedirectURL: ok.RedirectURL}, login, "", ac); err != nil {
		t.Fatalf("a client of its own: %v", err)
	}
	for name, tc := range map[string]struct {
		c     ConsoleConfig
		login relayapi.LoginSettings
		want  string
	}{
		"no login issuer":          {ok, relayapi.LoginSettings{}, "--login-issuer"},
		"a client not accepted":    {ConsoleConfig{ClientID: "other", RedirectURL: ok.RedirectURL}, login, "not among the audiences"},
		"a cluster's audience":     {ConsoleConfig{ClientID: "tether:cluster:prod", RedirectURL: ok.RedirectURL}, login, "a cluster's audience"},
		"the admin audience":       {ConsoleConfig{ClientID: DefaultAdminAudience, RedirectURL: ok.RedirectURL}, login, "admin API's audience"},
		"an http redirect":         {ConsoleConfig{RedirectURL: "http://relay.example/ui/callback"}, login, "RedirectURL"},
		"a redirect of no console": {ConsoleConfig{RedirectURL: "https://relay.example/callback"}, login, "RedirectURL"},
	} {
		if err := checkConsole(tc.c, tc.login, "", ac); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
}

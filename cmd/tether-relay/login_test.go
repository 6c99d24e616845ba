package main

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/relay"
	"github.com/tether-k8s/tether/core/relayapi"
	"github.com/tether-k8s/tether/core/tunnel"
)

// TestLoginFlags: the login flags must name an issuer and an audience of
// --authentication-config, and are refused before anything is opened.
func TestLoginFlags(t *testing.T) {
	dir := t.TempDir()
	authnFile := filepath.Join(dir, "authn.yaml")
	if err := os.WriteFile(authnFile, []byte(`apiVersion: apiserver.config.k8s.io/v1
kind: AuthenticationConfiguration
jwt:
- issuer:
    url: https://op.example.com
    audiences: [tether:relay, tether]
    audienceMatchPolicy: MatchAny
  claimMappings:
    username: {claim: sub, prefix: "op:"}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		login    relayapi.LoginSettings
		audience string // --login-audience
		wantErr  string
	}{
		{name: "none", login: relayapi.LoginSettings{}},
		{name: "trusted issuer and audience", login: relayapi.LoginSettings{Issuer: "https://op.example.com", ClientID: "tether"}},
		{name: "issuer not trusted", login: relayapi.LoginSettings{Issuer: "https://other.example.com", ClientID: "tether"}, wantErr: "--login-issuer https://other.example.com, --login-client-id tether: relay: login issuer https://other.example.com is not an issuer of the authentication configuration"},
		{name: "client not an audience", login: relayapi.LoginSettings{Issuer: "https://op.example.com", ClientID: "kubectl"}, wantErr: "--login-issuer https://op.example.com, --login-client-id kubectl: relay: login client ID \"kubectl\" is not among the audiences"},
		{name: "issuer alone", login: relayapi.LoginSettings{Issuer: "https://op.example.com"}, wantErr: "go together"},
		{name: "the relay's audience accepted", login: relayapi.LoginSettings{Issuer: "https://op.example.com", ClientID: "tether"}, audience: "tether:relay"},
		{name: "the relay's audience accepted, no login", audience: "tether:relay"},
		{name: "the relay's audience not accepted (the default before the upgrade)", audience: "tether:relay-other",
			wantErr: "the relay's audience tether:relay-other (--login-audience) is not among the audiences the authentication configuration accepts from any issuer ([tether:relay tether])"},
		{name: "the relay's audience not accepted from the login issuer", login: relayapi.LoginSettings{Issuer: "https://op.example.com", ClientID: "tether"}, audience: "tether:relay-other",
			wantErr: "accepts from the login issuer https://op.example.com"},
		{name: "attack: the relay's audience is a cluster's (the relay would accept what agents saw)", audience: "tether:cluster:prod", wantErr: "is a cluster's"},
		{name: "attack: the relay's audience is the admin API's", audience: "tether-admin", wantErr: "is the admin API's"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := &serveOptions{hostnames: []string{"relay.test"}, authnConfig: authnFile, listen: "127.0.0.1:0", agentListen: "127.0.0.1:0",
				loginIssuer: tc.login.Issuer, loginClientID: tc.login.ClientID, loginAudience: tc.audience, streamWindow: tunnel.DefaultStreamWindow,
				streamMemory: relay.DefaultStreamMemory, maxStreamsPerCluster: 1, maxStreamsPerCaller: 1, maxSessionsPerCluster: 1, maxSessionsPerCredential: 1}
			data := filepath.Join(dir, "relay.db")
			_, err := o.options(data, "", &storeOptions{store: "bbolt"})
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("options: %v, want %q", err, tc.wantErr)
			}
			if _, serr := os.Stat(data); !errors.Is(serr, os.ErrNotExist) {
				t.Fatalf("checking the flags created %s (%v): nothing may be opened before the flags are good", data, serr)
			}
		})
	}
}

// TestAnInvalidAuthenticationConfigIsRefusedFirst: a configuration that
// decodes but that kube-apiserver's validation refuses (a CEL expression
// that does not compile, two audiences without a match policy) was found
// only once the relay had created its --data store and CA, and the error
// did not name the flag or the file.
func TestAnInvalidAuthenticationConfigIsRefusedFirst(t *testing.T) {
	dir := t.TempDir()
	authnFile := filepath.Join(dir, "authn.yaml")
	if err := os.WriteFile(authnFile, []byte(`apiVersion: apiserver.config.k8s.io/v1
kind: AuthenticationConfiguration
jwt:
- issuer:
    url: https://op.example.com
    audiences: [tether]
  claimMappings:
    username: {expression: "claims.sub +"}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	o := &serveOptions{hostnames: []string{"relay.test"}, authnConfig: authnFile, listen: "127.0.0.1:0", agentListen: "127.0.0.1:0",
		streamWindow: tunnel.DefaultStreamWindow, streamMemory: relay.DefaultStreamMemory, maxStreamsPerCluster: 1, maxStreamsPerCaller: 1,
		maxSessionsPerCluster: 1, maxSessionsPerCredential: 1}
	data := filepath.Join(dir, "state", "relay.db")
	_, err := o.options(data, "", &storeOptions{store: "bbolt"})
	if err == nil || !strings.HasPrefix(err.Error(), "--authentication-config "+authnFile+": ") || !strings.Contains(err.Error(), "compilation failed") {
		t.Fatalf("options: %v, want the flag, the file and the compile error", err)
	}
	if _, serr := os.Stat(filepath.Dir(data)); !errors.Is(serr, os.ErrNotExist) {
		t.Fatalf("checking the flags created %s (%v): nothing may be created before the configuration is good", filepath.Dir(data), serr)
	}
}

// TestJoinLimitFlags: --join-rate-total and --join-burst-total reach the
// relay's join limiter, default to the registry's totals, and a negative
// one is refused before anything is opened.
func TestJoinLimitFlags(t *testing.T) {
	c := newServeCommand(new(string), func() string { return "" }, &storeOptions{})
	if f := c.Flags().Lookup("join-rate-total"); f == nil || f.DefValue != strconv.FormatFloat(registry.DefaultJoinsTotal, 'g', -1, 64) {
		t.Fatalf("--join-rate-total: %+v, want a flag defaulting to %g", f, registry.DefaultJoinsTotal)
	}
	dir := t.TempDir()
	authnFile := filepath.Join(dir, "authn.yaml")
	if err := os.WriteFile(authnFile, []byte("apiVersion: apiserver.config.k8s.io/v1\nkind: AuthenticationConfiguration\njwt:\n- issuer:\n    url: https://op.example.com\n    audiences: [tether:relay]\n  claimMappings:\n    username: {claim: sub, prefix: \"op:\"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o := serveOptions{hostnames: []string{"relay.test"}, authnConfig: authnFile, listen: "127.0.0.1:0", agentListen: "127.0.0.1:0",
		loginAudience: "tether:relay", streamWindow: tunnel.DefaultStreamWindow, streamMemory: relay.DefaultStreamMemory,
		maxStreamsPerCluster: 1, maxStreamsPerCaller: 1, maxSessionsPerCluster: 1, maxSessionsPerCredential: 1,
		joinRate: 1, joinBurst: 5, joinRateTotal: 1000, joinBurstTotal: 2000}
	opts, err := o.options(filepath.Join(dir, "relay.db"), "", &storeOptions{store: "bbolt"})
	if err != nil {
		t.Fatal(err)
	}
	if want := (registry.JoinLimitConfig{PerClient: 1, PerClientBurst: 5, Total: 1000, TotalBurst: 2000}); opts.JoinLimit != want {
		t.Fatalf("JoinLimit %+v, want %+v", opts.JoinLimit, want)
	}
	o.joinRateTotal = -1
	if _, err := o.options(filepath.Join(dir, "relay.db"), "", &storeOptions{store: "bbolt"}); err == nil || !strings.Contains(err.Error(), "--join-rate-total -1") {
		t.Fatalf("a negative --join-rate-total: %v", err)
	}
}

package main

import (
	"context"
	"encoding/pem"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tether-k8s/tether/core/identity"
	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/relay"
	"github.com/tether-k8s/tether/core/relayapi"
)

// relayWithLogin serves a real relay handler publishing l, over TLS, and
// returns its URL and a file holding its CA.
func relayWithLogin(t *testing.T, l relayapi.LoginSettings) (string, string) {
	t.Helper()
	reg, err := registry.Open(registry.Config{Path: filepath.Join(t.TempDir(), "reg.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	router, err := relay.NewRouter(relay.RouterConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = router.Close() })
	srv, err := relay.NewServer(relay.ServerConfig{Registry: reg, Router: router, Authenticator: nobody{}, Login: l})
	if err != nil {
		t.Fatal(err)
	}
	api := httptest.NewTLSServer(srv.Handler())
	t.Cleanup(api.Close)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: api.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return api.URL, ca
}

func TestLoginSettingsFromTheRelay(t *testing.T) {
	published := relayapi.LoginSettings{Issuer: "https://op.example.com", ClientID: "tether"}
	u, ca := relayWithLogin(t, published)
	o := &loginOptions{relayURL: u, relayCA: ca}
	got, err := o.settings(context.Background())
	if err != nil || got != published {
		t.Fatalf("settings from the relay: %+v, %v", got, err)
	}
	o.clientID = "other"
	if got, err = o.settings(context.Background()); err != nil || got.ClientID != "other" || got.Issuer != published.Issuer {
		t.Fatalf("--client-id overrides the relay's: %+v, %v", got, err)
	}
	// Without --relay-ca the relay's private CA is not trusted.
	if _, err := (&loginOptions{relayURL: u}).settings(context.Background()); err == nil {
		t.Fatal("a relay with an unknown CA was trusted")
	}

	u, ca = relayWithLogin(t, relayapi.LoginSettings{})
	_, err = (&loginOptions{relayURL: u, relayCA: ca}).settings(context.Background())
	if err == nil || !strings.Contains(err.Error(), "--login-issuer") || !strings.Contains(err.Error(), "--issuer and --client-id") {
		t.Fatalf("a relay publishing nothing: %v", err)
	}
	if _, err := (&loginOptions{}).settings(context.Background()); err == nil || !strings.Contains(err.Error(), "--relay") {
		t.Fatalf("no flags: %v", err)
	}
}

func TestLoginCommandQuoted(t *testing.T) {
	o := &loginOptions{relayURL: "https://relay.example.com:8443", relayCA: "/home/a b/ca.pem", browser: true}
	want := `tether-proxy login --relay https://relay.example.com:8443 --relay-ca '/home/a b/ca.pem' --browser`
	if got := o.command(); got != want {
		t.Errorf("command() = %s, want %s", got, want)
	}
}

// nobody refuses every token: GET /v1/login needs none.
type nobody struct{}

func (nobody) AuthenticateToken(context.Context, string) (identity.Result, error) {
	return identity.Result{}, errors.New("no token is valid here")
}

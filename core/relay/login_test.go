package relay_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/relay"
	"github.com/tether-k8s/tether/core/relayapi"
)

func TestLoginSettings(t *testing.T) {
	reg, err := registry.Open(registry.Config{Path: filepath.Join(t.TempDir(), "reg.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	router := newRouter(t, relay.RouterConfig{})
	t.Cleanup(func() { _ = router.Close() })
	serve := func(l relayapi.LoginSettings) (*http.Response, string) {
		t.Helper()
		srv, err := relay.NewServer(relay.ServerConfig{Registry: reg, Router: router, Authenticator: tokenAuthn{}, Login: l})
		if err != nil {
			t.Fatal(err)
		}
		api := httptest.NewServer(srv.Handler())
		defer api.Close()
		// No Authorization: the settings are public.
		resp, err := http.Get(api.URL + relayapi.LoginPath)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}

	set := relayapi.LoginSettings{Issuer: "https://op.example.com", ClientID: "tether"}
	resp, body := serve(set)
	// The relay adds its audience and the clusters' prefix, for the login
	// to ask for a token per hop.
	want := relayapi.LoginSettings{Issuer: "https://op.example.com", ClientID: "tether", Audience: "tether:relay", ClusterAudiencePrefix: "tether:cluster:"}
	var got relayapi.LoginSettings
	if resp.StatusCode != http.StatusOK || json.Unmarshal([]byte(body), &got) != nil || got != want {
		t.Fatalf("GET /v1/login: %s %s", resp.Status, body)
	}

	resp, body = serve(relayapi.LoginSettings{})
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(body, "--login-issuer") || !strings.Contains(body, `"kind":"Status"`) {
		t.Fatalf("GET /v1/login without settings: %s %s", resp.Status, body)
	}

	for _, bad := range []relayapi.LoginSettings{{Issuer: "https://op.example.com"}, {ClientID: "tether"}, {Issuer: "http://op.example.com", ClientID: "tether"}} {
		if _, err := relay.NewServer(relay.ServerConfig{Registry: reg, Router: router, Authenticator: tokenAuthn{}, Login: bad}); err == nil {
			t.Errorf("NewServer accepted login settings %+v", bad)
		}
	}
}

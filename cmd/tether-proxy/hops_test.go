package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tether-k8s/tether/core/tokensource"
)

// TestHopSources: a token per hop when the flags give two, and the same
// token for both, with the warning printed once, when they give one.
func TestHopSources(t *testing.T) {
	t.Setenv("TETHER_TOKEN", "")
	t.Setenv("GITHUB_ACTIONS", "")
	dir := t.TempDir()
	relayFile, clusterFile := filepath.Join(dir, "relay.token"), filepath.Join(dir, "cluster.token")
	for f, tok := range map[string]string{relayFile: "relay-tok", clusterFile: "cluster-tok"} {
		if err := os.WriteFile(f, []byte(tok), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name               string
		flags              tokenFlags
		wantRelay, wantAgt string
		wantWarn           string
	}{
		{"two tokens", tokenFlags{File: relayFile, ClusterFile: clusterFile}, "relay-tok", "cluster-tok", ""},
		{"a cluster token from the environment", tokenFlags{File: relayFile, ClusterFrom: "env:PROD_TOKEN"}, "relay-tok", "env-tok", ""},
		{"one token: shared, with a warning", tokenFlags{File: relayFile}, "relay-tok", "relay-tok", "tether:cluster:prod"},
		{"shared on purpose, with a warning", tokenFlags{File: relayFile, ClusterFrom: "shared"}, "relay-tok", "relay-tok", "--cluster-token-from shared"},
		// A GitHub Actions job asks its token endpoint for one token per
		// hop, by default.
		{"a GitHub Actions job: a token per audience", tokenFlags{From: "github-actions", Audience: "tether:relay"},
			"for tether:relay", "for tether:cluster:prod", ""},
		{"a GitHub Actions job, the agent's audience named", tokenFlags{From: "github-actions", Audience: "tether:relay", ClusterAudience: "prod-agent"},
			"for tether:relay", "for prod-agent", ""},
		{"a GitHub Actions job, shared on purpose", tokenFlags{From: "github-actions", Audience: "tether", ClusterFrom: "shared"},
			"for tether", "for tether", "--cluster-token-from shared"},
	}
	t.Setenv("PROD_TOKEN", "env-tok")
	actions := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]string{"value": "for " + r.URL.Query().Get("audience")})
	}))
	defer actions.Close()
	t.Setenv(tokensource.GitHubRequestURLEnv, actions.URL)
	t.Setenv(tokensource.GitHubRequestTokenEnv, "request-token")
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var warned []string
			relay, agent, err := tc.flags.hopSources(context.Background(), "https://relay.invalid", "", "prod", func(m string) { warned = append(warned, m) })
			if err != nil {
				t.Fatal(err)
			}
			r, _ := relay()
			a, _ := agent()
			if r != tc.wantRelay || a != tc.wantAgt {
				t.Fatalf("relay hop %q, agent hop %q; want %q, %q", r, a, tc.wantRelay, tc.wantAgt)
			}
			switch {
			case tc.wantWarn == "" && len(warned) != 0:
				t.Fatalf("warned: %v", warned)
			case tc.wantWarn != "" && (len(warned) != 1 || !strings.Contains(warned[0], tc.wantWarn) || !strings.HasPrefix(warned[0], SharedTokenWarning)):
				t.Fatalf("warnings %q, want one naming %q", warned, tc.wantWarn)
			}
		})
	}
	if _, _, err := (&tokenFlags{File: relayFile, ClusterFile: clusterFile, ClusterFrom: "env:X"}).hopSources(context.Background(), "", "", "prod", func(string) {}); err == nil {
		t.Fatal("--cluster-token-file with --cluster-token-from: no error")
	}
}

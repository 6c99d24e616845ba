package main

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tether-k8s/tether/core/relayapi"
)

// Shell completion of --cluster lists what the relay's whoami lists, with
// the agents' state, sending the caller's token.
func TestClusterCompletion(t *testing.T) {
	relay := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != relayapi.WhoamiPath || r.Header.Get("Authorization") != "Bearer caller-token" {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		_ = json.NewEncoder(w).Encode(relayapi.Whoami{User: "oidc:alice", Clusters: []relayapi.ReachableCluster{
			{Cluster: "prod", Sessions: 2}, {Cluster: "prod-eu", Sessions: 0}, {Cluster: "staging", Sessions: 1}}})
	}))
	defer relay.Close()
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: relay.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tok, []byte("caller-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{}, {"kubeconfig"}, {"exec"}} {
		root := newRootCommand()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&bytes.Buffer{})
		root.SetArgs(append(append([]string{"__complete"}, args...), "--relay", relay.URL, "--relay-ca", ca, "--token-file", tok, "--cluster", "pro"))
		if err := root.Execute(); err != nil {
			t.Fatal(err)
		}
		got := out.String()
		if !strings.Contains(got, "prod\tconnected\n") || !strings.Contains(got, "prod-eu\tnot connected\n") || strings.Contains(got, "staging") {
			t.Errorf("completing --cluster pro for %v:\n%s", args, got)
		}
	}
}

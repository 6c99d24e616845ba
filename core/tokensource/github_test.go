package tokensource_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tether-k8s/tether/core/tokensource"
)

func fakeJWT(exp time.Time) string {
	claims, _ := json.Marshal(map[string]any{"exp": exp.Unix(), "repository": "org/app"})
	return "eyJhbGciOiJFUzI1NiJ9." + base64.RawURLEncoding.EncodeToString(claims) + ".sig"
}

func TestGitHubActionsToken(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if r.Header.Get("Authorization") != "bearer job-request-token" || r.URL.Query().Get("audience") != "tether" {
			http.Error(w, "bad request token or audience", http.StatusForbidden)
			return
		}
		fmt.Fprintf(w, `{"value":%q}`, fakeJWT(time.Now().Add(5*time.Minute)))
	}))
	defer srv.Close()

	t.Setenv(tokensource.GitHubRequestURLEnv, srv.URL+"/token?api-version=2.0")
	t.Setenv(tokensource.GitHubRequestTokenEnv, "job-request-token")
	if !tokensource.InGitHubActions() {
		t.Fatal("InGitHubActions = false with the endpoint set")
	}
	src := tokensource.GitHubActions("tether", nil)
	for range 3 {
		tok, err := src()
		if err != nil || strings.Count(tok, ".") != 2 {
			t.Fatalf("token %q, %v", tok, err)
		}
	}
	if calls.Load() != 1 {
		t.Fatalf("%d requests to the endpoint for three tokens, want 1 (cached until near expiry)", calls.Load())
	}
	if _, err := tokensource.GitHubActions("other-audience", nil)(); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("a refused audience: %v, want the endpoint's 403", err)
	}
	t.Setenv(tokensource.GitHubRequestTokenEnv, "")
	if _, err := tokensource.GitHubActions("tether", nil)(); err == nil || !strings.Contains(err.Error(), "id-token: write") {
		t.Fatalf("outside a job with id-token permission: %v", err)
	}
}

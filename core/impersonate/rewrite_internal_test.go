package impersonate

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync/atomic"
	"testing"

	"github.com/tether-k8s/tether/core/identity"
)

type refuseAll struct{}

func (refuseAll) AuthenticateToken(context.Context, string) (identity.Result, error) {
	return identity.Result{}, nil
}

// TestRewriteWithoutAPlanSendsNothing: a request that reaches the reverse
// proxy without ServeHTTP's decision must not go to the API server at all;
// sent without credentials it would be served as system:anonymous wherever
// anonymous authentication is on.
func TestRewriteWithoutAPlanSendsNothing(t *testing.T) {
	var reached atomic.Int32
	api := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { reached.Add(1) }))
	defer api.Close()
	u, _ := url.Parse(api.URL)
	h, err := New(Config{Upstream: u, Transport: http.DefaultTransport, Authenticator: refuseAll{},
		Credential: func(context.Context) (string, error) { return "agent", nil }})
	if err != nil {
		t.Fatal(err)
	}
	w := httptest.NewRecorder()
	h.proxy.ServeHTTP(w, httptest.NewRequest("GET", "/api/v1/secrets", nil))
	if reached.Load() != 0 {
		t.Fatal("a request without a plan reached the API server")
	}
	if w.Code != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", w.Code)
	}
}

package authn

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestIssuerClientFollowsOnlyHTTPSRedirects: the JWKS client followed
// redirects, https to http included, so whoever could redirect the fetch
// could serve it keys over plain HTTP.
func TestIssuerClientFollowsOnlyHTTPSRedirects(t *testing.T) {
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(`{"keys":[]}`)) }))
	defer plain.Close()
	var issuer *httptest.Server
	issuer = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/to-http":
			http.Redirect(w, r, plain.URL+"/keys", http.StatusFound)
		case "/to-https":
			http.Redirect(w, r, issuer.URL+"/keys", http.StatusFound)
		case "/loop":
			http.Redirect(w, r, issuer.URL+"/loop", http.StatusFound)
		default:
			_, _ = w.Write([]byte(`{"keys":[]}`))
		}
	}))
	defer issuer.Close()
	hc := issuerClient(issuer.Client().Transport)
	for _, tc := range []struct {
		path, wantErr string
	}{
		{"/to-https", ""},
		{"/to-http", "only https is followed"},
		{"/loop", "more than 3 times"},
	} {
		resp, err := hc.Get(issuer.URL + tc.path)
		if err == nil {
			resp.Body.Close()
		}
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("GET %s: %v, want %q", tc.path, err, tc.wantErr)
		}
	}
}

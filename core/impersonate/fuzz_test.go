package impersonate_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/tether-k8s/tether/core/identity"
	"github.com/tether-k8s/tether/core/impersonate"
)

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// FuzzIdentityHeaders checks the claims-to-headers step: whatever identity
// the authenticator returns, either the request is refused, or the API
// server receives exactly that identity back when it decodes the headers the
// way kube-apiserver does, and no header carries CR, LF or NUL.
func FuzzIdentityHeaders(f *testing.F) {
	f.Add("alice", "dev", "tether.io/issuer", "https://issuer")
	f.Add("alice\r\nImpersonate-Group: system:masters", "g", "k", "v")
	f.Add("bob", "system:masters", "a%2fb", "x")
	f.Add("ユーザー", "グループ", "scopes", "read write")
	f.Add("carol", "ops", "UPPER", "v")
	f.Fuzz(func(t *testing.T, user, group, extraKey, extraVal string) {
		var got *http.Request
		authn := &fakeAuthn{identity: identity.Identity{
			User: user, Groups: []string{group}, Extra: map[string][]string{extraKey: {extraVal}},
		}}
		target, _ := url.Parse("http://apiserver.invalid")
		record := roundTripFunc(func(r *http.Request) (*http.Response, error) {
			got = r
			return &http.Response{StatusCode: 200, Body: io.NopCloser(strings.NewReader("{}")), Header: http.Header{}, Request: r}, nil
		})
		h, err := impersonate.New(impersonate.Config{
			Upstream: target, Authenticator: authn, Transport: record, UpgradeTransport: record,
			Credential: func(context.Context) (string, error) { return agentToken, nil },
		})
		if err != nil {
			t.Fatal(err)
		}
		req := httptest.NewRequest("GET", "/api/v1/pods", nil)
		req.Header.Set("Authorization", "Bearer "+callerToken)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if got == nil {
			if w.Code == 200 {
				t.Fatal("200 without forwarding")
			}
			return
		}
		for k, vs := range got.Header {
			for _, v := range vs {
				if strings.ContainsAny(k+v, "\r\n\x00") {
					t.Fatalf("header %q: %q carries CR, LF or NUL", k, v)
				}
			}
		}
		if u := got.Header.Values("Impersonate-User"); len(u) != 1 || u[0] != user {
			t.Fatalf("Impersonate-User %q, want %q", u, user)
		}
		if g := got.Header.Values("Impersonate-Group"); len(g) != 1 || g[0] != group {
			t.Fatalf("Impersonate-Group %q, want %q", g, group)
		}
		// Decode extras as kube-apiserver does: lower-case the name after the
		// prefix, then path-unescape it.
		found := false
		for k, vs := range got.Header {
			enc, ok := strings.CutPrefix(k, "Impersonate-Extra-")
			if !ok {
				continue
			}
			key, err := url.PathUnescape(strings.ToLower(enc))
			if err != nil {
				t.Fatalf("extra header %q does not decode: %v", k, err)
			}
			if key == extraKey {
				found = true
				if len(vs) != 1 || vs[0] != extraVal {
					t.Fatalf("extra %q = %q, want %q", key, vs, extraVal)
				}
			}
		}
		if !found {
			t.Fatalf("extra %q lost on the way (headers %v)", extraKey, got.Header)
		}
	})
}

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
		h, recorded := recordingHandler(t, identity.Identity{
			User: user, Groups: []string{group}, Extra: map[string][]string{extraKey: {extraVal}},
		})
		req := httptest.NewRequest("GET", "/api/v1/pods", nil)
		req.Header.Set("Authorization", "Bearer "+callerToken)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		got := recorded()
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

// isHeaderName reports whether s is a header name the HTTP server would
// accept (an RFC 9110 token).
func isHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// FuzzRequestHeaders sends requests with fuzzed headers (two of them, the
// Authorization value and the path) through the agent's request checks:
// a request carrying an Impersonate-* or X-Remote-* header, a
// Proxy-Authorization, two Authorization headers or a Connection header
// naming anything but the hop-by-hop tokens is never forwarded, and one
// that is forwarded carries exactly the agent's credential and the
// authenticated identity, none of the caller's Authorization,
// Impersonate-*, X-Remote-*, Forwarded or X-Forwarded-* headers, and is an
// upgrade only on a streaming path.
func FuzzRequestHeaders(f *testing.F) {
	bearer := "Bearer " + callerToken
	f.Add("Impersonate-User", "system:admin", "Connection", "keep-alive", bearer, "/api/v1/pods")
	f.Add("impersonate-group", "system:masters", "X", "y", bearer, "/api/v1/pods")
	f.Add("Connection", "Impersonate-User, Authorization", "X", "y", bearer, "/api/v1/pods")
	f.Add("Connection", "", "Connection", "x-remote-user", bearer, "/api")
	f.Add("X-Remote-User", "admin", "X-Forwarded-For", "10.0.0.1", bearer, "/api")
	f.Add("Authorization", "Bearer other", "Forwarded", "for=1.2.3.4", bearer, "/api")
	f.Add("Proxy-Authorization", "Basic dTpw", "X", "y", bearer, "/api")
	f.Add("Upgrade", "SPDY/3.1", "Connection", "Upgrade", bearer, "/api/v1/namespaces/ns/pods/p/exec")
	f.Add("Upgrade", "websocket", "Sec-WebSocket-Protocol", "base64url.bearer.authorization.k8s.io."+callerToken, bearer, "/api/v1/namespaces/ns/pods/p/exec")
	f.Add("Upgrade", "h2c", "Connection", "Upgrade, HTTP2-Settings", bearer, "/api")
	f.Add("Impersonate_User", "x", "X", "y", "bearer "+saToken, "/api")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2, auth, path string) {
		if !isHeaderName(k1) || !isHeaderName(k2) || !strings.HasPrefix(path, "/") {
			return // the server refuses the request before any handler
		}
		h, recorded := recordingHandler(t, identity.Identity{User: "alice", Groups: []string{"dev"}})
		req := httptest.NewRequest("GET", "http://agent.invalid/", nil)
		req.URL.Path = path
		in := http.Header{}
		in.Add("Authorization", auth)
		in.Add(k1, v1)
		in.Add(k2, v2)
		req.Header = in.Clone()
		h.ServeHTTP(httptest.NewRecorder(), req)
		got := recorded()
		if got == nil {
			return
		}
		// What the caller sent that must have been refused.
		for k := range in {
			lk := strings.ToLower(k)
			if strings.HasPrefix(lk, "impersonate") || strings.HasPrefix(lk, "x-remote-") || lk == "proxy-authorization" {
				t.Fatalf("forwarded a request carrying %s", k)
			}
		}
		if len(in.Values("Authorization")) != 1 {
			t.Fatalf("forwarded a request with Authorization %q", in.Values("Authorization"))
		}
		for _, v := range in.Values("Connection") {
			for _, tok := range strings.Split(v, ",") {
				switch strings.ToLower(strings.TrimSpace(tok)) {
				case "", "keep-alive", "close", "upgrade", "http2-settings":
				default:
					t.Fatalf("forwarded a request whose Connection names %q", tok)
				}
			}
		}
		// What reaches the API server.
		want := "Bearer " + agentToken
		if scheme, tok, _ := strings.Cut(auth, " "); strings.EqualFold(scheme, "Bearer") && strings.TrimSpace(tok) == saToken {
			want = "Bearer " + saToken // passed through, unimpersonated
		}
		if a := got.Header.Values("Authorization"); len(a) != 1 || a[0] != want {
			t.Fatalf("the API server got Authorization %q, want %q", a, want)
		}
		for k, vs := range got.Header {
			lk := strings.ToLower(k)
			switch {
			case lk == "impersonate-user" && want != "Bearer "+saToken && len(vs) == 1 && vs[0] == "alice":
			case lk == "impersonate-group" && want != "Bearer "+saToken && len(vs) == 1 && vs[0] == "dev":
			case strings.HasPrefix(lk, "impersonate-extra-tether.io") && want != "Bearer "+saToken:
			case strings.HasPrefix(lk, "impersonate"), strings.HasPrefix(lk, "x-remote-"), strings.HasPrefix(lk, "x-forwarded"), lk == "forwarded", lk == "proxy-authorization":
				t.Fatalf("the API server got %s: %q", k, vs)
			}
		}
		if want != "Bearer "+saToken && got.Header.Get("Impersonate-User") != "alice" {
			t.Fatalf("forwarded without impersonation: %v", got.Header)
		}
		if got.Header.Get("Upgrade") != "" && !strings.HasSuffix(path, "/exec") && !strings.HasSuffix(path, "/attach") && !strings.HasSuffix(path, "/portforward") {
			t.Fatalf("an upgrade forwarded on %q", path)
		}
	})
}

// recordingHandler is the agent's handler for a caller authenticated as id,
// in front of an upstream that records the request it is sent (recorded
// returns it, nil when nothing was forwarded) and answers 200.
func recordingHandler(t *testing.T, id identity.Identity) (h *impersonate.Handler, recorded func() *http.Request) {
	t.Helper()
	var got *http.Request
	target, _ := url.Parse("http://apiserver.invalid")
	record := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		got = r
		return &http.Response{StatusCode: 200, Body: io.NopCloser(strings.NewReader("{}")), Header: http.Header{}, Request: r}, nil
	})
	h, err := impersonate.New(impersonate.Config{
		Upstream: target, Authenticator: &fakeAuthn{identity: id}, Transport: record, UpgradeTransport: record,
		Credential: func(context.Context) (string, error) { return agentToken, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	return h, func() *http.Request { return got }
}

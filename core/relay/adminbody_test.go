package relay_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestAdminAPIRefusesBodiesItWouldMisread: a grant with a typo'd field
// ({"group": [...]}) was decoded as an empty field and the rest applied, so
// the administrator believed a group was granted (or revoked) when it was
// not; trailing data after the object was ignored too.
func TestAdminAPIRefusesBodiesItWouldMisread(t *testing.T) {
	h := newRelay(t)
	srv := httptest.NewServer(h.srv.AdminHandler())
	defer srv.Close()
	post := func(path, body string) (int, string) {
		t.Helper()
		resp, err := srv.Client().Post(srv.URL+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := post("/v1/admin/clusters", `{"name":"prod"}`); code != http.StatusOK {
		t.Fatalf("create: %d %s", code, body)
	}
	for _, tc := range []struct{ path, body, want string }{
		{"/v1/admin/clusters/prod/grant", `{"users":["alice"],"group":["dev"]}`, `unknown field \"group\"`},
		{"/v1/admin/clusters/prod/revoke", `{"user":["alice"]}`, `unknown field \"user\"`},
		{"/v1/admin/clusters/prod/grant", `{"users":["alice"]} {"groups":["dev"]}`, "one JSON object"},
		{"/v1/admin/clusters", `{"name":"stage","nmae":"x"}`, `unknown field \"nmae\"`},
	} {
		if code, body := post(tc.path, tc.body); code != http.StatusBadRequest || !strings.Contains(body, tc.want) {
			t.Errorf("POST %s %s: %d %s, want 400 saying %q", tc.path, tc.body, code, body, tc.want)
		}
	}
	resp, err := srv.Client().Get(srv.URL + "/v1/admin/clusters/prod/policy")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if strings.Contains(string(b), "alice") || strings.Contains(string(b), "dev") {
		t.Fatalf("a refused body changed the policy: %s", b)
	}
	if code, body := post("/v1/admin/clusters/prod/grant", `{"users":["alice"]}`); code != http.StatusOK {
		t.Fatalf("a well-formed grant: %d %s", code, body)
	}
}

package relay_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/tether-k8s/tether/core/relayapi"
)

// A caller learns its mapped identity and the clusters whose policy and
// audiences admit it, and nothing of the others; a refused token is told
// why, as a tunnel would be.
func TestWhoamiListsOnlyReachableClusters(t *testing.T) {
	h := newRelay(t)
	h.create(t, "prod")
	h.create(t, "dev")
	h.createClosedAndStrict(t)
	w, err := relayapi.GetWhoami(t.Context(), http.DefaultClient, h.api.URL, goodToken)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, c := range w.Clusters {
		ids = append(ids, c.Cluster)
		if c.Sessions != 0 {
			t.Errorf("%s: %d sessions, none connected", c.Cluster, c.Sessions)
		}
	}
	if w.User != "alice" || strings.Join(w.Groups, ",") != "dev" || strings.Join(ids, ",") != "dev,prod" {
		t.Fatalf("whoami: %+v, want alice in dev reaching dev,prod (not closed, not strict: another audience)", w)
	}
	if w, err := relayapi.GetWhoami(t.Context(), http.DefaultClient, h.api.URL, outsiderToken); err != nil || len(w.Clusters) != 0 || w.User != "mallory" {
		t.Fatalf("an outsider: %+v, %v; want mallory and no cluster", w, err)
	}
	for name, tc := range map[string]struct{ token, msg string }{
		"a refused token":                {"stale", "tether relay: the bearer token was refused"},
		"no token":                       {"", "bearer token is required"},
		"a token for the admin audience": {aliceAdminAudToken, "admin audience"},
	} {
		if _, err := relayapi.GetWhoami(t.Context(), http.DefaultClient, h.api.URL, tc.token); err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: %v, want %q", name, err, tc.msg)
		}
	}
}

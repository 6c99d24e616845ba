package authn_test

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/tether-k8s/tether/core/identity"
)

// FuzzClaimMapping signs tokens with fuzzed claims and checks what the
// mapping makes of those it accepts: the configured prefixes always apply,
// a CI claim lands in its extra unchanged, the identity is one that is safe
// to send as Impersonate-* headers, and a token for another audience is
// never accepted.
func FuzzClaimMapping(f *testing.F) {
	is := newIssuer(f)
	cfg := configYAML(is, "cluster-a", "oidc:") + `    extra:
    - key: example.com/repository
      valueExpression: "has(claims.repository) ? claims.repository : ''"
`
	a := newAuthn(f, cfg)

	f.Add("alice", "dev", "org/app", true)
	f.Add("system:admin", "system:masters", "", true)
	f.Add("bob\r\nImpersonate-User: root", "g\x00", "org/app\n", true)
	f.Add("", "", "", false)
	f.Add(strings.Repeat("x", 600), "ops", "a/b", true)
	f.Fuzz(func(t *testing.T, sub, group, repo string, ourAudience bool) {
		// JSON carries invalid UTF-8 as U+FFFD: compare with what was sent.
		sub, group, repo = viaJSON(sub), viaJSON(group), viaJSON(repo)
		aud := "cluster-a"
		if !ourAudience {
			aud = "cluster-b"
		}
		claims := is.claims(aud, map[string]any{"sub": sub, "groups": []string{group, "oncall"}, "repository": repo})
		res, err := a.AuthenticateToken(t.Context(), is.sign(t, claims))
		if err != nil {
			return
		}
		id := res.Identity
		switch {
		case !ourAudience:
			t.Fatalf("a token for another audience was accepted as %q", id.User)
		case res.Passthrough:
			t.Fatal("an OIDC token was passed through")
		case id.User != "oidc:"+sub:
			t.Fatalf("sub %q mapped to user %q, want the prefix and the claim", sub, id.User)
		}
		for _, g := range id.Groups {
			if !strings.HasPrefix(g, "oidc:") {
				t.Fatalf("group %q lacks the prefix", g)
			}
		}
		if got := id.Extra["example.com/repository"]; repo != "" && (len(got) != 1 || got[0] != repo) {
			t.Fatalf("repository %q mapped to extra %q", repo, got)
		}
		if err := identity.Validate(id, false); err != nil {
			t.Fatalf("accepted an identity that is unsafe as headers: %v", err)
		}
		for _, s := range append([]string{id.User}, id.Groups...) {
			if !utf8.ValidString(s) || strings.ContainsAny(s, "\r\n\x00") {
				t.Fatalf("accepted a name with control characters or bad UTF-8: %q", s)
			}
		}
	})
}

// viaJSON returns s as it reads back from JSON.
func viaJSON(s string) string {
	b, _ := json.Marshal(s)
	var out string
	_ = json.Unmarshal(b, &out)
	return out
}

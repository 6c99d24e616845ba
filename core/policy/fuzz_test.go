package policy_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/tether-k8s/tether/core/identity"
	"github.com/tether-k8s/tether/core/policy"
)

// FuzzCheck evaluates fuzzed rules against fuzzed identities and checks the
// policy's promises: an empty policy admits no one, a name admits only its
// exact match, a rule that does not compile admits no one, the decision is
// the same every time, and evaluation always ends (the cost limit). Each
// input compiles a CEL program (about 1 ms), so make fuzz runs it 20,000
// times rather than FUZZTIME's default.
//
//tether:fuzztime 20000x
func FuzzCheck(f *testing.F) {
	f.Add("oidc:alice", "oidc:dev", "example.com/repository", "org/app", `user.extra["example.com/repository"][0] == "org/app"`)
	f.Add("oidc:alice", "oidc:dev", "", "", `"oidc:dev" in user.groups`)
	f.Add("oidc:bob", "", "k", "v", `user.username.startsWith("oidc:")`)
	f.Add("u", "g", "k", "v", `[1,2,3].all(x, [1,2,3].all(y, [1,2,3].all(z, x < 100)))`)
	f.Add("u", "g", "k", "v", `user.extra["missing"][0] == "x"`)
	f.Add("u", "g", "k", "v", `1`)
	f.Add("u", "g", "k", "v", `user.groups.map(g, g + g).size() > 0 || true`)
	f.Fuzz(func(t *testing.T, user, group, key, value, rule string) {
		id := identity.Identity{User: user, Groups: []string{group}, Extra: map[string][]string{key: {value}}}

		if d, _ := policy.Check(policy.Policy{}, id); d.Allowed {
			t.Fatal("the empty policy admitted someone")
		}
		other := policy.Policy{Users: []string{user + "x"}, Groups: []string{group + "x", strings.ToUpper(group) + "-"}}
		if d, _ := policy.Check(other, id); d.Allowed && !slices.Contains(other.Groups, group) && group != strings.ToUpper(group)+"-" {
			t.Fatalf("names that differ from %q/%q admitted: %s", user, group, d.Why)
		}
		if d, _ := policy.Check(policy.Policy{Users: []string{user}}, id); !d.Allowed {
			t.Fatalf("user %q listed, not admitted: %s", user, d.Why)
		}

		p := policy.Policy{Rules: []string{rule}}
		first, _ := policy.Check(p, id)
		if again, _ := policy.Check(p, id); again != first {
			t.Fatalf("rule %q: %v, then %v", rule, first, again)
		}
		verr := p.Validate()
		if first.Allowed && verr != nil && !strings.Contains(verr.Error(), "bool") {
			t.Fatalf("rule %q is invalid (%v) yet admitted the caller", rule, verr)
		}
	})
}

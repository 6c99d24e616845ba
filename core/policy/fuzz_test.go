package policy_test

import (
	"bytes"
	"encoding/json"
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

// FuzzPolicyJSON decodes fuzzed bodies of the admin API's grant and
// revoke requests as it does (the first JSON value, into a Policy), and
// checks what a policy that validates (as the registry requires before it
// stores one) promises: it survives a JSON round trip unchanged, a listed
// user is admitted and a name not listed is not by name, an empty one
// admits no one, decisions are stable, and granting then revoking it
// leaves nothing behind.
//
//tether:fuzztime 20000x
func FuzzPolicyJSON(f *testing.F) {
	f.Add([]byte(`{"users":["oidc:alice"],"groups":["oidc:dev"],"audiences":["cluster-a"]}`))
	f.Add([]byte(`{"rules":["\"oidc:dev\" in user.groups"]}`))
	f.Add([]byte(`{"rules":["1"]}`))
	f.Add([]byte(`{"users":["a","a"],"groups":[""]}`))
	f.Add([]byte(`{"users":["a\r\nb"]}`))
	f.Add([]byte(`{"Users":["a"],"extra":1} trailing`))
	f.Add([]byte(`{"users":null,"rules":[]}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var p policy.Policy
		if err := json.NewDecoder(bytes.NewReader(body)).Decode(&p); err != nil {
			return
		}
		if p.Validate() != nil {
			return
		}
		b, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		var q policy.Policy
		if err := json.Unmarshal(b, &q); err != nil {
			t.Fatal(err)
		}
		if b2, _ := json.Marshal(q); !bytes.Equal(b, b2) || q.Validate() != nil {
			t.Fatalf("round trip changed %s into %s", b, b2)
		}
		stranger := identity.Identity{User: "\x01stranger", Groups: []string{"\x01nobody"}}
		if d, _ := policy.Check(policy.Policy{Users: p.Users, Groups: p.Groups}, stranger); d.Allowed {
			t.Fatalf("%s admitted a name it does not list: %s", b, d.Why)
		}
		for _, u := range p.Users {
			if d, _ := policy.Check(p, identity.Identity{User: u}); !d.Allowed {
				t.Fatalf("%s does not admit its user %q: %s", b, u, d.Why)
			}
		}
		first, _ := policy.Check(p, stranger)
		if again, _ := policy.Check(p, stranger); again != first || p.Empty() && first.Allowed {
			t.Fatalf("%s: %v then %v", b, first, again)
		}
		if left, _ := (policy.Policy{}).Add(p).Remove(p); !left.Empty() || len(left.Audiences) != 0 {
			t.Fatalf("granting and revoking %s left %+v", b, left)
		}
	})
}

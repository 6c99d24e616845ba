package policy_test

import (
	"strings"
	"testing"

	"github.com/tether-k8s/tether/core/identity"
	"github.com/tether-k8s/tether/core/policy"
)

func TestCheck(t *testing.T) {
	alice := identity.Identity{User: "oidc:alice", Groups: []string{"oidc:dev"}}
	ci := identity.Identity{User: "oidc:repo:org/app", Extra: map[string][]string{"example.com/repository": {"org/app"}, "example.com/environment": {"prod"}}}
	repoRule := `"example.com/repository" in user.extra && user.extra["example.com/repository"][0] == "org/app"`
	tests := []struct {
		name  string
		p     policy.Policy
		id    identity.Identity
		allow bool
		why   string
	}{
		{"empty policy admits no one", policy.Policy{}, alice, false, "grants access to no one"},
		{"listed user", policy.Policy{Users: []string{"oidc:alice"}}, alice, true, "user oidc:alice"},
		{"user names are exact", policy.Policy{Users: []string{"alice", "oidc:Alice", "oidc:alice "}}, alice, false, "no grant"},
		{"listed group", policy.Policy{Groups: []string{"oidc:ops", "oidc:dev"}}, alice, true, "group oidc:dev"},
		{"group names are exact", policy.Policy{Groups: []string{"dev"}}, alice, false, "no grant"},
		{"a CI rule over extras", policy.Policy{Rules: []string{repoRule}}, ci, true, "rule"},
		{"the same rule for another caller", policy.Policy{Rules: []string{repoRule}}, alice, false, "no grant"},
		{"a rule over groups", policy.Policy{Rules: []string{`user.groups.exists(g, g.startsWith("oidc:d"))`}}, alice, true, "rule"},
		{"a rule that errors counts as false", policy.Policy{Rules: []string{`user.extra["missing"][0] == "x"`}}, alice, false, "no grant"},
		{"a false rule", policy.Policy{Rules: []string{`false`}}, alice, false, "no grant"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, _ := policy.Check(tc.p, tc.id)
			if d.Allowed != tc.allow || !strings.Contains(d.Why, tc.why) {
				t.Fatalf("Check = %+v, want allowed=%v because %q", d, tc.allow, tc.why)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	for _, bad := range []policy.Policy{
		{Rules: []string{`user.username`}},           // not a bool
		{Rules: []string{`user.username ==`}},        // syntax
		{Rules: []string{`nosuchvar == "x"`}},        // undeclared
		{Rules: []string{`user.nope == "x"`}},        // no such field: admits no one
		{Rules: []string{`user.username == 1`}},      // a string compared to an int
		{Rules: []string{`"g" in user.username`}},    // in a string
		{Rules: []string{`user.extra["k"] == "v"`}},  // a list compared to a string
		{Rules: []string{`user["username"] == "x"`}}, // user is an object, not a map
		{Rules: []string{" "}},                       // empty
		{Rules: []string{strings.Repeat("a", 3000)}}, // too long
		{Users: []string{"oidc:a\nb"}},               // control characters
		{Groups: []string{""}},
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil, want an error", bad)
		}
	}
	ok := policy.Policy{Users: []string{"oidc:a"}, Groups: []string{"oidc:g"}, Rules: []string{`user.username.startsWith("oidc:")`,
		`"oidc:g" in user.groups && user.uid != ""`, `"k" in user.extra && user.extra["k"].exists(v, v == "x")`}}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestAddRemove(t *testing.T) {
	p := policy.Policy{Groups: []string{"a"}}.Add(policy.Policy{Groups: []string{"a", "b"}, Users: []string{"u"}})
	if strings.Join(p.Groups, ",") != "a,b" || len(p.Users) != 1 {
		t.Fatalf("Add: %+v", p)
	}
	q, n := p.Remove(policy.Policy{Groups: []string{"a", "zzz"}})
	if n != 1 || strings.Join(q.Groups, ",") != "b" || len(p.Groups) != 2 {
		t.Fatalf("Remove: %+v, %d (and p must be unchanged: %+v)", q, n, p)
	}
}

func TestCheckAudience(t *testing.T) {
	open := policy.Policy{Groups: []string{"g"}}
	if err := policy.CheckAudience(open, nil); err != nil {
		t.Fatalf("a policy without audiences refused a token: %v", err)
	}
	strict := open.Add(policy.Policy{Audiences: []string{"tether:prod"}})
	for _, tc := range []struct {
		auds []string
		ok   bool
	}{
		{[]string{"tether:prod"}, true},
		{[]string{"tether:staging", "tether:prod"}, true},
		{[]string{"tether:staging"}, false},
		{[]string{"tether:prod "}, false},
		{[]string{"TETHER:PROD"}, false},
		{nil, false},
	} {
		if err := policy.CheckAudience(strict, tc.auds); (err == nil) != tc.ok {
			t.Errorf("audiences %q: %v, want admitted %v", tc.auds, err, tc.ok)
		}
	}
	if (policy.Policy{Audiences: []string{"tether:prod"}}).Empty() == false {
		t.Error("a policy of audiences only admits someone")
	}
	if p, n := strict.Remove(policy.Policy{Audiences: []string{"tether:prod"}}); n != 1 || len(p.Audiences) != 0 {
		t.Errorf("remove audience: %+v, %d", p, n)
	}
	if err := (policy.Policy{Audiences: []string{" "}}).Validate(); err == nil {
		t.Error("a blank audience validated")
	}
}

package policy

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/ext"
	"github.com/tether-k8s/tether/core/identity"
)

// ErrInvalid is wrapped by every error Validate returns.
var ErrInvalid = errors.New("invalid policy")

// Policy says who may reach one cluster. A caller is admitted when its
// user is listed, one of its groups is listed, or a rule is true for it.
type Policy struct {
	// Users are mapped user names, as the authentication configuration
	// produces them (e.g. "oidc:alice").
	Users []string `json:"users,omitempty"`
	// Groups are mapped group names (e.g. "oidc:platform").
	Groups []string `json:"groups,omitempty"`
	// Rules are CEL expressions over `user`, a map with `username` (string),
	// `uid` (string), `groups` (list of strings) and `extra` (map of string
	// to list of strings, e.g. the claims that claimMappings put there). A
	// rule must evaluate to a bool; an error counts as false.
	// Example: 'user.extra["example.com/repository"][0] == "org/app"'.
	Rules []string `json:"rules,omitempty"`
	// Audiences, when not empty, is a requirement rather than a grant: the
	// caller's token must name one of them in its aud claim, whatever else
	// admits the caller. Give each cluster's agent an audience of its own
	// and list it here, and a token meant for another cluster is refused at
	// the relay as well as at the agent.
	Audiences []string `json:"audiences,omitempty"`
}

// Empty reports whether the policy admits no one (audiences only restrict).
func (p Policy) Empty() bool { return len(p.Users)+len(p.Groups)+len(p.Rules) == 0 }

// maxRuleLen bounds a rule's source, and maxEntries a policy's entries.
const (
	maxRuleLen = 2048
	maxEntries = 256
)

// Validate reports the first problem with p: an empty or over-long entry,
// too many entries, or a rule that does not compile to a bool.
func (p Policy) Validate() error {
	if n := len(p.Users) + len(p.Groups) + len(p.Rules) + len(p.Audiences); n > maxEntries {
		return fmt.Errorf("%w: %d entries, at most %d", ErrInvalid, n, maxEntries)
	}
	for _, list := range [][]string{p.Users, p.Groups, p.Audiences} {
		for _, s := range list {
			if strings.TrimSpace(s) == "" || strings.ContainsAny(s, "\r\n\x00") || len(s) > 512 {
				return fmt.Errorf("%w: user, group or audience %q: want a name without control characters, at most 512 bytes", ErrInvalid, s)
			}
		}
	}
	sample := map[string]any{"user": celUser{Groups: []string{}, Extra: map[string][]string{}}}
	for _, r := range p.Rules {
		prg, err := compile(r)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		// The checker types every field of user; a rule that still
		// yields a non-bool for an empty identity (through a dynamic
		// macro) is caught here. (One that errors on it may be fine.)
		if out, _, err := prg.Eval(sample); err == nil {
			if _, ok := out.Value().(bool); !ok {
				return fmt.Errorf("%w: rule %q evaluates to %v, not a bool", ErrInvalid, r, out.Type())
			}
		}
	}
	return nil
}

// Add returns p with q's entries added (each once).
func (p Policy) Add(q Policy) Policy {
	add := func(to, from []string) []string {
		for _, s := range from {
			if !slices.Contains(to, s) {
				to = append(to, s)
			}
		}
		return to
	}
	return Policy{Users: add(slices.Clone(p.Users), q.Users), Groups: add(slices.Clone(p.Groups), q.Groups), Rules: add(slices.Clone(p.Rules), q.Rules),
		Audiences: add(slices.Clone(p.Audiences), q.Audiences)}
}

// Remove returns p without q's entries, and how many it removed.
func (p Policy) Remove(q Policy) (Policy, int) {
	n := 0
	del := func(from, drop []string) []string {
		out := from[:0:0]
		for _, s := range from {
			if slices.Contains(drop, s) {
				n++
				continue
			}
			out = append(out, s)
		}
		return out
	}
	return Policy{Users: del(p.Users, q.Users), Groups: del(p.Groups, q.Groups), Rules: del(p.Rules, q.Rules), Audiences: del(p.Audiences, q.Audiences)}, n
}

// Decision is the outcome of Check.
type Decision struct {
	Allowed bool
	// Why names the entry that admitted the caller, or says why none did.
	Why string
}

// Check decides whether p admits id. Rule errors count as false and are
// returned joined, for the log (the caller is refused either way).
func Check(p Policy, id identity.Identity) (Decision, error) {
	if slices.Contains(p.Users, id.User) {
		return Decision{Allowed: true, Why: "user " + id.User}, nil
	}
	for _, g := range id.Groups {
		if slices.Contains(p.Groups, g) {
			return Decision{Allowed: true, Why: "group " + g}, nil
		}
	}
	var errs []error
	if len(p.Rules) > 0 {
		extra := map[string][]string{}
		for k, v := range id.Extra {
			extra[k] = v
		}
		groups := id.Groups
		if groups == nil {
			groups = []string{}
		}
		vars := map[string]any{"user": celUser{Username: id.User, UID: id.UID, Groups: groups, Extra: extra}}
		for _, r := range p.Rules {
			prg, err := compile(r)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			out, _, err := prg.Eval(vars)
			if err != nil {
				errs = append(errs, fmt.Errorf("policy: rule %q: %w", r, err))
				continue
			}
			if b, ok := out.Value().(bool); ok && b {
				return Decision{Allowed: true, Why: "rule " + r}, nil
			}
		}
	}
	why := "no grant of the cluster names this user or one of its groups, and no rule is true for it"
	if p.Empty() {
		why = "the cluster grants access to no one yet"
	}
	return Decision{Why: why}, errors.Join(errs...)
}

// CheckAudience refuses a token whose audiences (its verified aud claim)
// name none of p.Audiences; it admits any token when p.Audiences is empty.
// Check decides who the caller is allowed to be; this, which token they
// may use for this cluster. A caller must pass both.
func CheckAudience(p Policy, audiences []string) error {
	if len(p.Audiences) == 0 {
		return nil
	}
	for _, a := range audiences {
		if slices.Contains(p.Audiences, a) {
			return nil
		}
	}
	return fmt.Errorf("the token is for audience %v, not %v: get a token for this cluster's audience", audiences, p.Audiences)
}

// celUser is the caller as rules see it, a typed object: the checker
// refuses a rule naming a field it does not have (user.nope, which would
// admit no one) or comparing a field with the wrong type, when the rule is
// granted rather than when a caller is silently refused.
type celUser struct {
	Username string              `cel:"username"`
	UID      string              `cel:"uid"`
	Groups   []string            `cel:"groups"`
	Extra    map[string][]string `cel:"extra"`
}

var (
	envOnce sync.Once
	env     *cel.Env
	envErr  error
	progs   sync.Map // rule source → cel.Program
)

// compile compiles a rule once and caches it.
func compile(rule string) (cel.Program, error) {
	if p, ok := progs.Load(rule); ok {
		return p.(cel.Program), nil
	}
	if strings.TrimSpace(rule) == "" || len(rule) > maxRuleLen {
		return nil, fmt.Errorf("policy: rule %q: want a CEL expression of 1 to %d bytes", rule, maxRuleLen)
	}
	envOnce.Do(func() {
		env, envErr = cel.NewEnv(
			ext.NativeTypes(reflect.TypeFor[celUser](), ext.ParseStructTags(true)),
			cel.Variable("user", cel.ObjectType("policy.celUser")))
	})
	if envErr != nil {
		return nil, fmt.Errorf("policy: CEL environment: %w", envErr)
	}
	ast, iss := env.Compile(rule)
	if iss.Err() != nil {
		return nil, fmt.Errorf("policy: rule %q: %w", rule, iss.Err())
	}
	if ast.OutputType() != cel.BoolType && ast.OutputType() != cel.DynType {
		return nil, fmt.Errorf("policy: rule %q evaluates to %s; it must be a bool", rule, ast.OutputType())
	}
	prg, err := env.Program(ast, cel.CostLimit(100000))
	if err != nil {
		return nil, fmt.Errorf("policy: rule %q: %w", rule, err)
	}
	progs.Store(rule, prg)
	return prg, nil
}

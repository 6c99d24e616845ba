package identity

import (
	"errors"
	"fmt"
	"strings"
)

// ErrUnsafe is wrapped by Validate's errors.
var ErrUnsafe = errors.New("identity cannot be impersonated safely")

// Validate reports why id cannot be sent as impersonation headers:
// no user, a control character in any name, an extra key not in lower case,
// or (unless allowSystem) a "system:" user or group. The agent's impersonation
// handler refuses such an identity, and authenticators call Validate too, so
// that they never return one.
func Validate(id Identity, allowSystem bool) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrUnsafe, fmt.Sprintf(format, args...))
	}
	if id.User == "" {
		return bad("the token maps to no user name")
	}
	if badHeaderValue(id.User) {
		return bad("the user name contains a control character (CR, LF, NUL...)")
	}
	if badHeaderValue(id.UID) {
		return bad("the UID contains a control character (CR, LF, NUL...)")
	}
	if !allowSystem && strings.HasPrefix(id.User, "system:") {
		return bad("the user name %q is reserved (system:); configure a username prefix for the issuer", truncate(id.User, 100))
	}
	for _, g := range id.Groups {
		if badHeaderValue(g) || g == "" {
			return bad("a group name is empty or contains a control character (CR, LF, NUL...)")
		}
		if !allowSystem && strings.HasPrefix(g, "system:") {
			return bad("the group name %q is reserved (system:); configure a groups prefix for the issuer", truncate(g, 100))
		}
	}
	for k, vs := range id.Extra {
		if k == "" || k != strings.ToLower(k) || badHeaderValue(k) {
			return bad("an extra key is empty, not lower case, or contains a control character")
		}
		for _, v := range vs {
			if badHeaderValue(v) {
				return bad("the value of extra %q contains a control character (CR, LF, NUL...)", truncate(k, 100))
			}
		}
	}
	return nil
}

// badHeaderValue reports whether s holds a control character (CR, LF and
// NUL among them), which a header value must not carry.
func badHeaderValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] == 0x7f {
			return true
		}
	}
	return false
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

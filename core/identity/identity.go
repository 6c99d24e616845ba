package identity

import (
	"context"
	"time"
)

// Identity is who the caller is, as an Authenticator established it.
type Identity struct {
	// User is the Kubernetes user name. Required.
	User string
	// UID is the user's unique ID; empty sends none.
	UID string
	// Groups are the user's groups.
	Groups []string
	// Extra holds extra attributes; keys must be lower case.
	Extra map[string][]string
}

// Result is what an Authenticator decided about a token.
type Result struct {
	// Identity is the caller.
	Identity Identity
	// Passthrough means the token is a service-account token of this
	// cluster: it is forwarded as it is and no one is impersonated.
	Passthrough bool
	// Audiences is the verified token's aud claim (OpenID tokens only),
	// for a policy that binds a cluster to its own audience.
	Audiences []string
	// Expires is when the verified token expires (its exp claim): the
	// relay ends a tunnel the token opened then. Zero means unknown (a
	// service-account token passed through unverified).
	Expires time.Time
}

// Authenticator validates a caller's bearer token. Its errors are shown to
// the caller and logged, so they must not contain the token.
type Authenticator interface {
	AuthenticateToken(ctx context.Context, token string) (Result, error)
}

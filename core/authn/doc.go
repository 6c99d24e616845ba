// Package authn verifies callers' tokens with the Kubernetes API server's own
// JWT authenticator (k8s.io/apiserver/plugin/pkg/authenticator/token/oidc),
// configured with the structured AuthenticationConfiguration format
// (apiserver.config.k8s.io/v1: issuers, audiences, CEL claim validation and
// claim mappings). An operator configures tether exactly as they would
// configure kube-apiserver; nothing about JWTs is written by hand here.
//
// On top of kube-apiserver's checks (signature with asymmetric algorithms
// only, issuer, audience, expiry, not-before, claim and user validation
// rules), the Authenticator:
//
//   - refuses a token over Config.MaxTokenBytes, or one that is not three
//     non-empty base64url segments, before any parsing (a token of many dots
//     costs nothing);
//   - refuses an identity that identity.Validate would refuse:
//     control characters in names, and "system:" users or groups unless
//     Config.AllowSystemNames;
//   - adds the token's issuer and subject as the extras tether.io/issuer and
//     tether.io/subject, read from the token after it was verified.
//
// Issuers' keys come from a key set of its own (keyset.go), not go-oidc's,
// which trusts a key it once fetched for as long as the process lives:
// fetched keys expire after the JWKS's Cache-Control max-age or
// Config.JWKSMaxAge, whichever is shorter, so a retired key stops working;
// a token with an unknown kid refetches at once, but fetches are at least
// Config.JWKSMinRefresh apart and concurrent callers share one; if a fetch
// fails, the keys fetched last stay in use, and the outage is logged once
// (again when its error changes, or every five minutes) and its end once.
//
// Tokens from an issuer that is not configured are refused with a message
// saying so; errors never contain the token.
package authn

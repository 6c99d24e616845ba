// Package login is the caller's side of an OpenID Connect login: it gets
// the ID token that tether-proxy presents to the relay and the agent, keeps
// it in a private cache, and renews it with the refresh token.
//
// Two grants are supported, both for a public client (no secret):
//
//   - the device authorization grant (RFC 8628), for terminals without a
//     browser: the user opens the verification URI anywhere and enters a
//     code, while this package polls the token endpoint at the interval
//     the provider asks for (slowing down when told to);
//   - the authorization code grant with PKCE (RFC 7636, S256) on a loopback
//     redirect (RFC 8252): a listener on 127.0.0.1:0 receives the code, and
//     a callback whose state does not match is refused.
//
// # A token per hop
//
// TokenFor exchanges the login's ID token at the provider (OAuth 2.0 Token
// Exchange, RFC 8693) for an ID token for one audience: tether-proxy asks
// for the relay's audience and for each cluster's, so that the relay and
// each agent see only a token for themselves, and the login's own ID token
// (which the provider would exchange for any audience) never leaves the
// caller's machine. Exchanged tokens are checked as the login's are, must
// name the login's subject, and are kept in memory only.
//
// Everything else comes from the issuer's discovery document. The ID token
// is the credential: at login and at every refresh its signature (against
// the issuer's JWKS, asymmetric algorithms only), issuer, audience (the
// client ID) and expiry are checked before it is cached, although the relay
// and the agent check it again themselves.
//
// # The cache
//
// One file per issuer and client ID under os.UserConfigDir()/tether/login
// (directory 0700, files 0600, written to a temporary file and renamed into
// place) holds the ID token, the refresh token and the expiry. A cache file
// that group or others may read is refused, with the chmod that fixes it,
// and never used. A lock (flock) beside each file makes concurrent processes
// (kubectl running an exec credential plugin several times at once, two
// proxies) refresh one at a time: the second finds the first one's fresh
// token instead of spending a refresh token that a provider with rotating
// refresh tokens has already invalidated.
//
// A token is renewed when less than a minute, or less than a fifth of its
// lifetime if that is shorter, is left. When renewal fails (the refresh
// token expired or was revoked) and the ID token has expired, the error says
// that the login expired and gives the command that logs in again.
//
// Nothing in this package logs or prints a token.
package login

// Package console owns the relay's web console, /ui: a read-only set of
// server-rendered pages where a person signs in with the relay's OpenID
// provider and sees the clusters they may reach, their state and the
// commands that connect to them; administrators also see every cluster's
// grants and the relay's recent tunnel audit lines.
//
// Design, for review:
//
//   - Sign-in is the authorization code flow with PKCE (S256), as a public
//     client (Config.ClientID, no secret). The state, the nonce and the
//     PKCE verifier live in a short-lived cookie sealed with AES-GCM under a
//     key of this process (so an unauthenticated visitor costs the relay no
//     memory), HttpOnly, Secure, SameSite=Lax, __Host- prefixed. The
//     callback checks the state against it, exchanges the code with the
//     verifier, and verifies the ID token with the relay's own
//     authenticator (signature, issuer, audience, expiry, not-before, claim
//     mappings: the checks every caller's token gets), then checks the
//     verified token's iss, nonce, aud (it must name ClientID) and azp, and
//     refuses the audiences Config.RefusedAudience names (the relay's: any
//     cluster's, the admin API's).
//   - A signed-in session is server-side: the cookie holds 32 random bytes,
//     the relay keeps the SHA-256 of them with the mapped identity (never
//     the token) until the ID token's exp. Logout (POST, with a per-session
//     form token and a same-origin check) forgets it.
//   - Every page is a GET that changes nothing; no page needs JavaScript
//     and none is served; the CSS is embedded. Every answer carries a
//     Content-Security-Policy of default-src 'self' (frame-ancestors 'none'),
//     X-Frame-Options DENY, Referrer-Policy no-referrer (the callback's code
//     never leaves in a Referer), nosniff and Cache-Control no-store.
//   - What the pages show comes from Source, which the relay implements
//     with the checks of its API: a user sees only clusters whose policy and
//     audiences admit them (a cluster that does not exist is refused as one
//     that does not admit them), and the admin page only if they are in an
//     admin group.
package console

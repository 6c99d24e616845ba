// Package tokensource gives a caller's bearer token from where it lives: a
// file (re-read on every call, so a rotated token is picked up), a command
// (its output cached a minute), an environment variable, or a CI job's own
// OpenID token (GitHub Actions' token endpoint). Each source returns the
// current token or an error that names where it looked and what to do.
//
// It is a contract package for whoever presents a token to tether: the
// tether-proxy (kubectl's caller) and tether-relay's admin commands against a
// remote relay. It knows nothing of the relay or the agent, and never logs a
// token.
package tokensource

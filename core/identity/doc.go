// Package identity holds the caller identity types that every hop shares:
// who a token proves the caller is (Identity), what an authenticator decided
// about a token (Result), and the Authenticator interface itself.
//
// It is a contract package: the relay (admission and access policy), the
// agent (impersonation) and the authenticators (core/authn) all name a caller
// with these types, and none of them has to import another's internals to do
// so. It holds no logic and imports nothing but the standard library.
package identity

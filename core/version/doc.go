// Package version says which tether this binary is: the version a release
// build stamps in (-ldflags -X .../core/version.Version=v1.2.3), or, for a
// `go install ...@v1.2.3` build, the module version Go records, or the VCS
// revision of a build from a checkout. The agent and the relay tell each
// other theirs in the session handshake, and every binary prints its own.
//
// It is a contract package: it imports only the standard library.
package version

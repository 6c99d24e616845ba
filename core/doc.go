// Package core is the root of tether's libraries, one package per role: the
// tunnel (session, dialer, listener, transports), the relay router, token
// authentication, impersonation and the cluster registry. core never imports
// a command-line flag library; the binaries in cmd/ turn flags into core
// configurations.
//
// The role packages arrive with the core data path; see docs/architecture.md.
package core

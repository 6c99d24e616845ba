// Command tether-agent runs in a firewalled cluster: it dials out to the
// relay, and serves callers' requests by authenticating their tokens itself
// and forwarding to the API server with impersonation. See
// `tether-agent --help` and docs/cli.md.
package main

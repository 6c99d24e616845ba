// Command tether-proxy runs on the caller's machine: it writes a kubeconfig
// context pointing at itself and forwards kubectl through the relay to the
// cluster's agent with the caller's token. See `tether-proxy --help` and
// docs/cli.md.
package main

// Command tether-relay is tether's public relay: agents dial out to it, and
// callers' proxies reach their clusters through it. See `tether-relay --help`
// and docs/cli.md.
package main

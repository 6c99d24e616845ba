// Package cli holds what tether's three binaries share on the command line:
// logging flags, the version, token sources and reading PEM files. It is the
// only place, with cmd/*, that imports a flag library.
package cli

// Package cli holds what tether's three binaries share on the command line:
// logging flags, the version, signals, byte sizes and reading PEM files. It is
// the only place, with cmd/*, that imports a flag library, and it imports no
// core package but core/version, so that no binary links another role's
// packages through it.
package cli

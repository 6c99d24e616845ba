//go:build tether_plantedbug

package relay

// plantedWrongCluster: see planted_off.go. Never build a release with the
// tether_plantedbug tag.
const plantedWrongCluster = true

//go:build tether_plantedbug

package tunnel

// plantedSkipClusterCheck: see planted_off.go. Never build a release with
// the tether_plantedbug tag.
const plantedSkipClusterCheck = true

//go:build !tether_plantedbug

package relay

// plantedWrongCluster is false in every real build. The simulator's
// planted-bug test builds with the tether_plantedbug tag, which routes
// streams to another cluster's sessions, to show that its invariants catch
// such a bug.
const plantedWrongCluster = false

//go:build !tether_plantedbug

package tunnel

// plantedSkipClusterCheck is false in every real build; with the
// tether_plantedbug tag the agent accepts streams for any cluster, so that
// the simulator's planted routing bug (core/relay) reaches a wrong cluster.
const plantedSkipClusterCheck = false

// Package sim is the simulator's engine: the World (tether's core on a
// netsim network, with an OIDC issuer and stand-in API servers), the
// clients' traffic and its Recorder, the faults (one per fault_*.go file),
// the scenarios, and the invariants checked on each run's record.
package sim

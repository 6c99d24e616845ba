//go:build tether_plantedbug

package sim

import "github.com/tether-k8s/tether/core/tunnel"

// plantedMisroute is the simulator's planted bug, built only with the
// tether_plantedbug tag and only into the simulator: it re-labels the second
// session of cluster c0001's first agent as a session of c0000, the bug of a
// relay that routes a session under the wrong cluster. The router then
// sends some of c0000's streams to c0001's agent. The agent refuses each
// (the Open names another cluster), and the no-misroute invariant must say
// so; tether-proxy's end-to-end TLS would refuse the wrong agent too, so no
// answer from another cluster may arrive (right-cluster holds).
func plantedMisroute(s *tunnel.RelaySession) {
	if s.Hello.Cluster == clusterName(1) && s.Hello.Slot == 1 {
		s.Hello.Cluster = clusterName(0)
	}
}

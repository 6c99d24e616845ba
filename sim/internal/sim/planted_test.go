//go:build tether_plantedbug

package sim_test

import (
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tether-k8s/tether/sim/internal/sim"
)

// Built with -tags tether_plantedbug, the simulator's relay routes one of
// cluster c0001's sessions under c0000 (planted_on.go, through the relay's
// OnAgentSession hook: the bug is in the simulator's files, not in the
// shipped packages). The simulator must say so: no-misroute fails, and no
// answer from another cluster arrives (right-cluster holds), since the agent
// refuses streams for another cluster and the proxy's end-to-end TLS would
// refuse the wrong agent.
var _ = Describe("a planted routing bug", func() {
	It("is caught by the no-misroute invariant, and stopped by the proxy", func() {
		r := run("relay-kill-mid-stream", 1, sim.Options{Duration: 6 * time.Second, RecoverWithin: 2 * time.Second})
		Expect(r.Violations).To(HaveKey("no-misroute"))
		Expect(r.Violations).NotTo(HaveKey("right-cluster"), "a wrong cluster's answer got through the proxy")
		var first time.Time
		for _, o := range r.Obs {
			if o.Misrouted && (first.IsZero() || o.End.Before(first)) {
				first = o.End
			}
		}
		GinkgoWriter.Printf("caught: %d no-misroute violations; the first %s after traffic began\n",
			len(r.Violations["no-misroute"]), first.Sub(r.Start).Round(time.Millisecond))
	})
})

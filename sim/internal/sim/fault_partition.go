package sim

import "math/rand/v2"

// partition cuts two parties apart both ways: their connections stall and
// new dials hang, until it heals. The parties are drawn from every pair
// that talks: agent or client and relay, relay or agent and the issuer.
type partition struct{}

func init() { register(partition{}) }

func (partition) Name() string        { return "partition" }
func (partition) Applies(*World) bool { return true }
func (partition) Inject(w *World, rnd *rand.Rand) (string, func()) {
	a, b := linkEnds(w, rnd)
	if rnd.IntN(5) == 0 {
		b = IssuerHost // the identity provider's keys out of reach
	}
	ds := [][2]string{{a, b}, {b, a}}
	for _, x := range ds {
		w.Net.Link(x[0], x[1]).Pause(true)
	}
	return dirString(ds), func() {
		for _, x := range ds {
			w.Net.Link(x[0], x[1]).Resume(true)
		}
	}
}

package sim

import "math/rand/v2"

// stall holds a link's packets for the fault's duration: a congested or
// flapping path. Nothing is lost.
type stall struct{}

func init() { register(stall{}) }

func (stall) Name() string        { return "stall" }
func (stall) Applies(*World) bool { return true }
func (stall) Inject(w *World, rnd *rand.Rand) (string, func()) {
	a, b := linkEnds(w, rnd)
	ds := directions(rnd, a, b)
	for _, x := range ds {
		w.Net.Link(x[0], x[1]).Pause(false)
	}
	return dirString(ds), func() {
		for _, x := range ds {
			w.Net.Link(x[0], x[1]).Resume(false)
		}
	}
}

package sim

import "math/rand/v2"

// blackhole swallows one direction of a link: unlike a stall it lasts long
// enough that only keepalives can tell the session is dead.
type blackhole struct{}

func init() { register(blackhole{}) }

func (blackhole) Name() string        { return "blackhole" }
func (blackhole) Applies(*World) bool { return true }
func (blackhole) Inject(w *World, rnd *rand.Rand) (string, func()) {
	a, b := linkEnds(w, rnd)
	ds := directions(rnd, a, b)[:1]
	w.Net.Link(ds[0][0], ds[0][1]).Pause(true)
	return dirString(ds), func() { w.Net.Link(ds[0][0], ds[0][1]).Resume(true) }
}

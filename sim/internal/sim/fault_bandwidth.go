package sim

import (
	"fmt"
	"math/rand/v2"
)

// bandwidth caps a link's throughput.
type bandwidth struct{}

func init() { register(bandwidth{}) }

func (bandwidth) Name() string        { return "bandwidth" }
func (bandwidth) Applies(*World) bool { return true }
func (bandwidth) Inject(w *World, rnd *rand.Rand) (string, func()) {
	a, b := linkEnds(w, rnd)
	ds := directions(rnd, a, b)
	bps := (64 + rnd.IntN(960)) << 10
	for _, x := range ds {
		l := w.Net.Link(x[0], x[1])
		lat, j, _ := l.Shape()
		l.SetShape(lat, j, bps)
	}
	return fmt.Sprintf("%s %d KiB/s", dirString(ds), bps>>10), func() {
		for _, x := range ds {
			l := w.Net.Link(x[0], x[1])
			lat, j, _ := l.Shape()
			l.SetShape(lat, j, 0)
		}
	}
}

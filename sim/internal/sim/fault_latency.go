package sim

import (
	"fmt"
	"math/rand/v2"
	"time"
)

// latency adds one-way delay and jitter to a link.
type latency struct{}

func init() { register(latency{}) }

func (latency) Name() string        { return "latency" }
func (latency) Applies(*World) bool { return true }
func (latency) Inject(w *World, rnd *rand.Rand) (string, func()) {
	a, b := linkEnds(w, rnd)
	ds := directions(rnd, a, b)
	d := time.Duration(10+rnd.IntN(190)) * time.Millisecond
	j := time.Duration(rnd.IntN(50)) * time.Millisecond
	for _, x := range ds {
		l := w.Net.Link(x[0], x[1])
		_, _, bw := l.Shape()
		l.SetShape(d, j, bw)
	}
	return fmt.Sprintf("%s +%s ±%s", dirString(ds), d, j), func() {
		for _, x := range ds {
			l := w.Net.Link(x[0], x[1])
			_, _, bw := l.Shape()
			l.SetShape(0, 0, bw)
		}
	}
}

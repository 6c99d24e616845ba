package sim

import (
	"fmt"
	"math/rand/v2"
)

// reset resets every connection on a link, as a middlebox that forgot them
// does.
type reset struct{}

func init() { register(reset{}) }

func (reset) Name() string        { return "reset" }
func (reset) Applies(*World) bool { return true }
func (reset) Inject(w *World, rnd *rand.Rand) (string, func()) {
	a, b := linkEnds(w, rnd)
	n := w.Net.ResetLinks(a, b) + w.Net.ResetLinks(b, a)
	return fmt.Sprintf("%s<->%s: %d connections", a, b, n), func() {}
}

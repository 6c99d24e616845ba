package sim

import (
	"fmt"
	"math/rand/v2"
)

// slowReader makes a client stop reading: the relay's link toward it stalls
// while the client keeps its streams open, so back-pressure reaches the
// agent. Other clients' streams on the same sessions must not suffer.
type slowReader struct{}

func init() { register(slowReader{}); register(flood{}) }

func (slowReader) Name() string          { return "slow-reader" }
func (slowReader) Applies(w *World) bool { return len(w.Clients) > 0 }
func (slowReader) Inject(w *World, rnd *rand.Rand) (string, func()) {
	c := w.Clients[rnd.IntN(len(w.Clients))]
	l := w.Net.Link(RelayHost, clientHost(c.ID))
	l.Pause(false)
	return fmt.Sprintf("client %d", c.ID), func() { l.Resume(false) }
}

// flood opens many tunnels to one cluster at once from one client, up to
// the relay's per-cluster cap; refusals (429) are expected, harm to other
// clusters is not.
type flood struct{}

func (flood) Name() string          { return "flood" }
func (flood) Applies(w *World) bool { return len(w.Clients) > 0 }
func (flood) Inject(w *World, rnd *rand.Rand) (string, func()) {
	c := w.Clients[rnd.IntN(len(w.Clients))]
	stop := w.floodFrom(c, 64+rnd.IntN(192))
	return fmt.Sprintf("client %d → %s", c.ID, c.Cluster.ID), stop
}

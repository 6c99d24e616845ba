package sim

import (
	"context"
	"fmt"
	"math/rand/v2"
)

// agentKill kills one agent process and restarts it (with its stored
// credential) when undone.
type agentKill struct{}

func init() { register(agentKill{}); register(revoke{}) }

func (agentKill) Name() string        { return "agent-kill" }
func (agentKill) Applies(*World) bool { return true }
func (agentKill) Inject(w *World, rnd *rand.Rand) (string, func()) {
	c := w.Clusters[rnd.IntN(len(w.Clusters))]
	i := rnd.IntN(len(c.Agents))
	if !w.agentRunning(c, i) {
		return "", nil
	}
	w.KillAgent(c, i)
	return c.Agents[i].host, func() {
		if err := w.StartAgent(context.Background(), c, i); err != nil {
			w.log.Error("sim: agent restart failed", "agent", c.Agents[i].host, "error", err)
		}
	}
}

// revoke rotates a cluster's credentials on the running relay, which ends
// its sessions at once; undoing it gives the cluster's agents the new join
// token, as an operator would.
type revoke struct{}

func (revoke) Name() string          { return "revoke" }
func (revoke) Applies(w *World) bool { r, _ := w.Relay(); return r != nil }
func (revoke) Inject(w *World, rnd *rand.Rand) (string, func()) {
	router, reg := w.Relay()
	if router == nil {
		return "", nil
	}
	c := w.Clusters[rnd.IntN(len(w.Clusters))]
	tok, err := reg.Rotate(c.ID)
	if err != nil {
		return "", nil
	}
	n := router.CloseCluster(c.ID)
	w.revoked(c.ID, true)
	return fmt.Sprintf("%s (%d sessions ended)", c.ID, n), func() {
		for i := range c.Agents {
			w.KillAgent(c, i)
		}
		c.store.clear()
		c.token = tok
		for i := range c.Agents {
			if err := w.StartAgent(context.Background(), c, i); err != nil {
				w.log.Error("sim: agent rejoin failed", "cluster", c.ID, "error", err)
			}
		}
		w.revoked(c.ID, false)
	}
}

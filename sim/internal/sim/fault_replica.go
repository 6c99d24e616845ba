package sim

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"
)

// The faults of a world of several replicas (WorldConfig.Replicas). Each
// holds the replica it hits until undone, and a kill or drain leaves at
// least two replicas running.

func init() {
	register(replicaKill{})
	register(replicaDrain{})
	register(replicaPartition{})
	register(storePartition{})
}

// replicaKill kills a replica (kill -9: connections reset, its lease left
// to lapse) and restarts it when undone.
type replicaKill struct{}

func (replicaKill) Name() string          { return "replica-kill" }
func (replicaKill) Applies(w *World) bool { return w.multi() }
func (replicaKill) Inject(w *World, rnd *rand.Rand) (string, func()) {
	i := w.pickReplica(rnd, 2)
	if i < 0 {
		return "", nil
	}
	w.KillReplica(i)
	return replicaID(i) + " kill -9", func() { w.restartReplica(i) }
}

// replicaDrain drains a replica (marked draining in the store, the load
// balancer's readiness failed, GoAway to its agents, then the grace) and
// restarts it when undone.
type replicaDrain struct{}

func (replicaDrain) Name() string          { return "replica-drain" }
func (replicaDrain) Applies(w *World) bool { return w.multi() }
func (replicaDrain) Inject(w *World, rnd *rand.Rand) (string, func()) {
	i := w.pickReplica(rnd, 2)
	if i < 0 {
		return "", nil
	}
	grace := time.Duration(1000+rnd.IntN(2000)) * time.Millisecond
	w.DrainReplica(i, grace)
	return fmt.Sprintf("%s drain, grace %s", replicaID(i), grace), func() { w.restartReplica(i) }
}

func (w *World) restartReplica(i int) {
	defer w.release(i)
	if err := w.StartReplica(context.Background(), i); err != nil {
		w.log.Error("sim: replica restart failed", "replica", replicaID(i), "error", err)
	}
}

// replicaPartition cuts two replicas apart both ways (their peer sessions
// stall, new dials hang); each still reaches the store, the load balancer
// and the third.
type replicaPartition struct{}

func (replicaPartition) Name() string          { return "replica-partition" }
func (replicaPartition) Applies(w *World) bool { return w.multi() }
func (replicaPartition) Inject(w *World, rnd *rand.Rand) (string, func()) {
	i := w.pickReplica(rnd, 0)
	if i < 0 {
		return "", nil
	}
	j := w.pickReplica(rnd, 0)
	if j < 0 {
		w.release(i)
		return "", nil
	}
	a, b := replicaHost(i), replicaHost(j)
	w.Net.Link(a, b).Pause(true)
	w.Net.Link(b, a).Pause(true)
	return a + "<->" + b, func() {
		w.Net.Link(a, b).Resume(true)
		w.Net.Link(b, a).Resume(true)
		w.release(i)
		w.release(j)
	}
}

// storePartition cuts a replica from the shared store: its requests wait,
// its watch delivers nothing, its keep-alives stop (its lease lapses after
// the TTL, and the others drop its routes); it keeps routing from the
// table it holds.
type storePartition struct{}

func (storePartition) Name() string          { return "store-partition" }
func (storePartition) Applies(w *World) bool { return w.multi() }
func (storePartition) Inject(w *World, rnd *rand.Rand) (string, func()) {
	i := w.pickReplica(rnd, 0)
	if i < 0 {
		return "", nil
	}
	w.etcd.Cut(replicaID(i), true)
	return replicaID(i) + "</>" + "etcd", func() {
		w.etcd.Cut(replicaID(i), false)
		w.release(i)
	}
}

// replicaFault marks the faults only a world of several replicas has.
func (replicaKill) replicaFault()      {}
func (replicaDrain) replicaFault()     {}
func (replicaPartition) replicaFault() {}
func (storePartition) replicaFault()   {}

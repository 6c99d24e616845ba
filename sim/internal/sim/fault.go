package sim

import (
	"math/rand/v2"
	"time"
)

// Fault is one kind of trouble the simulator injects. Each lives in its own
// file (fault_*.go) and registers itself in Faults.
type Fault interface {
	// Name is the fault's name in -faults and in reports.
	Name() string
	// Applies reports whether the fault can be injected into w now (a
	// relay fault needs a running relay).
	Applies(w *World) bool
	// Inject injects the fault, drawing its details (which link, which
	// direction, how bad) from rnd, and returns a description for the
	// timeline and the function that undoes it.
	Inject(w *World, rnd *rand.Rand) (desc string, undo func())
}

// Faults are every fault the simulator knows, by name.
var Faults = map[string]Fault{}

func register(f Fault) { Faults[f.Name()] = f }

// FaultEvent is one injection on a run's timeline.
type FaultEvent struct {
	Fault string        `json:"fault"`
	At    time.Duration `json:"at"`
	For   time.Duration `json:"for"`
	Desc  string        `json:"desc,omitempty"`
	// Skipped is true when the fault did not apply at its time.
	Skipped bool `json:"skipped,omitempty"`
	// Injected and Undone are when it happened (virtual time in sim.Replay),
	// for the checks.
	Injected time.Time `json:"injected,omitzero"`
	Undone   time.Time `json:"undone,omitzero"`
}

// linkEnds draws the two hosts of a link that carries tether traffic: an
// agent or a client on one side, the relay on the other.
func linkEnds(w *World, rnd *rand.Rand) (a, b string) {
	if len(w.Clients) > 0 && rnd.IntN(2) == 0 {
		return clientHost(w.Clients[rnd.IntN(len(w.Clients))].ID), RelayHost
	}
	c := w.Clusters[rnd.IntN(len(w.Clusters))]
	return c.Agents[rnd.IntN(len(c.Agents))].host, RelayHost
}

// directions draws which directions of a↔b a fault hits: each with
// probability one half, at least one.
func directions(rnd *rand.Rand, a, b string) [][2]string {
	switch rnd.IntN(3) {
	case 0:
		return [][2]string{{a, b}}
	case 1:
		return [][2]string{{b, a}}
	}
	return [][2]string{{a, b}, {b, a}}
}

func dirString(ds [][2]string) string {
	if len(ds) == 2 {
		return ds[0][0] + "<->" + ds[0][1]
	}
	return ds[0][0] + "->" + ds[0][1]
}

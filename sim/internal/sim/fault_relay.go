package sim

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"
)

// relayKill kills the relay (every connection reset, nothing drained) and
// restarts it when undone.
type relayKill struct{}

func init() { register(relayKill{}); register(relayDrain{}) }

func (relayKill) Name() string          { return "relay-kill" }
func (relayKill) Applies(w *World) bool { r, _ := w.Relay(); return r != nil }
func (relayKill) Inject(w *World, _ *rand.Rand) (string, func()) {
	w.KillRelay()
	return "kill -9", func() { w.restartRelay() }
}

// relayDrain stops the relay gracefully (GoAway, then the grace) and
// restarts it when undone.
type relayDrain struct{}

func (relayDrain) Name() string          { return "relay-drain" }
func (relayDrain) Applies(w *World) bool { r, _ := w.Relay(); return r != nil }
func (relayDrain) Inject(w *World, rnd *rand.Rand) (string, func()) {
	grace := time.Duration(200+rnd.IntN(1800)) * time.Millisecond
	w.DrainRelay(grace)
	return fmt.Sprintf("drain, grace %s", grace), func() { w.restartRelay() }
}

// restartRelay starts the relay again, recording when, for the reconnect
// check.
func (w *World) restartRelay() {
	if err := w.StartRelay(context.Background()); err != nil {
		w.log.Error("sim: relay restart failed", "error", err)
		return
	}
	w.mu.Lock()
	w.restarts = append(w.restarts, time.Now())
	w.mu.Unlock()
}

package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tether-k8s/tether/core/internal/wait"
)

// Backoff is exponential backoff with full jitter: the wait before attempt n
// (from 0) is uniform in [0, min(Max, Initial·2ⁿ)), so agents that lost the
// same relay at the same moment come back spread out, not as a herd.
type Backoff struct {
	// Initial is the cap of the first wait. Zero means 500ms.
	Initial time.Duration
	// Max caps every wait. Zero means 30s.
	Max time.Duration
}

// Wait returns the wait before attempt n, using r (from 0 to 1) as the
// random draw.
func (b Backoff) Wait(n int, r float64) time.Duration {
	initial, max := b.Initial, b.Max
	if initial <= 0 {
		initial = 500 * time.Millisecond
	}
	if max <= 0 {
		max = 30 * time.Second
	}
	ceiling := max
	if n < 32 {
		if c := initial << n; c > 0 && c < max {
			ceiling = c
		}
	}
	return time.Duration(r * float64(ceiling))
}

// ErrRevoked is returned by Keeper.Run when the relay refused the agent's
// credential: the agent must join again with a new join token.
var ErrRevoked = errors.New("tunnel: the relay refused this agent's credential; join again with a new token (tether-relay cluster rotate)")

// KeeperConfig configures a Keeper.
type KeeperConfig struct {
	// Sessions is how many sessions the agent keeps open at once, so that a
	// relay restart or rollout costs no outage. Zero means DefaultSessions
	// (2); at most MaxSessions.
	Sessions int
	// Dial connects to the relay and returns the connection (a *tls.Conn
	// in production, with the agent's credential and the pinned relay CA).
	// Required.
	Dial func(ctx context.Context) (net.Conn, error)
	// Agent is the session configuration; its Hello.Slot is set per
	// session. Required: Agent.Hello.Cluster and Agent.Hello.Agent.
	Agent AgentConfig
	// Serve serves a session's streams until the session ends (for the
	// agent, an http.Server's Serve). Required.
	Serve func(ctx context.Context, s *AgentSession) error
	// Backoff paces reconnection after a failure.
	Backoff Backoff
	// StableAfter is how long a session must last for the next reconnect
	// to start from the first backoff step again. Zero means
	// DefaultStableAfter (10s).
	StableAfter time.Duration
	// Rand draws a slot's backoff jitter in [0, 1); the slots call it
	// concurrently. Nil means math/rand/v2. A seeded source per slot makes
	// the waits independent of how the slots' goroutines are scheduled.
	Rand func(slot int) float64
	// Logger receives connection events. Nil discards.
	Logger *slog.Logger
}

// withDefaults returns c with its zero fields set to their defaults.
func (c KeeperConfig) withDefaults() KeeperConfig {
	if c.Sessions == 0 {
		c.Sessions = DefaultSessions
	}
	if c.StableAfter == 0 {
		c.StableAfter = DefaultStableAfter
	}
	if c.Rand == nil {
		c.Rand = func(int) float64 { return rand.Float64() }
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Keeper keeps an agent's sessions to the relay open.
type Keeper struct {
	cfg  KeeperConfig
	log  *slog.Logger
	live atomic.Int32
	// relays holds, per slot, the replica its established session is on
	// ("" while none): the others' Hellos ask to avoid it.
	mu     sync.Mutex
	relays []string
	// firstTried is closed once slot 0's first attempt ended (a session,
	// or a failure).
	firstTried chan struct{}
	firstOnce  sync.Once
	// draining owns the sessions a relay sent GoAway on, served in the
	// background until they end; Run waits for them.
	draining sync.WaitGroup
}

// NewKeeper validates cfg and returns a Keeper; Run starts it.
func NewKeeper(cfg KeeperConfig) (*Keeper, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	h := cfg.Agent.Hello
	return &Keeper{cfg: cfg, log: cfg.Logger.With("cluster", h.Cluster, "agent", h.Agent), relays: make([]string, cfg.Sessions),
		firstTried: make(chan struct{})}, nil
}

// Live returns how many sessions are established now, including those a
// relay is draining: the agent is ready when it is at least 1.
func (k *Keeper) Live() int { return int(k.live.Load()) }

// Run keeps cfg.Sessions sessions open until ctx ends (it then returns nil)
// or the relay refuses the credential (it returns an error wrapping
// ErrRevoked). Every session and goroutine it started has ended when it
// returns.
func (k *Keeper) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	for slot := range k.cfg.Sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := k.runSlot(ctx, slot); err != nil {
				cancel(err)
			}
		}()
	}
	wg.Wait()
	k.draining.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// MaxElsewhere is how many times in a row a slot dials again when a
// replica answered that it holds the agent's other session
// (ReasonElsewhere), before it takes a session there anyway: a load
// balancer that keeps sending it to the same replica (source-address
// affinity) costs a few quick redials, never the session.
const MaxElsewhere = 6

// firstSlotWait bounds how long the other slots wait for slot 0's first
// session before they dial.
const firstSlotWait = 2 * time.Second

func (k *Keeper) waitFirstSlot(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-k.firstTried:
	case <-t.C:
	}
}

// avoid returns the replicas the other slots' sessions are on.
func (k *Keeper) avoid(slot int) []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []string
	for i, r := range k.relays {
		if i != slot && r != "" && !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	return out
}

// clearRelay forgets slot's replica, unless a replacement session already
// took the slot.
func (k *Keeper) clearRelay(slot int, relay string) {
	k.mu.Lock()
	if k.relays[slot] == relay {
		k.relays[slot] = ""
	}
	k.mu.Unlock()
}

func (k *Keeper) setRelay(slot int, relay string) {
	k.mu.Lock()
	k.relays[slot] = relay
	k.mu.Unlock()
	if slot == 0 {
		k.firstOnce.Do(func() { close(k.firstTried) })
	}
}

// runSlot keeps one session open, reconnecting with backoff.
func (k *Keeper) runSlot(ctx context.Context, slot int) error {
	log := k.log.With("slot", slot)
	attempt, elsewhere := 0, 0
	if slot > 0 {
		// The first slot first, briefly, so that this one's Hello can name
		// the replica to avoid.
		k.waitFirstSlot(ctx, firstSlotWait)
	}
	for ctx.Err() == nil {
		began := time.Now()
		err := k.once(ctx, slot, elsewhere < MaxElsewhere)
		if slot == 0 {
			k.firstOnce.Do(func() { close(k.firstTried) })
		}
		if ctx.Err() != nil {
			return nil
		}
		var ref *RefusedError
		if errors.As(err, &ref) && ref.Reason == ReasonElsewhere {
			// Not a failure: dial again at once, with a little jitter,
			// and the load balancer picks a replica.
			elsewhere++
			pause := time.Duration(k.cfg.Rand(slot) * float64(200*time.Millisecond))
			log.Info("tunnel: the replica holds this agent's other session; dialling again for another", "replica", ref.Message, "in", pause.Round(time.Millisecond), "try", elsewhere)
			if !wait.Sleep(ctx, pause) {
				return nil
			}
			continue
		}
		elsewhere = 0
		switch {
		case errors.As(err, &ref) && ref.Reason == ReasonRevoked:
			log.Error("tunnel: relay refused the credential", "message", ref.Message)
			return fmt.Errorf("%w: %s", ErrRevoked, ref.Message)
		case errors.Is(err, errMoved):
			attempt = 0 // the relay asked us to move: replace the session now
		case errors.As(err, &ref) && ref.Reason == ReasonDraining:
			// A refusal while draining counts as a failure, so that agents
			// back off from a lone relay that is restarting instead of
			// hammering it for its whole drain.
		case time.Since(began) >= k.cfg.StableAfter:
			attempt = 0
		}
		pause := k.cfg.Backoff.Wait(attempt, k.cfg.Rand(slot))
		attempt++
		log.Warn("tunnel: session ended; reconnecting", "error", err, "in", pause.Round(time.Millisecond), "attempt", attempt)
		if !wait.Sleep(ctx, pause) {
			return nil
		}
	}
	return nil
}

// errMoved ends once when the relay sent GoAway: the session is still being
// served, in the background, and the slot opens a replacement.
var errMoved = errors.New("tunnel: the relay is draining this session (GoAway); opening a replacement")

// once dials, handshakes and serves one session until it ends, or until the
// relay sends GoAway: the session is then handed to k.draining and once
// returns errMoved.
func (k *Keeper) once(ctx context.Context, slot int, spread bool) error {
	conn, err := k.cfg.Dial(ctx)
	if err != nil {
		return fmt.Errorf("tunnel: dial relay: %w", err)
	}
	acfg := k.cfg.Agent
	acfg.Hello.Slot = slot
	if spread {
		acfg.Hello.Avoid, acfg.Hello.Spread = k.avoid(slot), true
	}
	s, err := ConnectAgent(ctx, conn, acfg)
	if err != nil {
		return err
	}
	// A session counts as live until it ends, draining or not: it still
	// serves its streams, so readiness does not flap while a relay drains.
	k.live.Add(1)
	k.setRelay(slot, s.Welcome.Relay)
	k.log.Info("tunnel: session established", "slot", slot, "session", s.Welcome.Session, "relay", s.Welcome.Relay, "relaySoftware", s.Welcome.Software)
	served := make(chan error, 1)
	k.draining.Add(1)
	go func() {
		defer k.draining.Done()
		stop := context.AfterFunc(ctx, func() { _ = s.Close() })
		defer stop()
		err := k.cfg.Serve(ctx, s)
		_ = s.Close()
		k.live.Add(-1)
		k.clearRelay(slot, s.Welcome.Relay)
		served <- err
	}()
	select {
	case err := <-served:
		if err == nil || errors.Is(err, net.ErrClosed) {
			err = errors.New("tunnel: session closed")
		}
		return err
	case <-s.GoAwayChan():
		return errMoved
	}
}

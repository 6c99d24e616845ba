package tunnel_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tether-k8s/tether/core/tunnel"
)

// fakeRelay accepts agent sessions over net.Pipe, in memory, so that the
// keeper runs inside a synctest bubble with a fake clock.
type fakeRelay struct {
	mu        sync.Mutex
	sessions  []*tunnel.RelaySession
	authorize func(context.Context, *tunnel.Hello, tls.ConnectionState) error
	down      bool
	dials     []time.Time
	wg        sync.WaitGroup
}

func (r *fakeRelay) dial(ctx context.Context) (net.Conn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dials = append(r.dials, time.Now())
	if r.down {
		return nil, errors.New("connection refused")
	}
	relayEnd, agentEnd := net.Pipe()
	authorize := r.authorize
	if authorize == nil {
		authorize = acceptAll
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		s, err := tunnel.AcceptAgent(context.Background(), relayEnd, tunnel.RelayConfig{Authorize: authorize})
		if err != nil {
			return
		}
		r.mu.Lock()
		r.sessions = append(r.sessions, s)
		r.mu.Unlock()
	}()
	return agentEnd, nil
}

// killAll ends every session, as a relay restart does.
func (r *fakeRelay) killAll() {
	r.mu.Lock()
	ss := r.sessions
	r.sessions = nil
	r.mu.Unlock()
	for _, s := range ss {
		_ = s.Close()
	}
}

func newKeeper(t *testing.T, r *fakeRelay, mutate ...func(*tunnel.KeeperConfig)) *tunnel.Keeper {
	t.Helper()
	cfg := tunnel.KeeperConfig{
		Dial:  r.dial,
		Agent: tunnel.AgentConfig{Hello: hello},
		Serve: func(ctx context.Context, s *tunnel.AgentSession) error {
			for {
				c, err := s.Accept()
				if err != nil {
					return err
				}
				_ = c.Close()
			}
		},
	}
	for _, m := range mutate {
		m(&cfg)
	}
	k, err := tunnel.NewKeeper(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// run starts k.Run and returns a stop function that cancels it and waits.
func run(k *tunnel.Keeper) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx) }()
	return func() error { cancel(); return <-done }
}

func TestKeeperHoldsTwoSessionsAndReconnects(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := &fakeRelay{}
		k := newKeeper(t, r)
		stop := run(k)
		synctest.Wait()
		if k.Live() != 2 {
			t.Fatalf("live sessions %d, want 2", k.Live())
		}
		start := time.Now()
		r.killAll() // the relay restarts
		synctest.Wait()
		if k.Live() != 0 {
			t.Fatalf("live sessions %d right after the relay died, want 0", k.Live())
		}
		time.Sleep(500 * time.Millisecond) // the first backoff step's ceiling
		synctest.Wait()
		if k.Live() != 2 {
			t.Fatalf("live sessions %d %s after the relay came back, want 2", k.Live(), time.Since(start))
		}
		if err := stop(); err != nil {
			t.Fatalf("Run = %v after cancel, want nil", err)
		}
		r.killAll()
		r.wg.Wait()
	})
}

func TestKeeperBackoffIsExponentialCappedAndJittered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := &fakeRelay{down: true}
		draws := []float64{0.999, 0.5, 0.999, 0.25, 0.999, 0.999, 0.999, 0.999, 0.999, 0.999}
		var mu sync.Mutex
		i := 0
		k := newKeeper(t, r, func(c *tunnel.KeeperConfig) {
			c.Sessions = 1
			c.Backoff = tunnel.Backoff{Initial: time.Second, Max: 20 * time.Second}
			c.Rand = func(int) float64 { mu.Lock(); defer mu.Unlock(); d := draws[i%len(draws)]; i++; return d }
		})
		stop := run(k)
		time.Sleep(2 * time.Minute)
		_ = stop()
		r.mu.Lock()
		dials := r.dials
		r.mu.Unlock()
		want := []time.Duration{999 * time.Millisecond, 1 * time.Second, 3996 * time.Millisecond, 2 * time.Second,
			15984 * time.Millisecond, 19980 * time.Millisecond, 19980 * time.Millisecond}
		if len(dials) < len(want)+1 {
			t.Fatalf("%d dials in 2 minutes, want at least %d", len(dials), len(want)+1)
		}
		for n, w := range want {
			if got := dials[n+1].Sub(dials[n]); got != w {
				t.Errorf("wait before attempt %d = %s, want %s", n+1, got, w)
			}
		}
	})
}

func TestKeeperStopsWhenRevoked(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := &fakeRelay{authorize: func(context.Context, *tunnel.Hello, tls.ConnectionState) error {
			return tunnel.Refuse(tunnel.ReasonRevoked, "cluster prod was rotated")
		}}
		k := newKeeper(t, r)
		err := k.Run(context.Background())
		if !errors.Is(err, tunnel.ErrRevoked) {
			t.Fatalf("Run = %v, want ErrRevoked", err)
		}
		r.wg.Wait()
	})
}

func TestBackoffWait(t *testing.T) {
	b := tunnel.Backoff{}
	if got := b.Wait(0, 0.5); got != 250*time.Millisecond {
		t.Errorf("default first wait at 0.5 = %s, want 250ms", got)
	}
	if got := b.Wait(1000, 0.5); got != 15*time.Second {
		t.Errorf("wait after many attempts at 0.5 = %s, want 15s (half the 30s cap)", got)
	}
	if got := b.Wait(62, 0.999); got > 30*time.Second || got <= 0 {
		t.Errorf("wait at attempt 62 = %s, want within (0, 30s]: no overflow", got)
	}
}

// eventually polls cond for up to 5 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestKeeperMovesOnGoAwayAndFinishesWhatIsInFlight runs on the real clock:
// it moves bytes over yamux streams, and yamux pools its timers globally,
// which a synctest bubble must not share with the other tests.
func TestKeeperMovesOnGoAwayAndFinishesWhatIsInFlight(t *testing.T) {
	r := &fakeRelay{}
	// Serve echoes, so a stream opened before GoAway can be checked after it.
	k := newKeeper(t, r, func(c *tunnel.KeeperConfig) {
		c.Sessions = 1
		c.Backoff = tunnel.Backoff{Initial: 10 * time.Millisecond}
		c.Serve = func(ctx context.Context, s *tunnel.AgentSession) error {
			for {
				c, err := s.Accept()
				if err != nil {
					return err
				}
				go func() { _, _ = io.Copy(c, c); _ = c.Close() }()
			}
		}
	})
	stop := run(k)
	sessions := func() int { r.mu.Lock(); defer r.mu.Unlock(); return len(r.sessions) }
	eventually(t, "the first session", func() bool { return sessions() == 1 && k.Live() == 1 })
	r.mu.Lock()
	old := r.sessions[0]
	r.mu.Unlock()
	inflight, err := old.Open(context.Background(), &tunnel.Open{Cluster: hello.Cluster, Request: "r1", Client: "c"})
	if err != nil {
		t.Fatal(err)
	}
	if err := old.GoAway(context.Background(), time.Minute, "relay restarting"); err != nil {
		t.Fatal(err)
	}
	if !old.Draining() {
		t.Fatal("Draining() = false after GoAway")
	}
	// Both count as live: the draining one still serves its streams.
	eventually(t, "a replacement session next to the draining one", func() bool { return sessions() == 2 && k.Live() == 2 })
	// The stream opened before GoAway still works on the old session.
	if _, err := inflight.Write([]byte("still here")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	if _, err := io.ReadFull(inflight, buf); err != nil || string(buf) != "still here" {
		t.Fatalf("in-flight stream after GoAway: %q, %v", buf, err)
	}
	_ = inflight.Close()
	_ = old.Close() // the relay's grace ends
	eventually(t, "the drained session to stop counting", func() bool { return k.Live() == 1 })
	time.Sleep(50 * time.Millisecond)
	if k.Live() != 1 || sessions() != 2 {
		t.Fatalf("after the drain: %d live, relay saw %d sessions; want 1 live and no further reconnect", k.Live(), sessions())
	}
	if err := stop(); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	r.killAll()
	r.wg.Wait()
}

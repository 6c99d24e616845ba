package sim

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// Replay runs sc with o, as Run does, inside a testing/synctest bubble:
// every goroutine of the world starts in the bubble, time is virtual (it
// starts at midnight UTC, 1 January 2000, in every bubble, and moves only
// when every goroutine of the world waits on a timer), and the bubble
// ends only once every one of them has returned. So a run's timings come
// from the seed (the fault plan, the traffic's draws, the network's
// jitter, the agents' backoff), not from how busy the machine is, and a
// run takes the CPU time its work needs, not the wall time its timeline
// spans. t is the test the bubble belongs to; Replay never fails it (the
// verdict is in the Result), but a panic in the world crashes the test
// binary, and a goroutine left blocked when Run returns makes synctest
// fail t ("deadlock: main bubble goroutine has exited but blocked
// goroutines remain", with their stacks): a leak.
//
// If o.Interrupted is set, Replay polls it every 100 ms of virtual time and
// ends the run (as a cancelled context ends Run) once it reports true.
//
// Replay must not be called from inside a bubble, nor from parallel tests:
// it empties the process's sync.Pools before and after the bubble (see
// flushPools).
func Replay(t *testing.T, sc *Scenario, o Options) (r *Result, err error) {
	flushPools()
	defer flushPools()
	var beat atomic.Int64 // the bubble's clock, as the heartbeat last saw it
	stopWatch := watchClock(sc.Name, o.Seed, &beat)
	defer stopWatch()
	synctest.Test(t, func(*testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var heart sync.WaitGroup
		heart.Go(func() {
			tk := time.NewTicker(100 * time.Millisecond)
			defer tk.Stop()
			for {
				beat.Store(time.Now().UnixNano())
				if o.Interrupted != nil && o.Interrupted() {
					cancel()
				}
				select {
				case <-ctx.Done():
					return
				case <-tk.C:
				}
			}
		})
		r, err = Run(ctx, sc, o)
		cancel()
		heart.Wait()
	})
	return r, err
}

// FrozenAfter is how long, in wall time, the bubble's clock may stand
// still before Replay gives up on the run.
var FrozenAfter = 2 * time.Minute

// watchClock ends the process, with every goroutine's stack, once the
// bubble's clock has not moved for FrozenAfter: virtual time moves only
// when every goroutine in the bubble is durably blocked, and a goroutine
// waiting for a sync.Mutex is not; so a lock held by a goroutine that
// waits for time (a timer, or bytes that arrive later) stops the clock
// for good, and the run would hang. Its stacks show who holds what.
func watchClock(name string, seed uint64, beat *atomic.Int64) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tk := time.NewTicker(FrozenAfter / 10)
		defer tk.Stop()
		last, since := beat.Load(), time.Now()
		for {
			select {
			case <-done:
				return
			case <-tk.C:
			}
			if b := beat.Load(); b != last {
				last, since = b, time.Now()
				continue
			}
			if time.Since(since) < FrozenAfter {
				continue
			}
			fmt.Fprintf(os.Stderr, "sim: %s seed %d: virtual time has not moved for %s of wall time: a goroutine waits for a lock "+
				"that a goroutine waiting for time holds (or a goroutine is outside the bubble's reach); every goroutine:\n\n", name, seed, FrozenAfter)
			_ = pprof.Lookup("goroutine").WriteTo(os.Stderr, 2)
			os.Exit(3)
		}
	})
	return func() { close(done); wg.Wait() }
}

// flushPools empties every sync.Pool in the process: a pool keeps what was
// put in it until the second collection after. Libraries pool timers (yamux
// pools the timers of its write timeouts): a timer made inside one bubble
// is that bubble's, and using it from outside or from the next bubble is a
// fatal error ("reset of synctest timer from outside bubble"); a timer made
// outside a bubble does not run on the bubble's clock.
func flushPools() {
	runtime.GC()
	runtime.GC()
}

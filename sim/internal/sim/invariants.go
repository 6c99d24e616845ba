package sim

import (
	"fmt"
	"sort"
	"strconv"
	"time"
)

// Bounds the invariants hold the system to.
const (
	// StallBound: a stream that receives nothing for this long must have
	// ended. yamux notices a dead session within 15 s of keepalive plus
	// 10 s of write timeout.
	StallBound = 40 * time.Second
	// EndBound: a stream established before the relay was killed ends
	// within this of the kill.
	EndBound = 5 * time.Second
	// ReconnectBound: after the relay restarts, every cluster has a
	// session again within this (backoff is capped at 30 s).
	ReconnectBound = 35 * time.Second
	// goroutineSlack is how many goroutines may outlive a run (the
	// runtime's and the test framework's own come and go).
	goroutineSlack = 25
	// heapSlack is how much more heap may be in use after a run than
	// before it.
	heapSlack = 64 << 20
)

// Invariant is one property checked on a run's record afterwards.
type Invariant struct {
	Name string
	// Check returns one line per violation.
	Check func(r *Result) []string
}

// Invariants are checked after every run, in this order.
var Invariants = []Invariant{
	{"right-cluster", checkRightCluster},
	{"no-misroute", checkMisroute},
	{"no-forward-loop", checkHops},
	{"drain-loses-no-request", checkDrainLoss},
	{"routes-converge", checkConvergence},
	{"caller-identity", checkIdentity},
	{"bytes-intact", checkIntact},
	{"no-silent-stall", checkStall},
	{"streams-end-with-tunnel", checkStreamsEnd},
	{"reconnect-bound", checkReconnect},
	{"recovers", checkRecovers},
	{"no-leak", checkLeak},
	{"net-closed", checkNetClosed},
}

// checkRightCluster: no answer ever came from a cluster other than the
// one the client asked for.
func checkRightCluster(r *Result) []string {
	var out []string
	for _, o := range r.Obs {
		if o.WrongCluster != "" {
			out = append(out, fmt.Sprintf("client %d asked %s and got an answer from %s (%s at %s)", o.Client, o.Cluster, o.WrongCluster, o.Op, r.at(o.Start)))
		}
	}
	return out
}

// checkMisroute: the relay never connected a caller to another cluster's
// agent (which the proxy's TLS check refuses, so no answer comes back).
func checkMisroute(r *Result) []string {
	var out []string
	for _, o := range r.Obs {
		if o.Misrouted {
			out = append(out, fmt.Sprintf("client %d of %s was connected to another cluster's agent (%s at %s): %s", o.Client, o.Cluster, o.Op, r.at(o.Start), o.Err))
		}
	}
	return out
}

// checkIdentity: every request an API server saw was made as the caller's
// own user, with the agent's credential, in the caller's cluster.
func checkIdentity(r *Result) []string {
	var out []string
	for _, s := range r.Seen {
		id, err := strconv.Atoi(s.Client)
		if err != nil || id < 0 || id >= len(r.clientCluster) {
			out = append(out, fmt.Sprintf("%s served a request from no known client (%q) as %q", s.Cluster, s.Client, s.User))
			continue
		}
		if want := "oidc:" + userFor(id); s.User != want {
			out = append(out, fmt.Sprintf("%s served client %d as %q, want %q", s.Cluster, id, s.User, want))
		}
		if r.clientCluster[id] != s.Cluster {
			out = append(out, fmt.Sprintf("client %d of %s reached the API server of %s", id, r.clientCluster[id], s.Cluster))
		}
		if s.Credential != "Bearer "+saToken(s.Cluster) {
			out = append(out, fmt.Sprintf("%s got a request for client %d without the agent's credential", s.Cluster, id))
		}
	}
	return out
}

// checkIntact: every transfer that completed carried exactly its bytes,
// and every watch was in order.
func checkIntact(r *Result) []string {
	var out []string
	for _, o := range r.Obs {
		if o.Corrupt != "" {
			out = append(out, fmt.Sprintf("client %d %s at %s: %s", o.Client, o.Op, r.at(o.Start), o.Corrupt))
		}
	}
	return out
}

// checkStall: a watch or log stream either kept delivering or ended; it
// never went quiet for longer than StallBound.
func checkStall(r *Result) []string {
	var out []string
	for _, o := range r.Obs {
		if (o.Op == "watch" || o.Op == "logs") && o.MaxGap > StallBound {
			out = append(out, fmt.Sprintf("client %d %s at %s went %s without an event and without ending", o.Client, o.Op, r.at(o.Start), o.MaxGap.Round(time.Millisecond)))
		}
	}
	return out
}

// checkStreamsEnd: when the relay is killed, every stream established
// through it ends within EndBound.
func checkStreamsEnd(r *Result) []string {
	var out []string
	for _, ev := range r.Timeline {
		if ev.Fault != "relay-kill" || ev.Skipped || ev.Injected.IsZero() {
			continue
		}
		for _, o := range r.Obs {
			if !o.Established.IsZero() && o.Established.Before(ev.Injected) && o.End.After(ev.Injected.Add(EndBound)) {
				out = append(out, fmt.Sprintf("client %d %s established at %s outlived the relay killed at %s by %s",
					o.Client, o.Op, r.at(o.Established), r.at(ev.Injected), o.End.Sub(ev.Injected).Round(time.Millisecond)))
			}
		}
	}
	return out
}

// checkReconnect: after each relay restart, every cluster (but a revoked
// one) has a session within ReconnectBound.
func checkReconnect(r *Result) []string {
	var out []string
	for _, rc := range r.Reconnects {
		if rc.Took > ReconnectBound || rc.Took < 0 {
			took := "never"
			if rc.Took >= 0 {
				took = rc.Took.Round(time.Millisecond).String()
			}
			out = append(out, fmt.Sprintf("%s reconnected %s after the relay restart at %s", rc.Cluster, took, r.at(rc.Restart)))
		}
	}
	return out
}

// checkRecovers: once every fault is undone, every client gets through.
func checkRecovers(r *Result) []string { return r.unrecovered }

// checkLeak: the run's goroutines are gone once the world is closed, and
// its heap with them (within heapSlack: caches and pools stay).
func checkLeak(r *Result) []string {
	var out []string
	if r.GoroutinesAfter > r.GoroutinesBefore+goroutineSlack {
		out = append(out, fmt.Sprintf("%d goroutines before the run, %d after it ended:\n%s", r.GoroutinesBefore, r.GoroutinesAfter, r.leakDump))
	}
	if r.HeapAfter > r.HeapBefore+heapSlack {
		out = append(out, fmt.Sprintf("heap in use %d MiB before the run, %d MiB after the world was closed", r.HeapBefore>>20, r.HeapAfter>>20))
	}
	return out
}

// checkNetClosed: once the world is closed, every connection on the
// simulated network is closed or reset and every listener closed: a
// connection left open is one its owner forgot (a file descriptor leaked,
// on a real host).
func checkNetClosed(r *Result) []string {
	var out []string
	for _, o := range r.Open {
		out = append(out, o+" still open after the world was closed")
	}
	return out
}

// percentile returns the p-th percentile (0 to 1) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

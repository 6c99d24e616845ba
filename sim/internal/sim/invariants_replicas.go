package sim

import (
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/tether-k8s/tether/core/relay/mesh"
)

// ConvergeBound: once a fault on a world of several replicas heals, or a
// replica stops, every running replica's route table agrees with the
// sessions the replicas hold within this, on virtual time. The slowest
// paths: a stopped replica's keys lapse with its lease, within the TTL
// (mesh.DefaultLeaseTTL, 5 s); a replica cut from the store for longer
// than the TTL takes a new lease within the mesh's publish backoff (at
// most 5 s) once it reaches the store again. A watch delivers, and the
// mesh publishes a change, within a second of it.
const ConvergeBound = mesh.DefaultLeaseTTL + 6*time.Second

// checkHops: no stream was forwarded twice, or by a replica other than the
// one the caller landed on, and every hop of a stream was for the cluster
// the caller asked for.
func checkHops(r *Result) []string {
	byReq := map[string][]Hop{}
	for _, h := range r.Hops {
		byReq[h.Request] = append(byReq[h.Request], h)
	}
	var out []string
	for req, hs := range byReq {
		var entry, fwd []Hop
		for _, h := range hs {
			if h.Forwarded {
				fwd = append(fwd, h)
			} else {
				entry = append(entry, h)
			}
		}
		switch {
		case len(fwd) > 1:
			out = append(out, fmt.Sprintf("request %s crossed %d replica-to-replica hops (%s), want at most one", req, len(fwd), hopPath(fwd)))
		case len(entry) > 1:
			out = append(out, fmt.Sprintf("request %s entered at %d replicas (%s)", req, len(entry), hopPath(entry)))
		}
		for _, f := range fwd {
			if f.From == f.Replica {
				out = append(out, fmt.Sprintf("request %s was forwarded by %s to itself", req, f.Replica))
			}
			if len(entry) == 1 && f.From != entry[0].Replica {
				out = append(out, fmt.Sprintf("request %s entered at %s but was forwarded to %s by %s", req, entry[0].Replica, f.Replica, f.From))
			}
		}
		for _, h := range hs[1:] {
			if h.Cluster != hs[0].Cluster {
				out = append(out, fmt.Sprintf("request %s was for %s at %s and for %s at %s", req, hs[0].Cluster, hs[0].Replica, h.Cluster, h.Replica))
			}
		}
	}
	sort.Strings(out)
	return out
}

func hopPath(hs []Hop) string {
	s := ""
	for i, h := range hs {
		if i > 0 {
			s += ", "
		}
		s += h.From + "->" + h.Replica
	}
	return s
}

// DrainAfter: a drain must lose no short request made up to this long
// after the drained replica stopped either (a tunnel it left open for the
// proxy to reuse would lose the next one).
const DrainAfter = time.Second

// checkDrainLoss: every short request (a get) in flight while a replica
// drained, from the drain's start until DrainAfter after the replica
// stopped, succeeded: the other replicas took what the draining one no
// longer did. Requests that overlapped another fault are not judged.
func checkDrainLoss(r *Result) []string {
	type window struct{ from, to time.Time }
	var others []window
	for _, e := range r.Timeline {
		if e.Skipped || e.Injected.IsZero() || e.Fault == "replica-drain" {
			continue
		}
		to := e.Undone
		if to.IsZero() {
			to = time.Now()
		}
		others = append(others, window{r.Start.Add(e.At), to})
	}
	var out []string
	for _, d := range r.Drains {
		for _, o := range r.Obs {
			if o.Op != "get" || o.Start.After(d.Stopped.Add(DrainAfter)) || o.End.Before(d.Start) || o.Err == "" {
				continue
			}
			if slices.ContainsFunc(others, func(w window) bool { return !o.Start.After(w.to) && !o.End.Before(w.from) }) {
				continue
			}
			out = append(out, fmt.Sprintf("client %d's get at %s, while %s drained (%s to %s), failed: %s",
				o.Client, r.at(o.Start), d.Replica, r.at(d.Start), r.at(d.Stopped), o.Err))
		}
	}
	return out
}

// checkConvergence: after each fault of a world of several replicas heals,
// and after each replica stops (while it stays stopped), every running
// replica's route table agrees with the sessions the replicas hold within
// ConvergeBound. A moment is not judged when the next fault (or the
// stopped replica's restart) comes within the bound.
func checkConvergence(r *Result) []string {
	if len(r.Tables) == 0 {
		return nil
	}
	nextFault := func(after time.Time) time.Time {
		next := time.Time{}
		for _, f := range r.Timeline {
			if !f.Skipped && !f.Injected.IsZero() && f.Injected.After(after) && (next.IsZero() || f.Injected.Before(next)) {
				next = f.Injected
			}
		}
		return next
	}
	var out []string
	judge := func(what string, from, cut time.Time) {
		if !cut.IsZero() && cut.Before(from.Add(ConvergeBound)) {
			return
		}
		last := ""
		for _, s := range r.Tables {
			if !s.At.After(from) {
				continue // at the same instant, maybe sampled before
			}
			if s.At.After(from.Add(ConvergeBound)) {
				break
			}
			if s.Disagree == "" {
				return
			}
			last = s.Disagree
		}
		if last == "" {
			return // not sampled so long
		}
		out = append(out, fmt.Sprintf("%s at %s, and %s later the route tables still disagreed: %s", what, r.at(from), ConvergeBound, last))
	}
	for _, e := range r.Timeline {
		if !e.Skipped && !e.Undone.IsZero() {
			judge(fmt.Sprintf("%s (%s) healed", e.Fault, e.Desc), e.Undone, nextFault(e.Undone))
		}
	}
	for _, st := range r.Stops {
		cut := nextFault(st.At)
		if !st.Restarted.IsZero() && (cut.IsZero() || st.Restarted.Before(cut)) {
			cut = st.Restarted
		}
		judge(st.Replica+" stopped", st.At, cut)
	}
	return out
}

// Package node runs the benchmark's components as child processes and places
// them on the benchmark's network.
//
// Every component of every contender (a relay, an agent, a proxy, the target
// server) runs in a process of its own, so that its CPU time and memory can be
// read from /proc and attributed to it, and so that a relay can be killed with
// SIGKILL. Components written against a Go API (tether's, remotedialer's, the
// target server) are roles of the harness binary itself: the parent re-executes
// its own binary with TETHER_BENCH_ROLE set, and the child runs that role
// (ChildMain). Peers that ship their own commands (chisel, frp, Konnectivity)
// run as those commands, built from their modules.
//
// A role child talks to its parent over its standard streams, one line at a
// time: it prints "READY <json>" once it serves (the JSON carries what the
// parent needs to know, such as the ports it listens on), answers each
// command line on standard input ("stats", or one the role registered, with
// a JSON argument) with "REPLY <json>", and stops when its standard input
// closes, which happens when the parent stops it or dies. Every child also
// gets SIGKILL when its parent dies (Pdeathsig), and in a namespaced topology
// the namespaces' reaper kills whatever is left.
//
// A Topology says where components run. With root it is three network
// namespaces from fixtures/netns (caller, a router standing for the public
// internet where relays run, and the cluster), joined by veth pairs in
// 198.18.0.0/15, whose cluster link can be given a round-trip time with netem.
// Without root every component runs on 127.0.0.1 and no round-trip time can be
// added.
package node

// Command bench measures tether side by side with its peers (remotedialer,
// chisel, frp, Konnectivity) and a direct connection, on the same target
// server and the same load generator, and writes the results as markdown
// with SVG plots.
//
//	go run . -quick            # make bench-quick: a few seconds per workload
//	go run . -out ../docs/benchmarks.md   # make bench
//
// It exits non-zero when the harness breaks: a contender that does not
// build or start, one that fails every request of a workload, or tether
// failing any request. See package harness for the run, package workload for
// what each workload measures, and bench/peers for how each peer is built.
package main

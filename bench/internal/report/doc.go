// Package report writes the benchmark's results: one markdown document with
// a table per workload, and line charts as hand-written SVG files beside it.
package report

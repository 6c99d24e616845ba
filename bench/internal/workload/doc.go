// Package workload holds the benchmark's workloads (W1 to W8 of the issue
// that asked for it), each run against every contender in turn, in the same
// run, so that every figure can be given as a ratio to the direct baseline
// measured minutes earlier on the same noisy machine.
//
// Every workload is bounded in count and in time (Sizes), and sends traffic
// only to the run's own topology (loopback or the run's namespaces).
package workload

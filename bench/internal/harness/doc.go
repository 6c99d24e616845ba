// Package harness runs the benchmark: it builds the network and the peers,
// starts the target and the contenders, runs the workloads against each in
// turn and writes the report. The command in bench/ and its test call Run.
package harness

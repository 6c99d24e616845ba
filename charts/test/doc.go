// Package charts tests tether's Helm charts (charts/tether-agent and
// charts/tether-relay) with Helm's Go SDK, without a cluster or Docker: it
// lints them, renders them for a matrix of values and checks the objects,
// checks that values.schema.json refuses wrong values with a message naming
// the value, that every flag the pods are given exists in the binaries, and
// that each chart's README values table matches its schema.
package charts

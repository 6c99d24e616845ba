// Package load is the load generator every contender is measured with: an
// HTTP/1.1 client over the connections a contender's Dial opens, and the
// bookkeeping of latencies and failures.
package load

// Package clusterid owns the rule for cluster IDs, which every tether
// component checks at its edge: the registry when a cluster is created, the
// relay when a caller or an agent names one, the agent when a stream claims
// one. IDs are lower-case RFC 1123 DNS labels and are never normalised, so
// one that passes is safe as it is in a URL path, a header, a certificate URI
// and a log line.
package clusterid

// Package clustercert owns the rule that ties a certificate to one cluster:
// a cluster credential carries exactly one URI SAN, tether://cluster/ID, and
// the same ID as its common name. The relay's registry issues credentials by
// this rule (URI) and checks agents by it (ClusterID); tether-proxy and the
// relay's cluster endpoint verify, inside every tunnel, that the agent
// answering is the requested cluster's (AgentClientTLS, VerifyAgent).
//
// It is a contract package shared by the relay, the agent and the caller's
// side, so that none of them imports another's internals (the caller's side
// never links the relay's store); it depends only on core/clusterid.
package clustercert

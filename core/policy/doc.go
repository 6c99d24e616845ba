// Package policy owns who may reach a cluster through the relay: a
// cluster's Policy (users, groups, and CEL rules over the caller's mapped
// identity) and its evaluation. An empty policy admits no one. The relay
// checks it after authenticating the caller and before opening a tunnel;
// the agent still authenticates the caller itself, and the cluster's RBAC
// decides what the caller may do.
package policy

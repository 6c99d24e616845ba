package contender

import (
	"github.com/tether-k8s/tether/bench/internal/node"
	"github.com/tether-k8s/tether/bench/internal/target"
)

// Roles returns the roles the harness binary runs in child processes: the
// target server and tether's components.
func Roles() map[string]node.Role {
	return map[string]node.Role{
		"target":       target.Role,
		"link":         node.LinkRole,
		"tether-relay": tetherRelayRole,
		"tether-agent": tetherAgentRole,
		"tether-proxy": tetherProxyRole,
		"tether-swarm": swarmRole,
		"etcd":         etcdRole,
	}
}

package relay

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/tether-k8s/tether/core/policy"
	"github.com/tether-k8s/tether/core/registry"
)

// ClusterStatus is one cluster in the admin API's list.
type ClusterStatus struct {
	ID        string    `json:"id"`
	CreatedAt time.Time `json:"createdAt"`
	// Credentials is how many agent certificates are current (not replaced
	// by a renewal).
	Credentials int `json:"credentials"`
	// Sessions is how many agent sessions this relay holds for it now.
	Sessions int `json:"sessions"`
	// Grants is how many users, groups and rules its policy lists.
	Grants int `json:"grants"`
}

// PolicyChange is the answer to grant and revoke.
type PolicyChange struct {
	Cluster string        `json:"cluster"`
	Policy  policy.Policy `json:"policy"`
	// Removed is how many entries a revoke removed.
	Removed int `json:"removed"`
	// TunnelsEnded is how many open tunnels the change ended: those of
	// callers the new policy no longer admits (a running relay only).
	TunnelsEnded int `json:"tunnelsEnded"`
}

// CreateClusterRequest is the body of POST /v1/admin/clusters.
type CreateClusterRequest struct {
	Name string `json:"name"`
}

// AdminResult is the answer of the admin API's changes.
type AdminResult struct {
	Cluster string `json:"cluster"`
	// JoinToken is the new one-time join token (create, rotate). It is
	// shown once and stored only hashed.
	JoinToken string `json:"joinToken,omitempty"`
	// SessionsClosed is how many live agent sessions the change ended
	// (rotate, delete).
	SessionsClosed int `json:"sessionsClosed"`
}

// Admin is the relay's administration: what tether-relay's cluster
// commands do. AdminService does it on the registry (inside a running relay,
// or offline on its store); AdminClient asks a running relay to, over its
// admin socket or its public API.
type Admin interface {
	// Clusters lists the clusters, with live session counts when Live.
	Clusters(ctx context.Context) ([]ClusterStatus, error)
	// Create creates a cluster and returns its one-time join token.
	Create(ctx context.Context, name string) (AdminResult, error)
	// Rotate revokes a cluster's credentials, ends its sessions and
	// returns a new join token.
	Rotate(ctx context.Context, id string) (AdminResult, error)
	// Delete forgets a cluster and ends its sessions.
	Delete(ctx context.Context, id string) (AdminResult, error)
	// Policy returns a cluster's access policy.
	Policy(ctx context.Context, id string) (PolicyChange, error)
	// Grant adds p's users, groups, rules and audiences to a cluster's
	// policy.
	Grant(ctx context.Context, id string, p policy.Policy) (PolicyChange, error)
	// Revoke removes them.
	Revoke(ctx context.Context, id string, p policy.Policy) (PolicyChange, error)
	// CA returns the relay's CA certificate (PEM).
	CA(ctx context.Context) ([]byte, error)
	// Live reports whether a running relay answers: then session counts
	// are known, and rotate and delete end live sessions at once.
	Live() bool
}

// AdminService is the one implementation of the relay's administration,
// which the admin API's handlers (local socket and remote) and the offline
// commands all call.
type AdminService struct {
	// Registry holds the clusters. Required.
	Registry *registry.Registry
	// Router, when not nil, is the running relay's: rotate and delete end
	// the cluster's sessions on it, and Clusters counts them. Nil is the
	// offline mode: the relay is not running, and refuses the old
	// credentials when it starts.
	Router *Router
	// Logger receives one line per change; Audit one per tunnel a policy
	// change ended. Nil discards.
	Logger, Audit *slog.Logger
}

var _ Admin = (*AdminService)(nil)

func (a *AdminService) log() *slog.Logger {
	if a.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return a.Logger
}

// Live implements Admin: a service with a Router is a running relay's.
func (a *AdminService) Live() bool { return a.Router != nil }

// Clusters implements Admin.
func (a *AdminService) Clusters(context.Context) ([]ClusterStatus, error) {
	cs, err := a.Registry.Clusters()
	if err != nil {
		return nil, err
	}
	out := make([]ClusterStatus, 0, len(cs))
	for _, c := range cs {
		st := ClusterStatus{ID: c.ID, CreatedAt: c.CreatedAt, Credentials: len(c.CurrentCredentials()),
			Grants: len(c.Policy.Users) + len(c.Policy.Groups) + len(c.Policy.Rules)}
		if a.Router != nil {
			st.Sessions = a.Router.AllSessions(c.ID)
		}
		out = append(out, st)
	}
	return out, nil
}

// Create implements Admin.
func (a *AdminService) Create(_ context.Context, name string) (AdminResult, error) {
	tok, err := a.Registry.CreateCluster(name)
	if err != nil {
		return AdminResult{}, err
	}
	a.log().Info("relay: cluster created", "cluster", name)
	return AdminResult{Cluster: name, JoinToken: tok}, nil
}

// Rotate implements Admin.
func (a *AdminService) Rotate(_ context.Context, id string) (AdminResult, error) {
	tok, err := a.Registry.Rotate(id)
	if err != nil {
		return AdminResult{}, err
	}
	n := a.closeCluster(id)
	a.log().Info("relay: cluster rotated; its credentials are revoked and its sessions ended", "cluster", id, "sessions", n)
	return AdminResult{Cluster: id, JoinToken: tok, SessionsClosed: n}, nil
}

// Delete implements Admin.
func (a *AdminService) Delete(_ context.Context, id string) (AdminResult, error) {
	if err := a.Registry.DeleteCluster(id); err != nil {
		return AdminResult{}, err
	}
	n := a.closeCluster(id)
	a.log().Info("relay: cluster deleted; its sessions ended", "cluster", id, "sessions", n)
	return AdminResult{Cluster: id, SessionsClosed: n}, nil
}

func (a *AdminService) closeCluster(id string) int {
	if a.Router == nil {
		return 0
	}
	return a.Router.CloseCluster(id)
}

// Policy implements Admin.
func (a *AdminService) Policy(_ context.Context, id string) (PolicyChange, error) {
	c, err := a.Registry.Cluster(id)
	if err != nil {
		return PolicyChange{}, err
	}
	return PolicyChange{Cluster: c.ID, Policy: c.Policy}, nil
}

// Grant implements Admin.
func (a *AdminService) Grant(_ context.Context, id string, add policy.Policy) (PolicyChange, error) {
	p, err := a.Registry.UpdatePolicy(id, func(p policy.Policy) (policy.Policy, error) { return p.Add(add), nil })
	if err != nil {
		return PolicyChange{}, err
	}
	a.log().Info("relay: access policy changed", "cluster", id, "change", "grant", "users", add.Users, "groups", add.Groups, "rules", len(add.Rules), "audiences", add.Audiences)
	// A grant can end tunnels too: an audience it adds is a requirement.
	return PolicyChange{Cluster: id, Policy: p, TunnelsEnded: a.recheck(id, p)}, nil
}

// Revoke implements Admin.
func (a *AdminService) Revoke(_ context.Context, id string, drop policy.Policy) (PolicyChange, error) {
	removed := 0
	p, err := a.Registry.UpdatePolicy(id, func(p policy.Policy) (policy.Policy, error) {
		var q policy.Policy
		q, removed = p.Remove(drop)
		return q, nil
	})
	if err != nil {
		return PolicyChange{}, err
	}
	a.log().Info("relay: access policy changed", "cluster", id, "change", "revoke", "users", drop.Users, "groups", drop.Groups, "rules", len(drop.Rules), "audiences", drop.Audiences, "removed", removed)
	return PolicyChange{Cluster: id, Policy: p, Removed: removed, TunnelsEnded: a.recheck(id, p)}, nil
}

// recheck ends the cluster's open tunnels whose callers p no longer admits,
// as the relay would refuse them if they opened now, and returns how many.
func (a *AdminService) recheck(id string, p policy.Policy) int {
	if a.Router == nil {
		return 0
	}
	cuts := a.Router.Recheck(id, func(o StreamOwner) error {
		if err := policy.CheckAudience(p, o.Audiences); err != nil {
			return err
		}
		if d, _ := policy.Check(p, o.Identity); !d.Allowed {
			return errors.New(d.Why)
		}
		return nil
	})
	audit := a.Audit
	if audit == nil {
		audit = slog.New(slog.DiscardHandler)
	}
	for _, c := range cuts {
		audit.Warn("relay: tunnel ended: the caller is no longer admitted to the cluster", "cluster", id, "user", c.Owner.Identity.User, "why", c.Why)
	}
	return len(cuts)
}

// CA implements Admin.
func (a *AdminService) CA(context.Context) ([]byte, error) { return a.Registry.CAPEM(), nil }

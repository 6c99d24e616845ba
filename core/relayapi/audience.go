package relayapi

import (
	"fmt"
	"slices"
	"strings"
)

// Audiences separate the hops of the request path: a token one hop accepts
// is refused by every other hop, so that whoever sees a token at one hop
// cannot replay it at another (docs/security.md, "Audiences per hop").
const (
	// DefaultRelayAudience is the audience of the tokens a caller presents
	// to the relay (the relay hop: tunnels, cluster details, whoami). The
	// relay's agents refuse it.
	DefaultRelayAudience = "tether:relay"
	// ClusterAudiencePrefix starts every cluster's audience
	// (ClusterAudience). The relay refuses a token with any audience
	// that starts with it: an agent saw such a token.
	ClusterAudiencePrefix = "tether:cluster:"
)

// ClusterAudience is the audience of the tokens a caller presents to the
// agent of cluster (inside the end-to-end TLS, which the relay does not
// see): tether:cluster:NAME.
func ClusterAudience(cluster string) string { return ClusterAudiencePrefix + cluster }

// ClusterAudiences returns the audiences of auds that are clusters'
// (ClusterAudiencePrefix), in order.
func ClusterAudiences(auds []string) []string {
	var out []string
	for _, a := range auds {
		if strings.HasPrefix(a, ClusterAudiencePrefix) {
			out = append(out, a)
		}
	}
	return out
}

// CheckAgentAudiences is the audience check of the agent of the cluster
// whose audience is cluster: it refuses a token for relay (the relay saw
// it, so the relay could replay it here) and a token for any other
// cluster's audience (that cluster's agent saw it), each with a message
// saying what to present instead. A token for neither (a shared audience
// such as a CI recipe's "tether", or the login's client ID) passes: the
// agent's authentication configuration decides whether it accepts such
// audiences at all. Empty relay or cluster disables that half of the check.
func CheckAgentAudiences(auds []string, relay, cluster string) error {
	if relay != "" && slices.Contains(auds, relay) {
		return fmt.Errorf("this token is for the relay's audience %s (the relay saw it, so it is not accepted here): present a token for this cluster's audience, %s (tether-proxy --cluster-token-file, or a login whose identity provider can exchange tokens)",
			relay, orUnset(cluster))
	}
	for _, a := range ClusterAudiences(auds) {
		if cluster != "" && a != cluster {
			return fmt.Errorf("this token is for another cluster's audience, %s (that cluster's agent saw it, so it is not accepted here): present a token for this cluster's audience, %s",
				a, orUnset(cluster))
		}
	}
	return nil
}

// CheckRelayAudiences is the relay's audience check of a caller's token: it
// refuses a token for any cluster's audience (ClusterAudiencePrefix), since
// that cluster's agent saw it; shared reports that the token was for the
// relay's audience relay as well (an issuer configured to put both in one
// token, which defeats the separation: the relay counts these).
func CheckRelayAudiences(auds []string, relay string) (shared bool, err error) {
	clusters := ClusterAudiences(auds)
	if len(clusters) == 0 {
		return false, nil
	}
	shared = relay != "" && slices.Contains(auds, relay)
	if shared {
		return true, fmt.Errorf("this token is for the relay's audience %s and also for %s, which that cluster's agent sees: "+
			"ask your identity provider for one token per audience (docs/identity.md, \"Two tokens\")", relay, strings.Join(clusters, ", "))
	}
	return false, fmt.Errorf("this token is for %s, a cluster's audience: the agent sees tokens for it, so the relay does not accept them; "+
		"present a token for the relay's audience, %s, on the relay hop (docs/identity.md, \"Two tokens\")", strings.Join(clusters, ", "), orUnset2(relay))
}

func orUnset2(s string) string {
	if s == "" {
		return DefaultRelayAudience
	}
	return s
}

func orUnset(s string) string {
	if s == "" {
		return "tether:cluster:NAME"
	}
	return s
}

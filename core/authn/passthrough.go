package authn

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/tether-k8s/tether/core/identity"
)

// ServiceAccountPassthrough returns an authenticator that recognises the
// cluster's own service-account tokens (by their iss claim, one of issuers)
// and passes them through: the agent forwards such a token as it is, and the
// API server, which alone can verify it, decides who it is. Every other token
// goes to next.
//
// Reading iss unverified is safe here because the only consequence is that
// the token is sent to the API server unchanged and unimpersonated: a forged
// one is refused there, and a valid one grants exactly what it already
// grants.
func ServiceAccountPassthrough(issuers []string, maxTokenBytes int, next identity.Authenticator) identity.Authenticator {
	if maxTokenBytes <= 0 {
		maxTokenBytes = DefaultMaxTokenBytes
	}
	return &passthrough{issuers: slices.Clone(issuers), shape: &Authenticator{cfg: Config{MaxTokenBytes: maxTokenBytes}}, next: next}
}

type passthrough struct {
	issuers []string
	shape   *Authenticator // for precheck only
	next    identity.Authenticator
}

func (p *passthrough) AuthenticateToken(ctx context.Context, token string) (identity.Result, error) {
	claims, err := p.shape.precheck(token)
	if err != nil {
		return identity.Result{}, err
	}
	if slices.Contains(p.issuers, claims.Issuer) {
		sub := claims.Subject
		if !strings.HasPrefix(sub, "system:serviceaccount:") {
			return identity.Result{}, fmt.Errorf("authn: a token of the cluster's service-account issuer must name a service account, not %q", truncate(sub, 100))
		}
		return identity.Result{Passthrough: true, Identity: identity.Identity{User: sub}}, nil
	}
	return p.next.AuthenticateToken(ctx, token)
}

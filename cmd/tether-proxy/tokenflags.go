package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/tether-k8s/tether/core/login"
	"github.com/tether-k8s/tether/core/relayapi"
	"github.com/tether-k8s/tether/core/tokensource"
)

// tokenFlags say where the caller's token comes from.
type tokenFlags struct {
	File    string
	Command string
	// From is "", "github-actions" or "env:NAME".
	From     string
	Audience string
	// ClusterFile holds the token sent to the agent instead of the caller's
	// token (which then opens the tunnel at the relay only): a token for
	// the cluster's audience, or a Kubernetes service-account token of the
	// cluster.
	ClusterFile string
	// ClusterFrom is "", "github-actions", "env:NAME" or "shared": as From,
	// for the agent's token; "shared" sends the caller's token to the agent
	// too (with the shared-token warning), where it would otherwise be
	// asked for per hop.
	ClusterFrom string
	// ClusterAudience is the audience --cluster-token-from github-actions
	// asks for; empty means tether:cluster:CLUSTER.
	ClusterAudience string
}

// Add registers the flags on fs.
func (t *tokenFlags) Add(fs *pflag.FlagSet) {
	fs.StringVar(&t.File, "token-file", "", "file holding the caller's token, re-read when it changes (default: $TETHER_TOKEN, else the login tether-proxy login cached)")
	fs.StringVar(&t.Command, "token-command", "", "command that prints the caller's token, run when the token is needed (cached 1 minute)")
	fs.StringVar(&t.From, "token-from", "", "github-actions: the job's OIDC token (needs permissions id-token: write; the default inside such a job when no other token is given); env:NAME: the variable NAME (e.g. a GitLab CI id_tokens entry)")
	fs.StringVar(&t.Audience, "token-audience", relayapi.DefaultRelayAudience, "with --token-from github-actions: the audience to request for the relay, as the relay's authentication configuration expects (the agent's token is requested for tether:cluster:CLUSTER unless --cluster-token-from says otherwise)")
	fs.StringVar(&t.ClusterFile, "cluster-token-file", "", "file holding the token for the cluster's agent (re-read when it changes): one for the cluster's audience, tether:cluster:NAME, while your token (for the relay's audience) opens the tunnel at the relay only; or a service-account token of the cluster, which the agent passes to the API server as it is")
	fs.StringVar(&t.ClusterFrom, "cluster-token-from", "", "as --token-from, for the token for the cluster's agent: github-actions (the job's OIDC token for --cluster-token-audience; the default with --token-from github-actions), env:NAME (a GitLab CI id_tokens entry for the cluster's audience), or shared (send the relay's token to the agent too, for an agent whose configuration accepts only a shared audience; warns)")
	fs.StringVar(&t.ClusterAudience, "cluster-token-audience", "", "with --cluster-token-from github-actions: the audience to request (default: tether:cluster:CLUSTER)")
}

// ClusterSource returns the source of the token for cluster's agent
// (--cluster-token-file or --cluster-token-from), or nil when neither is
// given, or --cluster-token-from is shared. Call it after source, which
// settles From: a GitHub Actions job that asks for the relay's token asks
// for the cluster's too, since it can have one per audience.
func (t *tokenFlags) ClusterSource(cluster string) (tokensource.Source, error) {
	switch {
	case t.ClusterFile != "" && t.ClusterFrom != "":
		return nil, errors.New("--cluster-token-file and --cluster-token-from exclude each other")
	case t.ClusterFile != "":
		return tokensource.File("--cluster-token-file", t.ClusterFile), nil
	case t.ClusterFrom == "shared":
		return nil, nil
	case t.ClusterFrom == "github-actions", t.ClusterFrom == "" && t.From == "github-actions":
		aud := t.ClusterAudience
		if aud == "" {
			aud = relayapi.ClusterAudience(cluster)
		}
		return tokensource.GitHubActions(aud, nil), nil
	case strings.HasPrefix(t.ClusterFrom, "env:"):
		return tokensource.Env("--cluster-token-from "+t.ClusterFrom, strings.TrimPrefix(t.ClusterFrom, "env:")), nil
	case t.ClusterFrom != "":
		return nil, fmt.Errorf("--cluster-token-from %q: want github-actions, env:NAME or shared", t.ClusterFrom)
	}
	return nil, nil
}

// SharedTokenWarning is what tether-proxy prints, once, when it presents
// one token to both the relay and the agent.
const SharedTokenWarning = "tether-proxy: WARNING: the same token goes to the relay and to the cluster's agent, so each of them could replay it at the other " +
	"(and the agent at every other cluster you may reach): "

// hopSources returns the token sources of the relay hop and of the agent
// hop for cluster. A login gets a token per hop by exchange at its issuer
// (the audiences the relay publishes at GET /v1/login); flags give the
// agent's token with --cluster-token-file or --cluster-token-from. When
// only one token is to be had, both hops get it, and warn is told why,
// once.
func (t *tokenFlags) hopSources(ctx context.Context, relayURL, relayCA, cluster string, warn func(string)) (relay, agent tokensource.Source, err error) {
	lc, relay, err := t.source()
	if err != nil {
		return nil, nil, err
	}
	agent, err = t.ClusterSource(cluster)
	if err != nil {
		return nil, nil, err
	}
	if agent != nil {
		return relay, agent, nil
	}
	if t.ClusterFrom == "shared" {
		warn(SharedTokenWarning + "--cluster-token-from shared says so; drop it once the agent's authentication configuration accepts " + relayapi.ClusterAudience(cluster))
		return relay, relay, nil
	}
	if lc == nil {
		warn(SharedTokenWarning + "give the agent a token for its cluster's audience, " + relayapi.ClusterAudience(cluster) +
			", with --cluster-token-file or --cluster-token-from (docs/identity.md, \"Two tokens\")")
		return relay, relay, nil
	}
	pub, perr := relayLoginSettings(ctx, relayURL, relayCA)
	if perr == nil && pub.Audience == "" {
		perr = errors.New("the relay publishes no audiences (it predates audiences per hop)")
	}
	if perr != nil {
		warn(SharedTokenWarning + "the login's ID token is used for both: " + perr.Error())
		return relay, relay, nil
	}
	// Try the exchange now, so a provider that cannot is found at start.
	if _, err := lc.TokenFor(ctx, pub.Audience); err != nil {
		if !errors.Is(err, login.ErrExchangeUnsupported) {
			return nil, nil, fmt.Errorf("a token for the relay's audience %s: %w", pub.Audience, err)
		}
		warn(SharedTokenWarning + "the login's ID token is used for both, because " + err.Error() +
			"; ask the provider's administrator to allow the token exchange grant for the relay's and the clusters' audiences (docs/identity.md)")
		return relay, relay, nil
	}
	return lc.SourceFor(pub.Audience, time.Minute), lc.SourceFor(pub.ClusterAudience(cluster), time.Minute), nil
}

// Source returns a function giving the current token: from the file (read
// on every call, so a rotated token is picked up), the command, the
// TETHER_TOKEN environment variable, or, when none is given, the login
// `tether-proxy login` cached (core/login), renewed as it nears expiry.
func (t *tokenFlags) Source() (tokensource.Source, error) {
	_, s, err := t.source()
	return s, err
}

// source is Source, with the login client when the token is the login's.
func (t *tokenFlags) source() (*login.Client, tokensource.Source, error) {
	given := 0
	for _, v := range []string{t.File, t.Command, t.From} {
		if v != "" {
			given++
		}
	}
	if given == 0 && strings.TrimSpace(os.Getenv("TETHER_TOKEN")) == "" && tokensource.InGitHubActions() {
		t.From = "github-actions" // a CI job needs no stored secret
	}
	switch {
	case given > 1:
		return nil, nil, errors.New("--token-file, --token-command and --token-from exclude each other")
	case t.From == "github-actions":
		return nil, tokensource.GitHubActions(t.Audience, nil), nil
	case strings.HasPrefix(t.From, "env:"):
		name := strings.TrimPrefix(t.From, "env:")
		return nil, tokensource.Env("--token-from "+t.From, name), nil
	case t.From != "":
		return nil, nil, fmt.Errorf("--token-from %q: want github-actions or env:NAME", t.From)
	case t.File != "":
		return nil, tokensource.File("--token-file", t.File), nil
	case t.Command != "":
		return nil, tokensource.Command("--token-command", t.Command), nil
	}
	if tok := strings.TrimSpace(os.Getenv("TETHER_TOKEN")); tok != "" {
		return nil, tokensource.Static(tok), nil
	}
	// No token given: the login `tether-proxy login` cached, refreshed as
	// needed on every call.
	lc, err := login.FromCache("")
	if errors.Is(err, login.ErrNotLoggedIn) {
		return nil, nil, errors.New("no token: run `tether-proxy login --relay URL` first, or pass --token-file, --token-command or --token-from, or set TETHER_TOKEN")
	}
	if err != nil {
		return nil, nil, err
	}
	return lc, lc.Source(time.Minute), nil
}

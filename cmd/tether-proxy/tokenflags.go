package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/tether-k8s/tether/core/login"
	"github.com/tether-k8s/tether/core/tokensource"
)

// tokenFlags say where the caller's token comes from.
type tokenFlags struct {
	File    string
	Command string
	// From is "", "github-actions" or "env:NAME".
	From     string
	Audience string
	// ClusterFile holds a Kubernetes service-account token of the cluster,
	// sent to the agent instead of the caller's token (which still opens
	// the tunnel at the relay).
	ClusterFile string
}

// Add registers the flags on fs.
func (t *tokenFlags) Add(fs *pflag.FlagSet) {
	fs.StringVar(&t.File, "token-file", "", "file holding the caller's token, re-read when it changes (default: $TETHER_TOKEN, else the login tether-proxy login cached)")
	fs.StringVar(&t.Command, "token-command", "", "command that prints the caller's token, run when the token is needed (cached 1 minute)")
	fs.StringVar(&t.From, "token-from", "", "github-actions: the job's OIDC token (needs permissions id-token: write; the default inside such a job when no other token is given); env:NAME: the variable NAME (e.g. a GitLab CI id_tokens entry)")
	fs.StringVar(&t.Audience, "token-audience", "tether", "with --token-from github-actions: the audience to request, as the relay's and agent's authentication configuration expect")
	fs.StringVar(&t.ClusterFile, "cluster-token-file", "", "service-account-token mode: file holding a service-account token of the cluster (re-read when it changes); the agent passes it to the API server as it is, and your own token still opens the tunnel at the relay")
}

// ClusterSource returns the --cluster-token-file token's source, or nil
// when the flag is not given.
func (t *tokenFlags) ClusterSource() tokensource.Source {
	if t.ClusterFile == "" {
		return nil
	}
	return tokensource.File("--cluster-token-file", t.ClusterFile)
}

// Source returns a function giving the current token: from the file (read
// on every call, so a rotated token is picked up), the command, the
// TETHER_TOKEN environment variable, or, when none is given, the login
// `tether-proxy login` cached (core/login), renewed as it nears expiry.
func (t *tokenFlags) Source() (tokensource.Source, error) {
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
		return nil, errors.New("--token-file, --token-command and --token-from exclude each other")
	case t.From == "github-actions":
		return tokensource.GitHubActions(t.Audience, nil), nil
	case strings.HasPrefix(t.From, "env:"):
		name := strings.TrimPrefix(t.From, "env:")
		return tokensource.Env("--token-from "+t.From, name), nil
	case t.From != "":
		return nil, fmt.Errorf("--token-from %q: want github-actions or env:NAME", t.From)
	case t.File != "":
		return tokensource.File("--token-file", t.File), nil
	case t.Command != "":
		return tokensource.Command("--token-command", t.Command), nil
	}
	if tok := strings.TrimSpace(os.Getenv("TETHER_TOKEN")); tok != "" {
		return tokensource.Static(tok), nil
	}
	// No token given: the login `tether-proxy login` cached, refreshed as
	// needed on every call.
	lc, err := login.FromCache("")
	if errors.Is(err, login.ErrNotLoggedIn) {
		return nil, errors.New("no token: run `tether-proxy login --relay URL` first, or pass --token-file, --token-command or --token-from, or set TETHER_TOKEN")
	}
	if err != nil {
		return nil, err
	}
	return lc.Source(time.Minute), nil
}

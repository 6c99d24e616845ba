package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tether-k8s/tether/cmd/internal/cli"
	"github.com/tether-k8s/tether/core/relayapi"
)

// relayQuery are the flags of the commands that ask the relay about the
// caller (whoami, clusters): the relay, its CA, the token, the output.
type relayQuery struct {
	relayURL, relayCA string
	output            string
	token             tokenFlags
}

func (q *relayQuery) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&q.relayURL, "relay", "", "the relay's API, https://host:port (required)")
	fs.StringVar(&q.relayCA, "relay-ca", "", "PEM file of the CA that signed the relay's certificate (default: the system's roots)")
	fs.StringVarP(&q.output, "output", "o", "text", "text or json")
	all := pflag.NewFlagSet("token", pflag.ContinueOnError)
	q.token.Add(all)
	all.VisitAll(func(f *pflag.Flag) {
		if f.Name != "cluster-token-file" { // the relay sees only the caller's token
			fs.AddFlag(f)
		}
	})
}

// ask validates the flags and asks the relay who the caller's token is.
func (q *relayQuery) ask(ctx context.Context) (*relayapi.Whoami, error) {
	if err := recallRelay(&q.relayURL, &q.relayCA); err != nil {
		return nil, err
	}
	if q.relayURL == "" {
		return nil, errors.New("--relay is required: the relay's API, https://host:port (tether-proxy login --relay URL remembers it for later commands)")
	}
	if u, err := url.Parse(q.relayURL); err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("--relay %q: want https://host[:port]", q.relayURL)
	}
	if q.output != "text" && q.output != "json" {
		return nil, fmt.Errorf("--output %q: want text or json", q.output)
	}
	client, err := relayHTTPClient(q.relayCA)
	if err != nil {
		return nil, err
	}
	defer client.CloseIdleConnections()
	source, err := q.token.Source()
	if err != nil {
		return nil, err
	}
	tok, err := source()
	if err != nil {
		return nil, fmt.Errorf("cannot read your token: %w", err)
	}
	w, err := relayapi.GetWhoami(ctx, client, q.relayURL, tok)
	if err != nil && strings.Contains(err.Error(), "x509: certificate signed by unknown authority") {
		return nil, fmt.Errorf("%w (pass the relay's CA with --relay-ca FILE: tether-relay ca prints it)", err)
	}
	return w, err
}

// relayHTTPClient is the client of the commands that ask the relay's API
// one question (login settings, whoami): TLS pinned to the --relay-ca file
// when given (else the system's roots), the environment's HTTPS proxy, 30 s.
func relayHTTPClient(caFile string) (*http.Client, error) {
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pool, err := cli.ReadCAFile("--relay-ca", caFile)
		if err != nil {
			return nil, err
		}
		tlsCfg.RootCAs = pool
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg, Proxy: http.ProxyFromEnvironment}}, nil
}

// newWhoamiCommand is `tether-proxy whoami`.
func newWhoamiCommand() *cobra.Command {
	q := &relayQuery{}
	c := &cobra.Command{
		Use:   "whoami --relay URL [--relay-ca FILE] [token flags]",
		Short: "Show who the relay takes your token for, when it expires, and how many clusters you may reach",
		Example: `  tether-proxy whoami --relay https://relay.example.com:8443 --relay-ca relay-ca.pem
  tether-proxy whoami --relay https://relay.example.com:8443 --relay-ca relay-ca.pem -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w, err := q.ask(cmd.Context())
			if err != nil {
				return err
			}
			if q.output == "json" {
				return writeJSON(cmd.OutOrStdout(), w)
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "user:      %s\n", w.User)
			fmt.Fprintf(out, "groups:    %s\n", strings.Join(w.Groups, ", "))
			if len(w.Audiences) > 0 {
				fmt.Fprintf(out, "audiences: %s\n", strings.Join(w.Audiences, ", "))
			}
			if !w.Expires.IsZero() {
				fmt.Fprintf(out, "expires:   %s (in %s)\n", w.Expires.UTC().Format(time.RFC3339), time.Until(w.Expires).Round(time.Second))
			}
			fmt.Fprintf(out, "relay:     %s\n", q.relayURL)
			fmt.Fprintf(out, "clusters:  %d you may reach (tether-proxy clusters lists them)\n", len(w.Clusters))
			return nil
		},
	}
	q.addFlags(c.Flags())
	return c
}

// newClustersCommand is `tether-proxy clusters`.
func newClustersCommand() *cobra.Command {
	q := &relayQuery{}
	c := &cobra.Command{
		Use:   "clusters --relay URL [--relay-ca FILE] [token flags]",
		Short: "List the clusters you may reach through the relay, and whether their agents are connected",
		Long: `tether-proxy clusters lists the clusters whose access policy admits you (the same check a tunnel
makes), with the agent sessions the relay holds for each and the agents' versions. Clusters you may not
reach are not listed.`,
		Example: `  tether-proxy clusters --relay https://relay.example.com:8443 --relay-ca relay-ca.pem
  tether-proxy clusters --relay https://relay.example.com:8443 --relay-ca relay-ca.pem -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w, err := q.ask(cmd.Context())
			if err != nil {
				return err
			}
			if q.output == "json" {
				return writeJSON(cmd.OutOrStdout(), w.Clusters)
			}
			if len(w.Clusters) == 0 {
				_, err := fmt.Fprintf(cmd.OutOrStdout(), "no cluster admits %s: an administrator grants access with tether-relay cluster grant CLUSTER --user %s\n", w.User, w.User)
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "CLUSTER\tCONNECTED\tSESSIONS\tAGENT")
			for _, c := range w.Clusters {
				connected := "no"
				if c.Sessions > 0 {
					connected = "yes"
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", c.Cluster, connected, c.Sessions, strings.Join(c.Agents, ", "))
			}
			return tw.Flush()
		},
	}
	q.addFlags(c.Flags())
	return c
}

func writeJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// completeClusters completes --cluster with the clusters the relay says
// the caller may reach (the relay and token flags given so far, or the
// remembered relay and the cached login): shell completion of cluster
// names, for `tether-proxy completion bash|zsh|fish`.
func completeClusters(relayURL, relayCA *string, token *tokenFlags) cobra.CompletionFunc {
	return func(cmd *cobra.Command, _ []string, prefix string) ([]cobra.Completion, cobra.ShellCompDirective) {
		q := relayQuery{relayURL: *relayURL, relayCA: *relayCA, output: "text", token: *token}
		ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
		defer cancel()
		w, err := q.ask(ctx)
		if err != nil {
			cobra.CompDebugln("tether-proxy: complete --cluster: "+err.Error(), true)
			return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
		}
		var out []cobra.Completion
		for _, c := range w.Clusters {
			if strings.HasPrefix(c.Cluster, prefix) {
				state := "not connected"
				if c.Sessions > 0 {
					state = "connected"
				}
				out = append(out, cobra.CompletionWithDesc(c.Cluster, state))
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

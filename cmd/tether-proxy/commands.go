package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/tether-k8s/tether/cmd/internal/cli"
	"github.com/tether-k8s/tether/cmd/tether-proxy/internal/kubeconfig"
	"github.com/tether-k8s/tether/core/proxy"
	"github.com/tether-k8s/tether/core/tokensource"
)

type options struct {
	relayURL, relayCA string
	cluster           string
	port              int
	file              string
	context           string
	overwrite         bool
	idleTunnels       int
	idleTimeout       time.Duration
	token             tokenFlags
	logs              cli.LogFlags
}

func newRootCommand() *cobra.Command {
	o := &options{}
	c := &cobra.Command{
		Use:   "tether-proxy --relay URL --cluster NAME",
		Short: "Reach a firewalled cluster with kubectl, through the tether relay",
		Long: `tether-proxy listens on 127.0.0.1, writes a kubeconfig context that points at it, and forwards
each kubectl request through the relay to the cluster's agent, adding your token. It runs until
Ctrl-C, then removes the entries it wrote (and puts back a context it replaced with --overwrite).

The context's credential is a client certificate made for this run: only that kubeconfig can use
the proxy, not another program or a web page on your machine.

It never replaces a context it did not write (yours, one tether-proxy kubeconfig wrote, one of
another tether-proxy still running) without --overwrite, and never repoints a cluster or user
entry of yours: the context gets entries of its own.

  tether-proxy login --relay https://relay.example.com:8443 --relay-ca relay-ca.pem     # once: your OpenID login, cached and renewed
  tether-proxy --cluster prod &     # login remembered the relay; --relay URL picks another
  kubectl --context tether-prod get pods

With no token flag it uses that login; --token-file, --token-command, --token-from or
$TETHER_TOKEN give a token instead. --relay-ca is the relay's CA (tether-relay ca prints it):
the relay signs its own certificate unless given one from a public CA.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.run(cmd.Context()) },
	}
	fs := c.Flags()
	fs.StringVar(&o.relayURL, "relay", "", "the relay's API, https://host:port (required)")
	fs.StringVar(&o.relayCA, "relay-ca", "", "PEM file of the CA that signed the relay's certificate (default: the system's roots)")
	fs.StringVar(&o.cluster, "cluster", "", "the cluster to reach (required)")
	fs.IntVar(&o.port, "port", 47011, "local port, on 127.0.0.1")
	o.addKubeconfigFlags(fs)
	o.addTunnelFlags(fs)
	o.token.Add(fs)
	o.logs.Add(fs)
	_ = c.RegisterFlagCompletionFunc("cluster", completeClusters(&o.relayURL, &o.relayCA, &o.token))
	c.AddCommand(newExecCommand(), newLoginCommand(), newLogoutCommand(), newTokenCommand(), newKubeconfigCommand(), newWhoamiCommand(), newClustersCommand())
	return c
}

// newExecCommand is `tether-proxy exec`: run one command (a CI step) with a
// kubeconfig that reaches the cluster through a proxy of its own, then
// clean up.
func newExecCommand() *cobra.Command {
	o := &options{}
	c := &cobra.Command{
		Use:   "exec --relay URL --cluster NAME -- COMMAND [ARGS...]",
		Short: "Run a command (e.g. kubectl apply) with a temporary kubeconfig that reaches the cluster, then clean up",
		Long: `tether-proxy exec starts a proxy on a free loopback port, writes a kubeconfig for it to a private
temporary directory, runs COMMAND with KUBECONFIG pointing at it, and removes everything when the
command ends. Its exit code is the command's.

In a GitHub Actions job with "permissions: id-token: write", the job's own OIDC token is used
(no secret stored in the CI system); in GitLab CI, declare an id_tokens entry and pass
--token-from env:NAME (or name it TETHER_TOKEN).

  tether-proxy exec --relay https://relay.example.com:8443 --relay-ca relay-ca.pem --cluster prod -- kubectl apply -f app.yaml`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return o.exec(cmd.Context(), args) },
	}
	fs := c.Flags()
	fs.StringVar(&o.relayURL, "relay", "", "the relay's API, https://host:port (required)")
	fs.StringVar(&o.relayCA, "relay-ca", "", "PEM file of the CA that signed the relay's certificate (default: the system's roots)")
	fs.StringVar(&o.cluster, "cluster", "", "the cluster to reach (required)")
	o.addTunnelFlags(fs)
	o.token.Add(fs)
	o.logs.Add(fs)
	_ = c.RegisterFlagCompletionFunc("cluster", completeClusters(&o.relayURL, &o.relayCA, &o.token))
	return c
}

// addKubeconfigFlags adds the flags of the kubeconfig the proxy writes,
// spelt as kubectl and tether-proxy kubeconfig spell them, and their old
// spellings, deprecated.
func (o *options) addKubeconfigFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.file, "kubeconfig", "", "kubeconfig file to merge the context into, or - to print it (default: as kubectl, the files of $KUBECONFIG, else ~/.kube/config)")
	fs.StringVar(&o.context, "context", "", "name of the context to write (default: tether-CLUSTER)")
	fs.BoolVar(&o.overwrite, "overwrite", false, "replace the context even if tether-proxy did not write it, for this run: it is put back when tether-proxy exits (your cluster and user entries are never repointed)")
	fs.StringVarP(&o.file, "kubeconfig-file", "f", "", "old spelling of --kubeconfig")
	fs.StringVar(&o.context, "kube-context", "", "old spelling of --context")
	_ = fs.MarkDeprecated("kubeconfig-file", "use --kubeconfig")
	_ = fs.MarkDeprecated("kube-context", "use --context")
}

// addTunnelFlags adds the flags of the proxy's pool of tunnels.
func (o *options) addTunnelFlags(fs *pflag.FlagSet) {
	fs.IntVar(&o.idleTunnels, "max-idle-tunnels", proxy.DefaultMaxIdleTunnels,
		"idle tunnels kept for the next requests (each skips a tunnel's setup; each holds a connection to the relay and a stream to the agent)")
	fs.DurationVar(&o.idleTimeout, "idle-tunnel-timeout", proxy.DefaultIdleTunnelTimeout, "close a tunnel idle for this long")
}

// proxyConfig is the proxy's configuration from the flags.
func (o *options) proxyConfig(listen string, relayCA *x509.CertPool, token, clusterToken func() (string, error), log *slog.Logger) proxy.Config {
	return proxy.Config{RelayURL: o.relayURL, RelayCA: relayCA, Cluster: o.cluster, Token: token, Listen: listen,
		ClusterToken: clusterToken, MaxIdleTunnels: o.idleTunnels, IdleTunnelTimeout: o.idleTimeout, Logger: log}
}

// hopTokens returns the relay hop's and the agent hop's token sources,
// printing the shared-token warning once when they are one.
func (o *options) hopTokens(ctx context.Context) (relay, agent tokensource.Source, err error) {
	return o.token.hopSources(ctx, o.relayURL, o.relayCA, o.cluster, func(msg string) { fmt.Fprintln(os.Stderr, msg) })
}

// exitError carries a command's exit code out of RunE.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("the command exited with %d", e.code) }

// ExitCode implements cli.ExitCoder.
func (e exitError) ExitCode() int { return e.code }

func (o *options) exec(parent context.Context, args []string) error {
	log, err := o.logs.Logger(os.Stderr)
	if err != nil {
		return err
	}
	if err := recallRelay(&o.relayURL, &o.relayCA); err != nil {
		return err
	}
	if o.relayURL == "" || o.cluster == "" {
		return errors.New(relayRequired)
	}
	var relayCA *x509.CertPool
	if o.relayCA != "" {
		if relayCA, err = cli.ReadCAFile("--relay-ca", o.relayCA); err != nil {
			return err
		}
	}
	ctx, cancel := cli.SignalContext(parent)
	defer cancel()
	token, clusterToken, err := o.hopTokens(ctx)
	if err != nil {
		return err
	}
	p, err := proxy.New(ctx, o.proxyConfig("127.0.0.1:0", relayCA, token, clusterToken, log))
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "tether-exec-")
	if err != nil {
		return fmt.Errorf("temporary directory: %w", err)
	}
	defer os.RemoveAll(dir)
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*p.Kubeconfig("tether-" + o.cluster), kubeconfig); err != nil {
		return fmt.Errorf("write the kubeconfig: %w", err)
	}
	if err := os.Chmod(kubeconfig, 0o600); err != nil {
		return err
	}
	pctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- p.Serve(pctx) }()
	defer func() { stop(); <-served }()

	cmd := osexec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	err = cmd.Run()
	var ee *osexec.ExitError
	switch {
	case errors.As(err, &ee):
		return exitError{code: ee.ExitCode()}
	case err != nil:
		return fmt.Errorf("run %s: %w", args[0], err)
	}
	return nil
}

func (o *options) run(parent context.Context) error {
	log, err := o.logs.Logger(os.Stderr)
	if err != nil {
		return err
	}
	if err := recallRelay(&o.relayURL, &o.relayCA); err != nil {
		return err
	}
	if o.relayURL == "" || o.cluster == "" {
		return errors.New(relayRequired)
	}
	if o.port < 0 || o.port > 65535 {
		return fmt.Errorf("--port %d: want 1 to 65535 (0 picks a free one)", o.port)
	}
	var relayCA *x509.CertPool
	if o.relayCA != "" {
		if relayCA, err = cli.ReadCAFile("--relay-ca", o.relayCA); err != nil {
			return err
		}
	}
	if o.context == "" {
		o.context = "tether-" + o.cluster
	}
	ctx, cancel := cli.SignalContext(parent)
	defer cancel()
	token, clusterToken, err := o.hopTokens(ctx)
	if err != nil {
		return err
	}
	p, err := proxy.New(ctx, o.proxyConfig("127.0.0.1:"+strconv.Itoa(o.port), relayCA, token, clusterToken, log))
	if err != nil {
		return err
	}
	kc := p.Kubeconfig(o.context)
	remove, err := o.writeKubeconfig(kc)
	if err != nil {
		return err
	}
	defer remove()
	err = p.Serve(ctx)
	return err
}

// writeKubeconfig merges the context into the kubeconfig (or prints it)
// and returns a function that removes what it wrote again.
func (o *options) writeKubeconfig(kc *clientcmdapi.Config) (func(), error) {
	if o.file == "-" {
		b, err := clientcmd.Write(*kc)
		if err != nil {
			return nil, fmt.Errorf("encode kubeconfig: %w", err)
		}
		_, err = os.Stdout.Write(b)
		return func() {}, err
	}
	name := o.context
	w, err := kubeconfig.Write(kubeconfig.Config{
		Path: o.file, Context: name, Cluster: kc.Clusters[name], User: kc.AuthInfos[name],
		Mode: kubeconfig.ModeProxy, Relay: o.relayURL, ClusterName: o.cluster,
		Overwrite: o.overwrite, Current: kubeconfig.CurrentIfUnset, Secret: true,
	})
	if err != nil {
		return nil, err
	}
	for _, n := range w.Notes {
		fmt.Fprintf(os.Stderr, "tether-proxy: %s\n", n)
	}
	replaced := ""
	if w.Replaced != "" && w.Replaced != "own" {
		replaced = fmt.Sprintf(" (it replaces, until tether-proxy exits, the context that %s)", w.Replaced)
	}
	fmt.Fprintf(os.Stderr, "tether-proxy: context %s written to %s%s; use: kubectl --context %s ...\n", name, w.File, replaced, name)
	return func() {
		r, err := w.Remove()
		if err != nil {
			fmt.Fprintf(os.Stderr, "tether-proxy: remove context %s: %v\n", name, err)
			return
		}
		var done []string
		if r.Restored != "" {
			done = append(done, "put back "+r.Restored+" as it was")
		}
		if len(r.Removed) > 0 {
			done = append(done, "removed "+strings.Join(r.Removed, ", "))
		}
		if len(r.Kept) > 0 {
			done = append(done, "left "+strings.Join(r.Kept, ", "))
		}
		if len(done) > 0 {
			fmt.Fprintf(os.Stderr, "tether-proxy: %s in %s\n", strings.Join(done, "; "), r.File)
		}
	}, nil
}

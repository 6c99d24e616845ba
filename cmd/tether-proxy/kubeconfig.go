package main

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientauthv1 "k8s.io/client-go/pkg/apis/clientauthentication/v1"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/tether-k8s/tether/cmd/internal/cli"
	"github.com/tether-k8s/tether/cmd/tether-proxy/internal/kubeconfig"
	"github.com/tether-k8s/tether/core/clusterid"
	"github.com/tether-k8s/tether/core/relayapi"
)

// execAPIVersion is the exec credential API kubectl and tether-proxy token
// speak.
const execAPIVersion = "client.authentication.k8s.io/v1"

// endpointOptions are the flags of `tether-proxy token` and `tether-proxy
// kubeconfig`.
type endpointOptions struct {
	relayURL, relayCA string
	cluster           string
	file              string
	context           string
	use               bool
	overwrite         bool
	token             tokenFlags
	// tokenFlags holds only the token flags, to pass those given on to
	// `tether-proxy token` in the kubeconfig.
	tokenFlags *pflag.FlagSet
}

func (o *endpointOptions) addCommon(fs *pflag.FlagSet) {
	fs.StringVar(&o.relayURL, "relay", "", "the relay's API, https://host:port (required)")
	fs.StringVar(&o.cluster, "cluster", "", "the cluster to reach (required)")
	all := pflag.NewFlagSet("token", pflag.ContinueOnError)
	o.token.Add(all)
	o.tokenFlags = pflag.NewFlagSet("token", pflag.ContinueOnError)
	all.VisitAll(func(f *pflag.Flag) {
		// The relay's cluster endpoint carries one token, the caller's, which
		// the relay checks and the agent authenticates: a service-account
		// token (--cluster-token-file) needs tether-proxy running.
		if f.Name != "cluster-token-file" {
			o.tokenFlags.AddFlag(f)
		}
	})
	fs.AddFlagSet(o.tokenFlags)
}

func (o *endpointOptions) validate() error {
	if err := recallRelay(&o.relayURL, &o.relayCA); err != nil {
		return err
	}
	if o.relayURL == "" || o.cluster == "" {
		return errors.New(relayRequired)
	}
	u, err := url.Parse(o.relayURL)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("--relay %q: want https://host[:port]", o.relayURL)
	}
	if err := clusterid.Validate(o.cluster); err != nil {
		return fmt.Errorf("--cluster: %w", err)
	}
	return nil
}

// newTokenCommand is `tether-proxy token`: the exec credential plugin of
// the kubeconfigs `tether-proxy kubeconfig` writes.
func newTokenCommand() *cobra.Command {
	o := &endpointOptions{}
	c := &cobra.Command{
		Use:   "token --relay URL --cluster NAME [token flags]",
		Short: "Print your token as a kubectl exec credential (client.authentication.k8s.io/v1 ExecCredential)",
		Long: `tether-proxy token prints the caller's token as an ExecCredential, with its expiry (read from the
token's exp claim, without verifying it: the relay and the agent verify the token). kubectl runs it
for the user that "tether-proxy kubeconfig" writes; it contacts nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.printToken(cmd.OutOrStdout(), time.Now()) },
	}
	o.addCommon(c.Flags())
	return c
}

func (o *endpointOptions) printToken(w io.Writer, now time.Time) error {
	if err := o.validate(); err != nil {
		return err
	}
	source, err := o.token.Source()
	if err != nil {
		return fmt.Errorf("%w (fix the token flags of the tether user in your kubeconfig, or write it again with tether-proxy kubeconfig)", err)
	}
	tok, err := source()
	if err != nil {
		return fmt.Errorf("cannot read your token: %w", err)
	}
	exp, ok, err := tokenExpiry(tok)
	if err != nil {
		return fmt.Errorf("your token for cluster %s: %w", o.cluster, err)
	}
	status := &clientauthv1.ExecCredentialStatus{Token: tok}
	if ok {
		if !exp.After(now) {
			return fmt.Errorf("your token for cluster %s expired at %s: get a new one (log in again, or refresh the token file)", o.cluster, exp.UTC().Format(time.RFC3339))
		}
		status.ExpirationTimestamp = &metav1.Time{Time: exp}
	}
	cred := clientauthv1.ExecCredential{TypeMeta: metav1.TypeMeta{APIVersion: execAPIVersion, Kind: "ExecCredential"}, Status: status}
	b, err := json.Marshal(cred)
	if err != nil {
		return fmt.Errorf("encode the ExecCredential: %w", err)
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// maxTokenBytes bounds the token tokenExpiry decodes.
const maxTokenBytes = 64 << 10

// tokenExpiry reads the exp claim of a JWT's payload, without verifying
// anything: only to tell kubectl when to ask again. ok is false for a token
// that is not a JWT or has no exp (kubectl then keeps it for its run).
func tokenExpiry(tok string) (exp time.Time, ok bool, err error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 || len(tok) > maxTokenBytes {
		return time.Time{}, false, nil
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}, false, fmt.Errorf("the token looks like a JWT, but its payload is not base64url: %w", err)
	}
	var claims struct {
		Exp *json.Number `json:"exp"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		return time.Time{}, false, fmt.Errorf("the token looks like a JWT, but its payload is not JSON: %w", err)
	}
	if claims.Exp == nil {
		return time.Time{}, false, nil
	}
	f, err := claims.Exp.Float64()
	if err != nil || f <= 0 || f > 1<<40 {
		return time.Time{}, false, fmt.Errorf("the token's exp claim %q is not a time", claims.Exp.String())
	}
	return time.Unix(int64(f), 0), true, nil
}

// newKubeconfigCommand is `tether-proxy kubeconfig`: write a kubeconfig
// context that reaches the cluster through the relay's cluster endpoint,
// with no local process.
func newKubeconfigCommand() *cobra.Command {
	o := &endpointOptions{}
	c := &cobra.Command{
		Use:   "kubeconfig --relay URL --cluster NAME [--relay-ca FILE] [token flags]",
		Short: "Write a kubeconfig context that reaches the cluster through the relay, with no local process",
		Long: `tether-proxy kubeconfig merges a cluster, a user and a context into your kubeconfig: the server is the
relay's endpoint for the cluster (https://RELAY/v1/clusters/NAME/k8s), and the user is an exec
credential plugin, "tether-proxy token" with the same relay, cluster and token flags, which kubectl
runs when it needs your token. No tether-proxy keeps running.

Running it again replaces what it wrote. It never replaces a context it did not write without
--overwrite, and never repoints a cluster or user entry of yours (another context using it would
send its credential to the relay): the context gets entries of its own.

In this mode the relay terminates your TLS connection and sees your requests in clear (it forwards
them over TLS to the cluster's agent, which checks your token itself); plain tether-proxy keeps TLS
end to end from your machine to the agent. See docs/security.md.

  tether-proxy kubeconfig --relay https://relay.example.com:8443 --relay-ca relay-ca.pem --cluster prod --token-file ~/.tether/token
  kubectl --context tether-prod get pods`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.writeKubeconfig(cmd.OutOrStdout()) },
	}
	fs := c.Flags()
	o.addCommon(fs)
	_ = c.RegisterFlagCompletionFunc("cluster", completeClusters(&o.relayURL, &o.relayCA, &o.token))
	fs.StringVar(&o.relayCA, "relay-ca", "", "PEM file of the CA that signed the relay's certificate, embedded in the kubeconfig (default: the system's roots)")
	fs.StringVar(&o.file, "kubeconfig", "", "kubeconfig file to merge into (default: as kubectl, the files of $KUBECONFIG, else ~/.kube/config)")
	fs.StringVar(&o.context, "context", "", "name of the context to write, and of its cluster and user when those names are free or tether's own (default: tether-CLUSTER)")
	fs.BoolVar(&o.overwrite, "overwrite", false, "replace the context even if tether did not write it (your cluster and user entries are never repointed)")
	fs.BoolVar(&o.use, "use", false, "also make the context the current one")
	return c
}

// tokenArgs returns the token flags given on the command line, for
// `tether-proxy token`, with a token file's path made absolute (kubectl
// runs the plugin from wherever it is run).
func (o *endpointOptions) tokenArgs() ([]string, error) {
	var args []string
	var err error
	// VisitAll and Changed: the flags were parsed by the command's set,
	// which shares them, so this set's own record of what was set is empty.
	o.tokenFlags.VisitAll(func(f *pflag.Flag) {
		if !f.Changed {
			return
		}
		v := f.Value.String()
		if f.Name == "token-file" {
			abs, aerr := filepath.Abs(v)
			if aerr != nil {
				err = fmt.Errorf("--token-file %s: %w", v, aerr)
			}
			v = abs
		}
		args = append(args, "--"+f.Name+"="+v)
	})
	return args, err
}

func (o *endpointOptions) writeKubeconfig(out io.Writer) error {
	if err := o.validate(); err != nil {
		return err
	}
	// Only to check that the token flags make sense: kubectl asks for the
	// token itself, through the plugin.
	if _, err := o.token.Source(); err != nil {
		return err
	}
	var caData []byte
	if o.relayCA != "" {
		if _, err := cli.ReadCAFile("--relay-ca", o.relayCA); err != nil {
			return err
		}
		b, err := os.ReadFile(o.relayCA)
		if err != nil {
			return fmt.Errorf("--relay-ca: %w", err)
		}
		caData = b
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this tether-proxy's path, for the kubeconfig's exec plugin: %w", err)
	}
	if self, err = filepath.Abs(self); err != nil {
		return fmt.Errorf("find this tether-proxy's path: %w", err)
	}
	tokenArgs, err := o.tokenArgs()
	if err != nil {
		return err
	}
	if o.context == "" {
		o.context = "tether-" + o.cluster
	}
	server := strings.TrimSuffix(o.relayURL, "/") + fmt.Sprintf(relayapi.ClusterEndpointPath, o.cluster)
	current := kubeconfig.CurrentNever
	if o.use {
		current = kubeconfig.CurrentAlways
	}
	w, err := kubeconfig.Write(kubeconfig.Config{
		Path:    o.file,
		Context: o.context,
		Cluster: &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caData},
		User: &clientcmdapi.AuthInfo{Exec: &clientcmdapi.ExecConfig{
			APIVersion:      execAPIVersion,
			Command:         self,
			Args:            append([]string{"token", "--relay", o.relayURL, "--cluster", o.cluster}, tokenArgs...),
			InteractiveMode: clientcmdapi.IfAvailableExecInteractiveMode,
			InstallHint:     "tether-proxy gives this user its token: install it (docs/install.md) and run tether-proxy kubeconfig again",
		}},
		Mode: kubeconfig.ModeEndpoint, Relay: o.relayURL, ClusterName: o.cluster,
		Overwrite: o.overwrite, Current: current,
	})
	if err != nil {
		return err
	}
	name := o.context
	for _, n := range w.Notes {
		fmt.Fprintf(out, "tether-proxy: %s\n", n)
	}
	verb := "added"
	if w.Replaced != "" {
		verb = "replaced"
	}
	if w.Replaced != "" && w.Replaced != "own" {
		fmt.Fprintf(out, "tether-proxy: --overwrite: the context %s replaced %s\n", name, w.Replaced)
	}
	fmt.Fprintf(out, "tether-proxy: %s context %s in %s: server %s, user %s (kubectl runs %s token for your token)", verb, name, w.File, server, w.User, self)
	if len(tokenArgs) == 0 {
		fmt.Fprint(out, "; the token comes from $TETHER_TOKEN in kubectl's environment")
	}
	if o.use {
		fmt.Fprintf(out, "; it is now the current context\n")
	} else {
		fmt.Fprintf(out, "\nuse: kubectl --context %s get pods (or add --use to make it the current context)\n", name)
	}
	return nil
}

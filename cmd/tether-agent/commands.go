package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/tether-k8s/tether/cmd/internal/cli"
	"github.com/tether-k8s/tether/core/agent"
	"github.com/tether-k8s/tether/core/authn"
	"github.com/tether-k8s/tether/core/impersonate"
	"github.com/tether-k8s/tether/core/relayapi"
	"github.com/tether-k8s/tether/core/tunnel"
)

type options struct {
	cluster, name            string
	relayURL, relayAgentAddr string
	relayCA                  string
	credentialDir            string
	credentialSecret         string
	joinTokenFile            string
	kubeconfig               string
	authnConfig              string
	relayAudience            string
	clusterAudience          string
	saIssuers                []string
	allowSystemNames         bool
	sessions                 int
	renewBefore              time.Duration
	transport                string
	healthListen             string
	streamWindow             cli.Bytes
	logs                     cli.LogFlags
}

func newRootCommand() *cobra.Command {
	o := &options{}
	c := &cobra.Command{
		Use:   "tether-agent",
		Short: "The in-cluster agent: dials out to the relay and forwards callers to the API server with impersonation",
		Long: `tether-agent runs inside a cluster that accepts no inbound connection. It dials OUT to the relay,
keeps sessions open, and serves each caller's request: it verifies the caller's token itself
(--authentication-config, the same format as kube-apiserver's), then forwards to the API server
with its own service account, which may only impersonate, naming the caller.

The first start trades a join token (tether-relay cluster create) for a credential kept in
--credential-dir; later starts reuse it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.run(cmd.Context()) },
	}
	fs := c.Flags()
	fs.StringVar(&o.cluster, "cluster", "", "the cluster's name at the relay (required)")
	fs.StringVar(&o.name, "name", "", "this agent's name in the relay's logs (default: $POD_NAME or the host name)")
	fs.StringVar(&o.relayURL, "relay", "", "the relay's API, https://host:port (required)")
	fs.StringVar(&o.relayAgentAddr, "relay-agent-addr", "", "the relay's agent endpoint host:port (default: the --relay host, port 8444)")
	fs.StringVar(&o.transport, "relay-transport", "tcp", "how sessions reach the relay: tcp (the agent endpoint, directly or through HTTPS_PROXY with CONNECT) or websocket (the relay's HTTPS API port, wss://, for egress that passes only HTTP(S)); both carry the same mutual TLS")
	fs.StringVar(&o.relayCA, "relay-ca", "", "PEM file of the relay's CA, pinned (tether-relay ca prints it) (required)")
	fs.StringVar(&o.credentialDir, "credential-dir", "/var/lib/tether-agent", "where the agent keeps its key and certificate, unless --credential-secret")
	fs.StringVar(&o.credentialSecret, "credential-secret", "", "NAMESPACE/NAME of a kubernetes.io/tls Secret that keeps the agent's credential (in-cluster); the agent's service account needs create on secrets, and get and update on this one")
	fs.StringVar(&o.joinTokenFile, "join-token-file", "", "file holding the join token, used when --credential-dir has no credential (default: $TETHER_JOIN_TOKEN)")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig of the agent's service account (default: in-cluster configuration)")
	fs.StringVar(&o.authnConfig, "authentication-config", "", "AuthenticationConfiguration (apiserver.config.k8s.io/v1) for callers' tokens (required)")
	fs.StringVar(&o.relayAudience, "relay-audience", relayapi.DefaultRelayAudience, "the relay's audience (its --login-audience): callers' tokens for it are refused here, since the relay saw them")
	fs.StringVar(&o.clusterAudience, "cluster-audience", "", "this cluster's audience, the tokens callers present to this agent (default: tether:cluster:<--cluster>); tokens for any other cluster's audience (tether:cluster:...) are refused, since that cluster's agent saw them. To accept only this audience, make it the only audience of --authentication-config")
	fs.StringSliceVar(&o.saIssuers, "service-account-issuer", []string{"https://kubernetes.default.svc.cluster.local"}, "issuer of the cluster's service-account tokens, which are passed through unimpersonated (repeatable)")
	fs.BoolVar(&o.allowSystemNames, "allow-system-names", false, "let callers' mapped user and group names start with system:")
	fs.IntVar(&o.sessions, "sessions", 2, "relay sessions to keep open")
	fs.DurationVar(&o.renewBefore, "renew-before", 0, "renew the credential this long before it expires (default: when a third of its lifetime is left, 10 days of the relay's 30)")
	fs.StringVar(&o.healthListen, "health-listen", "0.0.0.0:8081", "address of /healthz, /readyz (ready while a relay session is up) and /metrics (Prometheus); empty disables")
	o.streamWindow = tunnel.DefaultStreamWindow
	fs.Var(&o.streamWindow, "stream-window", "yamux stream window of the relay sessions: the most the relay sends on a stream (a caller's upload) before the agent reads it (min 256Ki, max 1Gi)")
	o.logs.Add(fs)
	return c
}

func (o *options) run(parent context.Context) error {
	log, err := o.logs.Logger(os.Stderr)
	if err != nil {
		return err
	}
	if o.cluster == "" || o.relayURL == "" || o.authnConfig == "" {
		return errors.New("--cluster, --relay and --authentication-config are required")
	}
	relayCA, err := cli.ReadCAFile("--relay-ca", o.relayCA)
	if err != nil {
		return err
	}
	relayURL, err := url.Parse(o.relayURL)
	if err != nil || relayURL.Scheme != "https" || relayURL.Hostname() == "" || strings.Trim(relayURL.Path, "/") != "" || relayURL.RawQuery != "" || relayURL.User != nil {
		return fmt.Errorf("--relay %q: want https://host:port, with no path, query or user", o.relayURL)
	}
	o.relayURL = "https://" + relayURL.Host
	if o.relayAgentAddr == "" {
		o.relayAgentAddr = net.JoinHostPort(relayURL.Hostname(), "8444")
	}
	var wsURL string
	switch o.transport {
	case "tcp":
	case "websocket":
		wsURL = "wss://" + relayURL.Host + relayapi.AgentWebSocketPath
	default:
		return fmt.Errorf("--relay-transport %q: want tcp or websocket", o.transport)
	}
	if o.name == "" {
		o.name = os.Getenv("POD_NAME")
	}
	joinToken := strings.TrimSpace(os.Getenv("TETHER_JOIN_TOKEN"))
	if o.joinTokenFile != "" {
		b, err := os.ReadFile(o.joinTokenFile)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("--join-token-file: %w", err)
		}
		joinToken = strings.TrimSpace(string(b))
	}
	raw, err := os.ReadFile(o.authnConfig)
	if err != nil {
		return fmt.Errorf("--authentication-config: %w", err)
	}
	ac, err := authn.LoadConfig(raw)
	if err != nil {
		return fmt.Errorf("--authentication-config %s: %w", o.authnConfig, err)
	}
	if err := (&authn.Config{Authentication: ac, DisallowedIssuers: o.saIssuers}).Validate(); err != nil {
		return fmt.Errorf("--authentication-config %s: %w", o.authnConfig, err)
	}
	ctx, cancel := cli.SignalContext(parent)
	defer cancel()

	restCfg, err := o.restConfig()
	if err != nil {
		return err
	}
	upstream, transport, credential, err := apiServer(restCfg)
	if err != nil {
		return err
	}
	var store agent.CredentialStore
	if o.credentialSecret != "" {
		ns, name, ok := strings.Cut(o.credentialSecret, "/")
		if !ok || ns == "" || name == "" {
			return fmt.Errorf("--credential-secret %q: want NAMESPACE/NAME", o.credentialSecret)
		}
		cs, err := kubernetes.NewForConfig(restCfg)
		if err != nil {
			return fmt.Errorf("--credential-secret: %w", err)
		}
		store = agent.SecretStore{Client: cs, Namespace: ns, Name: name}
	}
	if err := tunnel.ValidateStreamWindow(uint64(o.streamWindow)); err != nil {
		return fmt.Errorf("--stream-window %s: %w", o.streamWindow.String(), err)
	}
	oidcAuthn, err := authn.New(ctx, authn.Config{Authentication: ac, DisallowedIssuers: o.saIssuers, AllowSystemNames: o.allowSystemNames, Logger: log})
	if err != nil {
		return fmt.Errorf("--authentication-config %s: %w", o.authnConfig, err)
	}
	defer oidcAuthn.Close()
	a, err := agent.New(ctx, agent.Config{Cluster: o.cluster, Name: o.name, RelayAPI: o.relayURL, RelayAgentAddr: o.relayAgentAddr, RelayWebSocketURL: wsURL,
		RelayCA: relayCA, CredentialDir: o.credentialDir, Store: store, JoinToken: joinToken, Sessions: o.sessions, RenewBefore: o.renewBefore,
		RelayAudience: o.relayAudience, ClusterAudience: o.clusterAudience,
		StreamWindow: uint32(o.streamWindow), Logger: log, Prometheus: cli.NewMetricsRegistry("tether-agent"), HealthAddr: o.healthListen,
		Forward: impersonate.Config{
			Upstream: upstream, Transport: transport, Credential: credential,
			Authenticator:    authn.ServiceAccountPassthrough(o.saIssuers, 0, oidcAuthn),
			AllowSystemNames: o.allowSystemNames, Audit: log.With("audit", true),
		}})
	if err != nil {
		return err
	}
	log.Info("agent: starting", "cluster", o.cluster, "relay", o.relayAgentAddr, "apiserver", upstream.String())
	return a.Run(ctx)
}

// restConfig is the agent's own configuration for the API server.
func (o *options) restConfig() (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if o.kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("API server configuration (--kubeconfig, or in-cluster): %w", err)
	}
	return cfg, nil
}

// apiServer returns the API server's URL, a transport that trusts its CA
// and adds nothing, and the agent's bearer token source (re-read from the
// token file on every call, so projected tokens rotate).
func apiServer(cfg *rest.Config) (*url.URL, http.RoundTripper, func(context.Context) (string, error), error) {
	u, err := url.Parse(cfg.Host)
	if err != nil || u.Scheme != "https" {
		return nil, nil, nil, fmt.Errorf("API server %q: want an https URL", cfg.Host)
	}
	tlsCfg, err := rest.TLSConfigFor(cfg)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("API server TLS: %w", err)
	}
	if tlsCfg == nil {
		tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if len(tlsCfg.Certificates) > 0 || tlsCfg.GetClientCertificate != nil {
		return nil, nil, nil, errors.New("the agent's kubeconfig authenticates with a client certificate: give it a service account token instead (the agent must hold only impersonate rights)")
	}
	transport := &http.Transport{TLSClientConfig: tlsCfg, ForceAttemptHTTP2: false, MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second}
	static, file := cfg.BearerToken, cfg.BearerTokenFile
	if static == "" && file == "" {
		return nil, nil, nil, errors.New("the agent's kubeconfig has no bearer token: give it its service account's token")
	}
	credential := func(context.Context) (string, error) {
		if file == "" {
			return static, nil
		}
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("read the service account token: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	return u, transport, credential, nil
}

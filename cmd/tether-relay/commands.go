package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	apiserverapi "k8s.io/apiserver/pkg/apis/apiserver"

	"github.com/tether-k8s/tether/cmd/internal/cli"
	"github.com/tether-k8s/tether/core/authn"
	"github.com/tether-k8s/tether/core/policy"
	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/relay"
	"github.com/tether-k8s/tether/core/tunnel"
)

func newRootCommand() *cobra.Command {
	var data, socket string
	root := &cobra.Command{
		Use:   "tether-relay",
		Short: "The public relay between tether agents in firewalled clusters and the people who reach them",
		Long: `tether-relay is the only public piece of tether. Agents in clusters dial out to it and hold
sessions; callers' tether-proxy opens tunnels through it to a cluster's agent. It holds no
cluster credential, and carries callers' traffic as ciphertext between their proxy and the agent.

Start with:
  tether-relay cluster create prod        # prints a one-time join token for the agent
  tether-relay serve --hostname relay.example.com --authentication-config authn.yaml

The cluster commands work whether or not the relay runs: while it runs they go through its
admin socket (so rotate and delete also end the cluster's live sessions at once); otherwise
they open --data directly.`,
	}
	root.PersistentFlags().StringVar(&data, "data", "tether-relay.db", "the relay's state: clusters, hashed join tokens, its CA (a bbolt file, mode 0600; with --store etcd, only names the admin socket)")
	var store storeOptions
	store.addFlags(root.PersistentFlags())
	root.PersistentFlags().StringVar(&socket, "admin-socket", "", "the running relay's admin socket (mode 0600), which the cluster commands use (default: --data with .sock appended)")
	var remote struct {
		url, ca string
		token   cli.TokenFlags
	}
	root.PersistentFlags().StringVar(&remote.url, "relay", "", "run the cluster commands against this relay's public API (https://host:port) instead of the local socket; the relay must run with --admin-group and your token be a member's")
	root.PersistentFlags().StringVar(&remote.ca, "relay-ca", "", "with --relay: PEM of the CA that signed the relay's certificate (default: system roots)")
	root.PersistentFlags().StringVar(&remote.token.File, "token-file", "", "with --relay: file holding your token (default: $TETHER_TOKEN)")
	root.PersistentFlags().StringVar(&remote.token.Command, "token-command", "", "with --relay: command that prints your token")
	socketPath := func() string {
		if socket != "" {
			return socket
		}
		return data + ".sock"
	}
	// withAdmin runs fn against the running relay, or against the data
	// file when no relay serves the socket.
	withAdmin := func(fn func(admin) error) error {
		if remote.url != "" {
			u, err := url.Parse(remote.url)
			if err != nil || u.Scheme != "https" || u.Host == "" {
				return fmt.Errorf("--relay %q: want https://host[:port]", remote.url)
			}
			a := relay.AdminClient{URL: remote.url}
			if remote.ca != "" {
				if a.RootCAs, err = cli.ReadCAFile("--relay-ca", remote.ca); err != nil {
					return err
				}
			}
			if a.Token, err = remote.token.Source(); err != nil {
				return err
			}
			return fn(liveAdmin{a})
		}
		live := liveAdmin{relay.AdminClient{Socket: socketPath()}}
		err := fn(live)
		if !errors.Is(err, relay.ErrNoRelay) {
			return err
		}
		cfg, err := store.config(data, nil)
		if err != nil {
			return err
		}
		reg, err := registry.Open(cfg)
		if err != nil {
			return fmt.Errorf("%w\n(no relay answered on %s, so the command opened the store itself)", err, socketPath())
		}
		defer reg.Close()
		return fn(fileAdmin{reg})
	}
	root.AddCommand(newServeCommand(&data, socketPath, &store), newClusterCommand(withAdmin), newStoreCommand(&data, &store), &cobra.Command{
		Use:   "ca",
		Short: "Print the relay's CA certificate, which agents and proxies pin (--relay-ca)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withAdmin(func(a admin) error {
				pem, err := a.CA(cmd.Context())
				if err != nil {
					return err
				}
				_, err = cmd.OutOrStdout().Write(pem)
				return err
			})
		},
	})
	return root
}

// admin is what the cluster commands need: the running relay's admin API,
// or the registry file when the relay is not running.
type admin interface {
	Create(ctx context.Context, name string) (relay.AdminResult, error)
	Rotate(ctx context.Context, name string) (relay.AdminResult, error)
	Delete(ctx context.Context, name string) (relay.AdminResult, error)
	Clusters(ctx context.Context) ([]relay.ClusterStatus, error)
	Policy(ctx context.Context, name string) (relay.PolicyChange, error)
	Grant(ctx context.Context, name string, p policy.Policy) (relay.PolicyChange, error)
	Revoke(ctx context.Context, name string, p policy.Policy) (relay.PolicyChange, error)
	CA(ctx context.Context) ([]byte, error)
	// Live says whether this is a running relay (session counts are known).
	Live() bool
}

type liveAdmin struct{ relay.AdminClient }

func (liveAdmin) Live() bool { return true }

type fileAdmin struct{ reg *registry.Registry }

func (f fileAdmin) Live() bool { return false }
func (f fileAdmin) Create(_ context.Context, name string) (relay.AdminResult, error) {
	tok, err := f.reg.CreateCluster(name)
	return relay.AdminResult{Cluster: name, JoinToken: tok}, err
}
func (f fileAdmin) Rotate(_ context.Context, name string) (relay.AdminResult, error) {
	tok, err := f.reg.Rotate(name)
	return relay.AdminResult{Cluster: name, JoinToken: tok}, err
}
func (f fileAdmin) Delete(_ context.Context, name string) (relay.AdminResult, error) {
	return relay.AdminResult{Cluster: name}, f.reg.DeleteCluster(name)
}
func (f fileAdmin) Clusters(context.Context) ([]relay.ClusterStatus, error) {
	cs, err := f.reg.Clusters()
	out := make([]relay.ClusterStatus, 0, len(cs))
	for _, c := range cs {
		out = append(out, relay.ClusterStatus{ID: c.ID, CreatedAt: c.CreatedAt, Credentials: len(c.CurrentCredentials()),
			Grants: len(c.Policy.Users) + len(c.Policy.Groups) + len(c.Policy.Rules)})
	}
	return out, err
}
func (f fileAdmin) CA(context.Context) ([]byte, error) { return f.reg.CAPEM(), nil }
func (f fileAdmin) Policy(_ context.Context, name string) (relay.PolicyChange, error) {
	c, err := f.reg.Cluster(name)
	return relay.PolicyChange{Cluster: name, Policy: c.Policy}, err
}
func (f fileAdmin) Grant(_ context.Context, name string, add policy.Policy) (relay.PolicyChange, error) {
	p, err := f.reg.UpdatePolicy(name, func(p policy.Policy) (policy.Policy, error) { return p.Add(add), nil })
	return relay.PolicyChange{Cluster: name, Policy: p}, err
}
func (f fileAdmin) Revoke(_ context.Context, name string, drop policy.Policy) (relay.PolicyChange, error) {
	n := 0
	p, err := f.reg.UpdatePolicy(name, func(p policy.Policy) (policy.Policy, error) {
		var q policy.Policy
		q, n = p.Remove(drop)
		return q, nil
	})
	return relay.PolicyChange{Cluster: name, Policy: p, Removed: n}, err
}

func newClusterCommand(withAdmin func(func(admin) error) error) *cobra.Command {
	c := &cobra.Command{Use: "cluster", Short: "Create, list, rotate and delete clusters (on the running relay, or on --data)"}
	c.AddCommand(&cobra.Command{
		Use:   "create NAME",
		Short: "Create a cluster and print its one-time join token",
		Long:  "Create a cluster and print its join token. The token is shown once, stored only hashed, expires in 24h and works once.",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withAdmin(func(a admin) error {
				res, err := a.Create(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s\n", res.JoinToken)
				fmt.Fprintf(cmd.ErrOrStderr(), "cluster %s created. Give the token above to its agent (--join-token-file); it is shown only once and expires in 24h.\n"+
					"No one may reach the cluster until you grant access: tether-relay cluster grant %s --group GROUP (or --user, --rule).\n", args[0], args[0])
				return nil
			})
		},
	}, &cobra.Command{
		Use:   "rotate NAME",
		Short: "Revoke every credential of a cluster, end its sessions, and print a new join token",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withAdmin(func(a admin) error {
				res, err := a.Rotate(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s\n", res.JoinToken)
				fmt.Fprintf(cmd.ErrOrStderr(), "cluster %s rotated: its credentials are revoked%s. Give the new token above to its agents.\n", args[0], sessionsNote(a, res))
				return nil
			})
		},
	}, &cobra.Command{
		Use:   "list",
		Short: "List clusters (with live agent sessions when the relay runs)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withAdmin(func(a admin) error {
				cs, err := a.Clusters(cmd.Context())
				if err != nil {
					return err
				}
				w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "NAME\tCREATED\tCREDENTIALS\tGRANTS\tSESSIONS")
				for _, c := range cs {
					sessions := "-"
					if a.Live() {
						sessions = fmt.Sprint(c.Sessions)
					}
					fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%s\n", c.ID, c.CreatedAt.Format(time.RFC3339), c.Credentials, c.Grants, sessions)
				}
				return w.Flush()
			})
		},
	}, policyCommand("grant", "Let users, groups, or callers matching a CEL rule reach a cluster", withAdmin),
		policyCommand("revoke", "Remove users, groups or rules from a cluster's access policy", withAdmin),
		&cobra.Command{
			Use:   "policy NAME",
			Short: "Show who may reach a cluster",
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return withAdmin(func(a admin) error {
					res, err := a.Policy(cmd.Context(), args[0])
					if err != nil {
						return err
					}
					printPolicy(cmd.OutOrStdout(), res.Policy)
					return nil
				})
			},
		}, &cobra.Command{
			Use:   "delete NAME",
			Short: "Delete a cluster: its agents' credentials stop working and its sessions end",
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return withAdmin(func(a admin) error {
					res, err := a.Delete(cmd.Context(), args[0])
					if err != nil {
						return err
					}
					fmt.Fprintf(cmd.ErrOrStderr(), "cluster %s deleted%s.\n", args[0], sessionsNote(a, res))
					return nil
				})
			},
		})
	return c
}

// policyCommand is grant or revoke: the same flags, adding or removing.
func policyCommand(verb, short string, withAdmin func(func(admin) error) error) *cobra.Command {
	var p policy.Policy
	c := &cobra.Command{
		Use:   verb + " NAME (--user USER | --group GROUP | --rule CEL | --audience AUD)...",
		Short: short,
		Long: short + `.

Names are the mapped user and group names your authentication configuration produces (with their
prefixes, e.g. oidc:alice). A rule is a CEL expression over user.username, user.uid, user.groups and
user.extra (the extras claimMappings produce), e.g. for a CI pipeline:
  --rule 'user.extra["example.com/repository"] == ["org/app"]'
A cluster admits a caller that any entry names; a cluster with no entry admits no one. An --audience is a
requirement, not a grant: once a cluster lists audiences, a caller's token must be for one of them (give
each cluster's agent its own audience, and a token meant for another cluster is refused). The agent still
authenticates every caller itself, and the cluster's RBAC decides what they may do.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if p.Empty() && len(p.Audiences) == 0 {
				return fmt.Errorf("%s: name at least one --user, --group, --rule or --audience", verb)
			}
			return withAdmin(func(a admin) error {
				change := a.Grant
				if verb == "revoke" {
					change = a.Revoke
				}
				res, err := change(cmd.Context(), args[0], p)
				if err != nil {
					return err
				}
				if verb == "revoke" && res.Removed == 0 {
					fmt.Fprintf(cmd.ErrOrStderr(), "nothing to revoke: the policy of %s names none of those\n", args[0])
				}
				printPolicy(cmd.OutOrStdout(), res.Policy)
				if verb == "revoke" {
					fmt.Fprintln(cmd.ErrOrStderr(), "New tunnels are refused from now on; a tunnel already open runs until it closes.")
				}
				return nil
			})
		},
	}
	c.Flags().StringArrayVar(&p.Users, "user", nil, "a mapped user name (repeatable)")
	c.Flags().StringArrayVar(&p.Groups, "group", nil, "a mapped group name (repeatable)")
	c.Flags().StringArrayVar(&p.Rules, "rule", nil, "a CEL expression over user (repeatable)")
	c.Flags().StringArrayVar(&p.Audiences, "audience", nil, "an audience the caller's token must name (a requirement, repeatable)")
	return c
}

func printPolicy(w io.Writer, p policy.Policy) {
	for _, a := range p.Audiences {
		fmt.Fprintf(w, "audience\t%s (required)\n", a)
	}
	if p.Empty() {
		fmt.Fprintln(w, "no one may reach this cluster")
		return
	}
	for _, u := range p.Users {
		fmt.Fprintf(w, "user\t%s\n", u)
	}
	for _, g := range p.Groups {
		fmt.Fprintf(w, "group\t%s\n", g)
	}
	for _, r := range p.Rules {
		fmt.Fprintf(w, "rule\t%s\n", r)
	}
}

func sessionsNote(a admin, res relay.AdminResult) string {
	if !a.Live() {
		return " (the relay is not running; it refuses the old credentials when it starts)"
	}
	return fmt.Sprintf("; %d live agent session(s) ended", res.SessionsClosed)
}

type serveOptions struct {
	listen, agentListen, healthListen string
	hostnames                         []string
	tlsCert, tlsKey                   string
	authnConfig                       string
	relayID                           string
	drainTimeout                      time.Duration
	adminGroups                       []string
	clusterEndpoint                   bool
	loginIssuer, loginClientID        string
	streamWindow, streamMemory        cli.Bytes
	maxStreamsPerCluster              int
	maxStreamsPerCaller               int
	logs                              cli.LogFlags
}

func newServeCommand(data *string, socketPath func() string, store *storeOptions) *cobra.Command {
	o := &serveOptions{}
	c := &cobra.Command{
		Use:   "serve",
		Short: "Serve the relay: the API for callers and joining agents, and the agent endpoint",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return o.run(cmd.Context(), *data, socketPath(), store) },
	}
	fs := c.Flags()
	fs.StringVar(&o.listen, "listen", "0.0.0.0:8443", "address of the HTTPS API (callers' tunnels, agents joining)")
	fs.StringVar(&o.agentListen, "agent-listen", "0.0.0.0:8444", "address of the agent endpoint (mutual TLS)")
	fs.StringVar(&o.healthListen, "health-listen", "127.0.0.1:8081", "address of /healthz and /metrics (Prometheus) (empty disables)")
	fs.StringSliceVar(&o.hostnames, "hostname", nil, "DNS names or IP addresses agents and callers use to reach the relay; the relay's CA signs a serving certificate for them (repeatable)")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "serve the API with this certificate instead (e.g. from a public CA); the agent endpoint always uses the relay's CA")
	fs.StringVar(&o.tlsKey, "tls-key", "", "key of --tls-cert")
	fs.StringVar(&o.authnConfig, "authentication-config", "", "AuthenticationConfiguration (apiserver.config.k8s.io/v1) saying which tokens callers may present (required)")
	fs.StringVar(&o.relayID, "relay-id", "", "this replica's name in logs (default: host name)")
	fs.DurationVar(&o.drainTimeout, "drain-timeout", 20*time.Second, "on SIGTERM or Ctrl-C, how long to keep serving open tunnels while agents move their sessions (keep it under the pod's terminationGracePeriodSeconds); a second signal stops at once")
	fs.StringArrayVar(&o.adminGroups, "admin-group", nil, "serve the admin API (the cluster commands) on the public API too, to callers in this mapped group (e.g. oidc:platform-admins; repeatable). Default: only on the local admin socket")
	fs.BoolVar(&o.clusterEndpoint, "cluster-endpoint", true, "serve each cluster's HTTPS endpoint, https://RELAY/v1/clusters/ID/k8s, for kubeconfigs written by tether-proxy kubeconfig (no local process); the relay then terminates the caller's TLS and sees those requests in clear (tether-proxy's own mode keeps TLS end to end to the agent). false: callers need tether-proxy")
	fs.StringVar(&o.loginIssuer, "login-issuer", "", "the OpenID provider callers log in at, published at GET /v1/login so that tether-proxy login --relay URL needs nothing else; one of the issuers of --authentication-config")
	fs.StringVar(&o.loginClientID, "login-client-id", "", "the public client (no secret) callers log in as, one of that issuer's audiences; required with --login-issuer")
	o.streamWindow, o.streamMemory = tunnel.DefaultStreamWindow, relay.DefaultStreamMemory
	fs.Var(&o.streamWindow, "stream-window", "yamux stream window of agent sessions: the most an agent sends on a stream before the relay reads it; bigger is faster over long round trips (window / RTT), and costs up to this much memory per slow caller's stream (min 256Ki)")
	fs.Var(&o.streamMemory, "stream-memory", "the most all streams may make the relay buffer: it opens at most --stream-memory / --stream-window streams in all")
	fs.IntVar(&o.maxStreamsPerCluster, "max-streams-per-cluster", relay.DefaultMaxStreamsPerCluster, "the most streams (requests, watches, exec sessions) open to one cluster at once")
	fs.IntVar(&o.maxStreamsPerCaller, "max-streams-per-caller", relay.DefaultMaxStreamsPerCaller, "the most streams one caller (one authenticated user name, whatever its tokens) holds open at once, to all clusters together; each idle tunnel tether-proxy keeps holds one")
	o.logs.Add(fs)
	return c
}

// checkLogin refuses login settings the authentication configuration would
// not accept: a login at an issuer it does not trust, or for a client
// that is not among that issuer's audiences, could only give tokens the
// relay refuses.
func checkLogin(l relay.LoginSettings, ac *apiserverapi.AuthenticationConfiguration) error {
	if l.Issuer == "" && l.ClientID == "" {
		return nil
	}
	if l.Issuer == "" || l.ClientID == "" {
		return errors.New("--login-issuer and --login-client-id go together")
	}
	for _, j := range ac.JWT {
		if j.Issuer.URL != l.Issuer {
			continue
		}
		if slices.Contains(j.Issuer.Audiences, l.ClientID) {
			return nil
		}
		return fmt.Errorf("--login-client-id %q is not among the audiences of issuer %s in --authentication-config (%v): tokens from that login would be refused", l.ClientID, l.Issuer, j.Issuer.Audiences)
	}
	return fmt.Errorf("--login-issuer %s is not an issuer of --authentication-config: tokens from that login would be refused", l.Issuer)
}

// routerConfig checks the stream flags and returns the router's
// configuration from them. A cap of 0 is refused rather than read as "the
// default" or "no cap".
func (o *serveOptions) routerConfig() (relay.RouterConfig, error) {
	if o.maxStreamsPerCluster < 1 {
		return relay.RouterConfig{}, fmt.Errorf("--max-streams-per-cluster %d: want 1 or more", o.maxStreamsPerCluster)
	}
	if o.maxStreamsPerCaller < 1 {
		return relay.RouterConfig{}, fmt.Errorf("--max-streams-per-caller %d: want 1 or more (there is no unlimited; the default is %d)", o.maxStreamsPerCaller, relay.DefaultMaxStreamsPerCaller)
	}
	if o.streamWindow > 1<<30 {
		return relay.RouterConfig{}, fmt.Errorf("--stream-window %s: want at most 1Gi", o.streamWindow.String())
	}
	rcfg := relay.RouterConfig{MaxStreamsPerCluster: o.maxStreamsPerCluster, MaxStreamsPerCaller: o.maxStreamsPerCaller,
		StreamWindow: uint32(o.streamWindow), StreamMemory: int64(o.streamMemory)}
	if err := rcfg.Validate(); err != nil {
		return relay.RouterConfig{}, fmt.Errorf("--stream-window %s, --stream-memory %s: %w", o.streamWindow.String(), o.streamMemory.String(), err)
	}
	return rcfg, nil
}

func (o *serveOptions) run(parent context.Context, data, adminSocket string, store *storeOptions) error {
	log, err := o.logs.Logger(os.Stderr)
	if err != nil {
		return err
	}
	if len(o.hostnames) == 0 {
		return errors.New("--hostname is required: the names or addresses agents and callers use to reach this relay")
	}
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}
	if o.authnConfig == "" {
		return errors.New("--authentication-config is required: without it no caller can be authenticated")
	}
	raw, err := os.ReadFile(o.authnConfig)
	if err != nil {
		return fmt.Errorf("--authentication-config: %w", err)
	}
	ac, err := authn.LoadConfig(raw)
	if err != nil {
		return fmt.Errorf("--authentication-config %s: %w", o.authnConfig, err)
	}
	login := relay.LoginSettings{Issuer: o.loginIssuer, ClientID: o.loginClientID}
	if err := checkLogin(login, ac); err != nil {
		return err
	}
	if o.drainTimeout < 0 {
		return fmt.Errorf("--drain-timeout %s: must not be negative (0 stops without draining)", o.drainTimeout)
	}
	if o.relayID == "" {
		o.relayID, _ = os.Hostname()
	}
	// signalled ends at SIGTERM or Ctrl-C; ctx, which the servers run on,
	// ends after the drain.
	signalled, cancel := cli.SignalContext(parent)
	defer cancel()
	ctx, stopRun := context.WithCancel(parent)
	defer stopRun()

	rcfgStore, err := store.config(data, log)
	if err != nil {
		return err
	}
	reg, err := registry.Open(rcfgStore)
	if err != nil {
		return err
	}
	defer reg.Close()
	authenticator, err := authn.New(ctx, authn.Config{Authentication: ac, Logger: log})
	if err != nil {
		return err
	}
	defer authenticator.Close()
	rcfg, err := o.routerConfig()
	if err != nil {
		return err
	}
	rcfg.Logger = log
	router := relay.NewRouter(rcfg)
	log.Info("relay: stream limits", "streamWindow", o.streamWindow.String(), "maxStreams", router.MaxStreams(), "maxStreamsPerCluster", o.maxStreamsPerCluster,
		"maxStreamsPerCaller", o.maxStreamsPerCaller)
	defer router.Close()
	prom := prometheus.NewRegistry()
	metrics, err := relay.NewMetrics(prom, router)
	if err != nil {
		return err
	}
	serving, err := reg.ServingCertificate(o.hostnames)
	if err != nil {
		return err
	}
	var endpoint *relay.ClusterEndpointConfig
	if o.clusterEndpoint {
		endpoint = &relay.ClusterEndpointConfig{}
	}
	srv, err := relay.NewServer(relay.ServerConfig{Registry: reg, Router: router, Authenticator: authenticator, RelayID: o.relayID,
		Logger: log, Audit: log.With("audit", true), Metrics: metrics, AgentCertificate: &serving, AdminGroups: o.adminGroups,
		ClusterEndpoint: endpoint, Login: login})
	if err != nil {
		return err
	}
	defer srv.Close()
	apiCert := serving
	if o.tlsCert != "" {
		if apiCert, err = tls.LoadX509KeyPair(o.tlsCert, o.tlsKey); err != nil {
			return fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
	}
	agentL, err := tls.Listen("tcp", o.agentListen, srv.AgentTLSConfig(serving))
	if err != nil {
		return fmt.Errorf("--agent-listen %s: %w", o.agentListen, err)
	}
	apiL, err := net.Listen("tcp", o.listen)
	if err != nil {
		_ = agentL.Close()
		return fmt.Errorf("--listen %s: %w", o.listen, err)
	}
	adminL, err := relay.ListenAdmin(adminSocket)
	if err != nil {
		_ = agentL.Close()
		_ = apiL.Close()
		return fmt.Errorf("--admin-socket: %w", err)
	}
	admin := &http.Server{Handler: srv.AdminHandler(), ReadHeaderTimeout: 10 * time.Second}
	api := &http.Server{
		Handler:           srv.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    64 << 10,
		IdleTimeout:       2 * time.Minute,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{apiCert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}},
	}
	errc := make(chan error, 2)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); errc <- srv.ServeAgents(ctx, agentL) }()
	go func() {
		defer wg.Done()
		if err := api.ServeTLS(apiL, "", ""); !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("API: %w", err)
			return
		}
		errc <- nil
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := admin.Serve(adminL); !errors.Is(err, http.ErrServerClosed) {
			log.Error("relay: admin socket", "error", err)
		}
	}()
	var health *http.Server
	if o.healthListen != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
		mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
			if srv.Draining() {
				http.Error(w, "draining: this relay is shutting down", http.StatusServiceUnavailable)
				return
			}
			_, _ = w.Write([]byte("ok\n"))
		})
		mux.Handle("/metrics", promhttp.HandlerFor(prom, promhttp.HandlerOpts{}))
		health = &http.Server{Addr: o.healthListen, ReadHeaderTimeout: 5 * time.Second, Handler: mux}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := health.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
				log.Error("relay: health endpoint", "error", err)
			}
		}()
	}
	log.Info("relay: serving", "api", o.listen, "agents", o.agentListen, "adminSocket", adminSocket, "hostnames", strings.Join(o.hostnames, ","),
		"clusterEndpoint", o.clusterEndpoint)
	var first error
	select {
	case <-signalled.Done():
		if o.drainTimeout > 0 {
			// A second signal ends the drain at once.
			dctx, dcancel := context.WithTimeout(context.Background(), o.drainTimeout)
			dctx, dstop := cli.SignalContext(dctx)
			log.Info("relay: draining; a second signal stops at once", "timeout", o.drainTimeout)
			srv.Drain(dctx)
			dstop()
			dcancel()
		}
	case <-ctx.Done():
	case first = <-errc:
	}
	stopRun()
	cancel()
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	_ = api.Shutdown(sctx)
	_ = api.Close()
	if health != nil {
		_ = health.Shutdown(sctx)
	}
	_ = admin.Shutdown(sctx)
	_ = router.Close()
	wg.Wait()
	log.Info("relay: stopped")
	return first
}

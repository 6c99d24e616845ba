package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tether-k8s/tether/cmd/internal/cli"
	"github.com/tether-k8s/tether/core/authn"
	"github.com/tether-k8s/tether/core/policy"
	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/relay"
	"github.com/tether-k8s/tether/core/relayapi"
	"github.com/tether-k8s/tether/core/tokensource"
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
	root.PersistentFlags().StringVar(&data, "data", defaultDataFile(), "the relay's state: clusters, hashed join tokens, its CA (a bbolt file, mode 0600, created by serve and cluster create; the other commands refuse a missing one). Default: $STATE_DIRECTORY/relay.db under systemd, /var/lib/tether-relay/relay.db as root, else $XDG_STATE_HOME/tether-relay/relay.db (~/.local/state). With --store etcd, only names the admin socket")
	var store storeOptions
	store.addFlags(root.PersistentFlags())
	root.PersistentFlags().StringVar(&socket, "admin-socket", "", "the running relay's admin socket (mode 0600), which the cluster commands use (default: --data with .sock appended)")
	var remote struct {
		url, ca            string
		tokenFile, command string
	}
	root.PersistentFlags().StringVar(&remote.url, "relay", "", "run the cluster commands against this relay's public API (https://host:port) instead of the local socket; the relay must run with --admin-group, and your token be a member's, for the relay's --admin-audience (default tether-admin)")
	root.PersistentFlags().StringVar(&remote.ca, "relay-ca", "", "with --relay: PEM of the CA that signed the relay's certificate (default: system roots)")
	root.PersistentFlags().StringVar(&remote.tokenFile, "token-file", "", "with --relay: file holding your token (default: $TETHER_TOKEN)")
	root.PersistentFlags().StringVar(&remote.command, "token-command", "", "with --relay: command that prints your token")
	socketPath := func() string {
		if socket != "" {
			return socket
		}
		return data + ".sock"
	}
	// withAdmin runs fn against the running relay, or against the data
	// file when no relay serves the socket.
	withAdmin := func(use storeUse, fn func(relay.Admin) error) error {
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
			switch {
			case remote.tokenFile != "" && remote.command != "":
				return errors.New("--token-file and --token-command exclude each other")
			case remote.tokenFile != "":
				a.Token = tokensource.File("--token-file", remote.tokenFile)
			case remote.command != "":
				a.Token = tokensource.Command("--token-command", remote.command)
			case strings.TrimSpace(os.Getenv("TETHER_TOKEN")) != "":
				a.Token = tokensource.Env("$TETHER_TOKEN", "TETHER_TOKEN")
			default:
				return errors.New("--relay needs your token: pass --token-file or --token-command, or set TETHER_TOKEN: a token of your identity provider whose mapped groups include one of the relay's --admin-group")
			}
			return fn(a)
		}
		err := fn(relay.AdminClient{Socket: socketPath()})
		if !errors.Is(err, relay.ErrNoRelay) {
			return err
		}
		cfg, err := store.config(data, nil)
		if err != nil {
			return err
		}
		cfg.MustExist = use == manage
		if use == mayCreate && cfg.Store == registry.StoreBbolt {
			if err := os.MkdirAll(filepath.Dir(data), 0o700); err != nil {
				return fmt.Errorf("--data %s: create its directory: %w", data, err)
			}
		}
		reg, err := registry.Open(cfg)
		if err != nil {
			return fmt.Errorf("%w\n(no relay answered on %s, so the command opened the store itself)", err, socketPath())
		}
		defer reg.Close()
		return fn(&relay.AdminService{Registry: reg})
	}
	root.AddCommand(newServeCommand(&data, socketPath, &store), newClusterCommand(withAdmin), newStoreCommand(&data, &store), &cobra.Command{
		Use:   "ca",
		Short: "Print the relay's CA certificate, which agents and proxies pin (--relay-ca)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withAdmin(manage, func(a relay.Admin) error {
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

// storeUse says whether a command that opens the store itself (no relay
// answers its socket) may create a new relay there.
type storeUse bool

const (
	// manage refuses a store that holds no relay: a mistyped --data must
	// not create a new relay with a new CA.
	manage storeUse = false
	// mayCreate creates the store, and its directory, when missing
	// (cluster create; serve creates its own).
	mayCreate storeUse = true
)

// adminRunner runs fn against the running relay's admin API, or against
// the store when no relay runs.
type adminRunner func(use storeUse, fn func(relay.Admin) error) error

func newClusterCommand(withAdmin adminRunner) *cobra.Command {
	c := &cobra.Command{Use: "cluster", Short: "Create, list, rotate and delete clusters (on the running relay, or on --data)"}
	c.AddCommand(&cobra.Command{
		Use:   "create NAME",
		Short: "Create a cluster and print its one-time join token",
		Long:  "Create a cluster and print its join token. The token is shown once, stored only hashed, expires in 24h and works once.",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withAdmin(mayCreate, func(a relay.Admin) error {
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
			return withAdmin(manage, func(a relay.Admin) error {
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
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List clusters (with live agent sessions when the relay runs)",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withAdmin(manage, func(a relay.Admin) error {
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
				return withAdmin(manage, func(a relay.Admin) error {
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
				return withAdmin(manage, func(a relay.Admin) error {
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
func policyCommand(verb, short string, withAdmin adminRunner) *cobra.Command {
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
			return withAdmin(manage, func(a relay.Admin) error {
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
				switch {
				case res.TunnelsEnded > 0:
					fmt.Fprintf(cmd.ErrOrStderr(), "%d open tunnel(s) of callers the policy no longer admits were ended.\n", res.TunnelsEnded)
				case !a.Live():
					fmt.Fprintln(cmd.ErrOrStderr(), "The relay is not running: the policy applies to every tunnel from its start.")
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

func sessionsNote(a relay.Admin, res relay.AdminResult) string {
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
	adminAudience                     string
	loginAudience                     string
	clusterEndpoint                   bool
	loginIssuer, loginClientID        string
	console                           bool
	consoleClientID, consoleRedirect  string
	streamWindow, streamMemory        cli.Bytes
	maxStreamsPerCluster              int
	maxStreamsPerCaller               int
	maxSessionsPerCluster             int
	joinRate, joinRateTotal           float64
	joinBurst, joinBurstTotal         int
	maxSessionsPerCredential          int
	peerListen, peerAdvertise         string
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
	fs.StringVar(&o.adminAudience, "admin-audience", relay.DefaultAdminAudience, "the audience a token must be for to reach the remote admin API (--admin-group); the relay refuses tokens for it everywhere else, so an admin token never reaches an agent, and the tokens agents see cannot administer the relay. The relay's --authentication-config must accept it")
	fs.BoolVar(&o.clusterEndpoint, "cluster-endpoint", true, "serve each cluster's HTTPS endpoint, https://RELAY/v1/clusters/ID/k8s, for kubeconfigs written by tether-proxy kubeconfig (no local process); the relay then terminates the caller's TLS and sees those requests in clear (tether-proxy's own mode keeps TLS end to end to the agent). false: callers need tether-proxy")
	fs.StringVar(&o.loginIssuer, "login-issuer", "", "the OpenID provider callers log in at, published at GET /v1/login so that tether-proxy login --relay URL needs nothing else; one of the issuers of --authentication-config")
	fs.StringVar(&o.loginAudience, "login-audience", relayapi.DefaultRelayAudience, "the relay's own audience: tokens for it open tunnels here, and agents refuse them (tether-agent --relay-audience); tokens for any cluster's audience (tether:cluster:NAME) are refused here, since that cluster's agent saw them. Published at GET /v1/login, so that tether-proxy login asks the issuer for a token per hop. --authentication-config must accept it (from --login-issuer, when set), or the relay does not start")
	fs.StringVar(&o.loginClientID, "login-client-id", "", "the public client (no secret) callers log in as, one of that issuer's audiences; required with --login-issuer")
	fs.BoolVar(&o.console, "console", false, "serve the web console at https://RELAY/ui: people sign in at --login-issuer (authorization code flow with PKCE) and see the clusters they may reach, their state and the commands to connect; members of --admin-group also see the grants and recent tunnels. Read-only. Needs --login-issuer")
	fs.StringVar(&o.consoleClientID, "console-client-id", "", "the OpenID client the console signs in as (public, no secret; its ID tokens must name it in aud, and --authentication-config accept it from --login-issuer). Default: --login-client-id")
	fs.StringVar(&o.consoleRedirect, "console-redirect-url", "", "the console's callback as browsers reach it, https://HOST[:PORT]/ui/callback, registered at the issuer for the console's client. Default: https://FIRST-HOSTNAME:LISTEN-PORT/ui/callback")
	o.streamWindow, o.streamMemory = tunnel.DefaultStreamWindow, relay.DefaultStreamMemory
	fs.Var(&o.streamWindow, "stream-window", "yamux stream window of agent sessions: the most an agent sends on a stream before the relay reads it; bigger is faster over long round trips (window / RTT), and costs up to this much memory per slow caller's stream (min 256Ki)")
	fs.Var(&o.streamMemory, "stream-memory", "the most all streams may make the relay buffer: it opens at most --stream-memory / --stream-window streams in all")
	fs.IntVar(&o.maxStreamsPerCluster, "max-streams-per-cluster", relay.DefaultMaxStreamsPerCluster, "the most streams (requests, watches, exec sessions) open to one cluster at once")
	fs.IntVar(&o.maxStreamsPerCaller, "max-streams-per-caller", relay.DefaultMaxStreamsPerCaller, "the most streams one caller (one authenticated user name, whatever its tokens) holds open at once, to all clusters together; each idle tunnel tether-proxy keeps holds one")
	fs.Float64Var(&o.joinRate, "join-rate", registry.DefaultJoinsPerClient, "joins per second one address may make at /v1/join (unauthenticated); more are answered 429 with Retry-After, which agents wait out")
	fs.IntVar(&o.joinBurst, "join-burst", registry.DefaultJoinBurstPerClient, "joins one address may make at once before --join-rate applies (raise both when many agents join from behind one NAT address)")
	fs.Float64Var(&o.joinRateTotal, "join-rate-total", registry.DefaultJoinsTotal, "joins per second this relay (each replica) takes from all addresses together; more are answered 429 with Retry-After. A join costs a store write and a certificate signature: raise it (with --join-burst-total) to enrol thousands of agents at once")
	fs.IntVar(&o.joinBurstTotal, "join-burst-total", registry.DefaultJoinBurstTotal, "joins this relay takes at once from all addresses together before --join-rate-total applies")
	fs.IntVar(&o.maxSessionsPerCluster, "max-sessions-per-cluster", relay.DefaultMaxSessionsPerCluster, "the most agent sessions one cluster holds at once; an agent over it is refused (TooManySessions) and told why")
	fs.IntVar(&o.maxSessionsPerCredential, "max-sessions-per-credential", relay.DefaultMaxSessionsPerCredential, "the most agent sessions one agent credential holds at once (an agent keeps 2; agent replicas sharing one credential Secret share the cap)")
	fs.StringVar(&o.peerListen, "peer-listen", fmt.Sprintf("0.0.0.0:%d", relay.DefaultPeerPort), "with --store etcd: address of the replica-to-replica endpoint (mutual TLS with peer certificates from the relay's CA), where the other replicas forward the streams of callers who landed on them to the agents whose sessions this one holds; empty: a single relay on etcd that forwards nothing")
	fs.StringVar(&o.peerAdvertise, "peer-advertise", "", "with --store etcd: the host:port the other replicas dial to reach --peer-listen (a pod's IP: --peer-advertise $(POD_IP):8445); port 0 means --peer-listen's. Required with --peer-listen")
	o.logs.Add(fs)
	return c
}

// peerOptions returns the replica options from the flags: on etcd with a
// --peer-listen, the relay is one replica of several.
func (o *serveOptions) peerOptions(store registry.Store) (*relay.PeerOptions, error) {
	if store != registry.StoreEtcd {
		if o.peerAdvertise != "" {
			return nil, errors.New("--peer-advertise needs --store etcd: the replicas share their routes there (one relay on bbolt has no peers)")
		}
		return nil, nil
	}
	if o.peerListen == "" {
		return nil, nil
	}
	if o.peerAdvertise == "" {
		return nil, fmt.Errorf("--store etcd with --peer-listen %s needs --peer-advertise host:port: where the other replicas reach this one (a pod's IP and the port; or --peer-listen \"\" for a single relay on etcd)", o.peerListen)
	}
	p := &relay.PeerOptions{Addr: o.peerListen, Advertise: o.peerAdvertise}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return p, nil
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
	if err := tunnel.ValidateStreamWindow(uint64(o.streamWindow)); err != nil {
		return relay.RouterConfig{}, fmt.Errorf("--stream-window %s: %w", o.streamWindow.String(), err)
	}
	if o.maxSessionsPerCluster < 1 || o.maxSessionsPerCredential < 1 {
		return relay.RouterConfig{}, fmt.Errorf("--max-sessions-per-cluster %d, --max-sessions-per-credential %d: want 1 or more", o.maxSessionsPerCluster, o.maxSessionsPerCredential)
	}
	rcfg := relay.RouterConfig{MaxStreamsPerCluster: o.maxStreamsPerCluster, MaxStreamsPerCaller: o.maxStreamsPerCaller,
		StreamWindow: uint32(o.streamWindow), StreamMemory: int64(o.streamMemory),
		MaxSessionsPerCluster: o.maxSessionsPerCluster, MaxSessionsPerCredential: o.maxSessionsPerCredential}
	if err := rcfg.Validate(); err != nil {
		return relay.RouterConfig{}, fmt.Errorf("--stream-window %s, --stream-memory %s: %w", o.streamWindow.String(), o.streamMemory.String(), err)
	}
	return rcfg, nil
}

// options turns the flags into the relay's Options, checking each flag
// before anything is opened.
func (o *serveOptions) options(data, adminSocket string, store *storeOptions) (relay.Options, error) {
	if len(o.hostnames) == 0 {
		return relay.Options{}, errors.New("--hostname is required: the names or addresses agents and callers use to reach this relay")
	}
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return relay.Options{}, errors.New("--tls-cert and --tls-key go together")
	}
	if o.authnConfig == "" {
		return relay.Options{}, errors.New("--authentication-config is required: without it no caller can be authenticated")
	}
	if o.drainTimeout < 0 {
		return relay.Options{}, fmt.Errorf("--drain-timeout %s: must not be negative (0 stops without draining)", o.drainTimeout)
	}
	if (o.loginIssuer == "") != (o.loginClientID == "") {
		return relay.Options{}, errors.New("--login-issuer and --login-client-id go together")
	}
	raw, err := os.ReadFile(o.authnConfig)
	if err != nil {
		return relay.Options{}, fmt.Errorf("--authentication-config: %w", err)
	}
	ac, err := authn.LoadConfig(raw)
	if err != nil {
		return relay.Options{}, fmt.Errorf("--authentication-config %s: %w", o.authnConfig, err)
	}
	if err := (&authn.Config{Authentication: ac}).Validate(); err != nil {
		return relay.Options{}, fmt.Errorf("--authentication-config %s: %w", o.authnConfig, err)
	}
	if o.joinRate < 0 || o.joinBurst < 0 || o.joinRateTotal < 0 || o.joinBurstTotal < 0 {
		return relay.Options{}, fmt.Errorf("--join-rate %g, --join-burst %d, --join-rate-total %g, --join-burst-total %d: must not be negative",
			o.joinRate, o.joinBurst, o.joinRateTotal, o.joinBurstTotal)
	}
	rcfg, err := o.routerConfig()
	if err != nil {
		return relay.Options{}, err
	}
	reg, err := store.config(data, nil)
	if err != nil {
		return relay.Options{}, err
	}
	peer, err := o.peerOptions(reg.Store)
	if err != nil {
		return relay.Options{}, err
	}
	if reg.Store == registry.StoreBbolt {
		if err := os.MkdirAll(filepath.Dir(data), 0o700); err != nil {
			return relay.Options{}, fmt.Errorf("--data %s: create its directory: %w", data, err)
		}
	}
	opts := relay.Options{
		Registry: reg, Authentication: ac, Hostnames: o.hostnames,
		APIAddr: o.listen, AgentAddr: o.agentListen, HealthAddr: o.healthListen, AdminSocket: adminSocket,
		RelayID: o.relayID, AdminGroups: o.adminGroups, AdminAudience: o.adminAudience, RelayAudience: o.loginAudience, Router: rcfg,
		Login: relayapi.LoginSettings{Issuer: o.loginIssuer, ClientID: o.loginClientID},
		JoinLimit: registry.JoinLimitConfig{PerClient: o.joinRate, PerClientBurst: o.joinBurst,
			Total: o.joinRateTotal, TotalBurst: o.joinBurstTotal},
		Prometheus: cli.NewMetricsRegistry("tether-relay"),
		Peer:       peer,
	}
	if o.clusterEndpoint {
		opts.ClusterEndpoint = &relay.ClusterEndpointConfig{}
	}
	if o.console {
		redirect, err := o.consoleRedirectURL()
		if err != nil {
			return relay.Options{}, err
		}
		opts.Console = &relay.ConsoleConfig{ClientID: o.consoleClientID, RedirectURL: redirect}
	} else if o.consoleClientID != "" || o.consoleRedirect != "" {
		return relay.Options{}, errors.New("--console-client-id and --console-redirect-url need --console")
	}
	if o.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
		if err != nil {
			return relay.Options{}, fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
		opts.APICertificate = &cert
	}
	if err := opts.Validate(); err != nil {
		return relay.Options{}, loginFlagError(err, o)
	}
	return opts, nil
}

// consoleRedirectURL is --console-redirect-url, or the relay's first
// --hostname at --listen's port.
func (o *serveOptions) consoleRedirectURL() (string, error) {
	if o.consoleRedirect != "" {
		return o.consoleRedirect, nil
	}
	_, port, err := net.SplitHostPort(o.listen)
	if err != nil {
		return "", fmt.Errorf("--listen %s: %w", o.listen, err)
	}
	return "https://" + net.JoinHostPort(o.hostnames[0], port) + "/ui/callback", nil
}

// loginFlagError names the flags when the login settings are what
// Validate refused.
func loginFlagError(err error, o *serveOptions) error {
	if o.console && strings.Contains(err.Error(), "console") {
		return fmt.Errorf("--console (--console-client-id %q, --console-redirect-url %q): %w", o.consoleClientID, o.consoleRedirect, err)
	}
	if o.loginIssuer != "" && strings.Contains(err.Error(), "login") {
		return fmt.Errorf("--login-issuer %s, --login-client-id %s: %w", o.loginIssuer, o.loginClientID, err)
	}
	return err
}

func (o *serveOptions) run(parent context.Context, data, adminSocket string, store *storeOptions) error {
	log, err := o.logs.Logger(os.Stderr)
	if err != nil {
		return err
	}
	opts, err := o.options(data, adminSocket, store)
	if err != nil {
		return err
	}
	opts.Logger, opts.Audit, opts.Registry.Logger = log, log.With("audit", true), log
	// signalled ends at SIGTERM or Ctrl-C; the relay runs until then and
	// drains after.
	signalled, cancel := cli.SignalContext(parent)
	defer cancel()
	r, err := relay.Start(context.WithoutCancel(parent), opts)
	if err != nil {
		return err
	}
	var first error
	select {
	case <-signalled.Done():
		if o.drainTimeout > 0 {
			// A second signal ends the drain at once.
			dctx, dcancel := context.WithTimeout(context.Background(), o.drainTimeout)
			dctx, dstop := cli.SignalContext(dctx)
			log.Info("relay: draining; a second signal stops at once", "timeout", o.drainTimeout)
			r.Drain(dctx)
			dstop()
			dcancel()
		}
	case first = <-r.Done():
	}
	return errors.Join(first, r.Close())
}

// defaultDataFile is where the relay keeps its bbolt file unless --data
// says otherwise: the state directory systemd gives the unit
// (StateDirectory=), /var/lib/tether-relay for root (where the chart mounts
// its volume), else the user's XDG state directory. Never the working
// directory, where a command run from anywhere would find no relay and
// create one.
func defaultDataFile() string {
	if d := os.Getenv("STATE_DIRECTORY"); d != "" {
		// systemd may list several, colon-separated; the first is ours.
		return filepath.Join(strings.Split(d, ":")[0], "relay.db")
	}
	if os.Geteuid() == 0 {
		return "/var/lib/tether-relay/relay.db"
	}
	if d := os.Getenv("XDG_STATE_HOME"); filepath.IsAbs(d) {
		return filepath.Join(d, "tether-relay", "relay.db")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "tether-relay", "relay.db")
	}
	return "relay.db"
}

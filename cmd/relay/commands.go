package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/tether-k8s/tether/cmd/internal/cli"
	"github.com/tether-k8s/tether/core/authn"
	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/relay"
)

func newRootCommand() *cobra.Command {
	var data string
	root := &cobra.Command{
		Use:   "tether-relay",
		Short: "The public relay between tether agents in firewalled clusters and the people who reach them",
		Long: `tether-relay is the only public piece of tether. Agents in clusters dial out to it and hold
sessions; callers' tether-proxy opens tunnels through it to a cluster's agent. It holds no
cluster credential, and carries callers' traffic as ciphertext between their proxy and the agent.

Start with:
  tether-relay cluster create prod        # prints a one-time join token for the agent
  tether-relay serve --hostname relay.example.com --authentication-config authn.yaml`,
	}
	root.PersistentFlags().StringVar(&data, "data", "tether-relay.db", "the relay's state: clusters, hashed join tokens, its CA (a bbolt file, mode 0600)")
	openRegistry := func() (*registry.Registry, error) {
		r, err := registry.Open(registry.Config{Path: data})
		if err != nil {
			return nil, fmt.Errorf("%w\n(the cluster commands open --data directly: run them where the relay's data is, while it is stopped or before it starts)", err)
		}
		return r, nil
	}
	root.AddCommand(newServeCommand(&data), newClusterCommand(openRegistry), &cobra.Command{
		Use:   "ca",
		Short: "Print the relay's CA certificate, which agents and proxies pin (--relay-ca)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			reg, err := openRegistry()
			if err != nil {
				return err
			}
			defer reg.Close()
			_, err = cmd.OutOrStdout().Write(reg.CAPEM())
			return err
		},
	})
	return root
}

func newClusterCommand(open func() (*registry.Registry, error)) *cobra.Command {
	c := &cobra.Command{Use: "cluster", Short: "Create, list, rotate and delete clusters"}
	// with runs fn on the opened registry and closes it.
	with := func(fn func(*registry.Registry) error) error {
		reg, err := open()
		if err != nil {
			return err
		}
		defer reg.Close()
		return fn(reg)
	}
	c.AddCommand(&cobra.Command{
		Use:   "create NAME",
		Short: "Create a cluster and print its one-time join token",
		Long:  "Create a cluster and print its join token. The token is shown once, stored only hashed, expires in 24h and works once.",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return with(func(reg *registry.Registry) error {
				tok, err := reg.CreateCluster(args[0])
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s\n", tok)
				fmt.Fprintf(cmd.ErrOrStderr(), "cluster %s created. Give the token above to its agent (--join-token-file); it is shown only once and expires in 24h.\n", args[0])
				return nil
			})
		},
	}, &cobra.Command{
		Use:   "rotate NAME",
		Short: "Revoke every credential of a cluster and print a new join token",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return with(func(reg *registry.Registry) error {
				tok, err := reg.Rotate(args[0])
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s\n", tok)
				return nil
			})
		},
	}, &cobra.Command{
		Use:   "list",
		Short: "List clusters",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return with(func(reg *registry.Registry) error {
				cs, err := reg.Clusters()
				if err != nil {
					return err
				}
				w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "NAME\tCREATED\tCREDENTIALS")
				for _, c := range cs {
					fmt.Fprintf(w, "%s\t%s\t%d\n", c.ID, c.CreatedAt.Format(time.RFC3339), len(c.Credentials))
				}
				return w.Flush()
			})
		},
	}, &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a cluster: its agents' credentials stop working",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return with(func(reg *registry.Registry) error {
				return reg.DeleteCluster(args[0])
			})
		},
	})
	return c
}

type serveOptions struct {
	listen, agentListen, healthListen string
	hostnames                         []string
	tlsCert, tlsKey                   string
	authnConfig                       string
	relayID                           string
	logs                              cli.LogFlags
}

func newServeCommand(data *string) *cobra.Command {
	o := &serveOptions{}
	c := &cobra.Command{
		Use:   "serve",
		Short: "Serve the relay: the API for callers and joining agents, and the agent endpoint",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return o.run(cmd.Context(), *data) },
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
	o.logs.Add(fs)
	return c
}

func (o *serveOptions) run(parent context.Context, data string) error {
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
	if o.relayID == "" {
		o.relayID, _ = os.Hostname()
	}
	ctx, cancel := cli.SignalContext(parent)
	defer cancel()

	reg, err := registry.Open(registry.Config{Path: data, Logger: log})
	if err != nil {
		return err
	}
	defer reg.Close()
	authenticator, err := authn.New(ctx, authn.Config{Authentication: ac, Logger: log})
	if err != nil {
		return err
	}
	router := relay.NewRouter(relay.RouterConfig{Logger: log})
	defer router.Close()
	prom := prometheus.NewRegistry()
	metrics, err := relay.NewMetrics(prom, router)
	if err != nil {
		return err
	}
	srv, err := relay.NewServer(relay.ServerConfig{Registry: reg, Router: router, Authenticator: authenticator, RelayID: o.relayID,
		Logger: log, Audit: log.With("audit", true), Metrics: metrics})
	if err != nil {
		return err
	}
	serving, err := reg.ServingCertificate(o.hostnames)
	if err != nil {
		return err
	}
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
	var health *http.Server
	if o.healthListen != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
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
	log.Info("relay: serving", "api", o.listen, "agents", o.agentListen, "hostnames", strings.Join(o.hostnames, ","))
	var first error
	select {
	case <-ctx.Done():
	case first = <-errc:
	}
	cancel()
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	_ = api.Shutdown(sctx)
	_ = api.Close()
	if health != nil {
		_ = health.Shutdown(sctx)
	}
	_ = router.Close()
	wg.Wait()
	log.Info("relay: stopped")
	return first
}

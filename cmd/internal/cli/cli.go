package cli

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/tether-k8s/tether/core/version"
	"k8s.io/klog/v2"
)

// LogFlags are the logging flags every binary has.
type LogFlags struct {
	Format string
	Level  string
}

// Add registers the flags on fs.
func (l *LogFlags) Add(fs *pflag.FlagSet) {
	fs.StringVar(&l.Format, "log-format", "text", "log format: text or json")
	fs.StringVar(&l.Level, "log-level", "info", "log level: debug, info, warn or error (tokens are never logged at any level)")
}

// Logger builds the logger the flags describe, writing to w.
func (l *LogFlags) Logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(l.Level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", l.Level)
	}
	opts := &slog.HandlerOptions{Level: level}
	var log *slog.Logger
	switch l.Format {
	case "text":
		log = slog.New(slog.NewTextHandler(w, opts))
	case "json":
		log = slog.New(slog.NewJSONHandler(w, opts))
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", l.Format)
	}
	// The Kubernetes libraries (the OIDC authenticator, client-go) log
	// through klog: send it to the same handler, so every line has the
	// chosen format.
	klog.SetSlogLogger(log.With("component", "k8s"))
	return log, nil
}

// SignalContext returns a context cancelled with parent or by SIGINT or
// SIGTERM.
func SignalContext(parent context.Context) (context.Context, context.CancelFunc) {
	if parent == nil {
		parent = context.Background()
	}
	return signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
}

// ExitCoder is an error that carries the process's exit code (a command
// run by `tether-proxy exec` failed): Execute exits with it, silently.
type ExitCoder interface {
	error
	ExitCode() int
}

// Execute runs root and exits 1 with "NAME: error" on failure. It gives
// root --version and a version subcommand.
func Execute(root *cobra.Command) {
	root.Version = version.String()
	root.SetVersionTemplate(version.Full(root.Name()) + "\n")
	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print this binary's version, Go release and platform",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), version.Full(root.Name()))
			return err
		},
	})
	root.InitDefaultCompletionCmd() // now, so that it too refuses an unknown shell
	RefuseUnknownSubcommands(root)
	root.SilenceUsage = true
	root.SilenceErrors = true
	if err := root.Execute(); err != nil {
		var ec ExitCoder
		if errors.As(err, &ec) {
			os.Exit(ec.ExitCode())
		}
		fmt.Fprintf(os.Stderr, "%s: %v\n", root.Name(), err)
		os.Exit(1)
	}
}

// RefuseUnknownSubcommands makes every command under c that only groups
// subcommands (tether-relay cluster) fail on an argument that names none
// of them, saying which it meant, instead of printing its help and exiting
// 0 as cobra does (`tether-relay cluster ls` looked like it worked). With
// no argument it still prints its help.
func RefuseUnknownSubcommands(c *cobra.Command) {
	for _, sub := range c.Commands() {
		RefuseUnknownSubcommands(sub)
	}
	if !c.HasSubCommands() || c.Runnable() {
		return
	}
	c.Args = cobra.ArbitraryArgs
	c.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return cmd.Help()
		}
		if cmd.SuggestionsMinimumDistance <= 0 {
			cmd.SuggestionsMinimumDistance = 2 // cobra's own default for the root
		}
		msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
		if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
			msg += "; did you mean " + strings.Join(s, " or ") + "?"
		}
		return fmt.Errorf("%s (%s --help lists them)", msg, cmd.CommandPath())
	}
}

// ReadCAFile reads a PEM bundle of CA certificates for pinning.
func ReadCAFile(flag, path string) (*x509.CertPool, error) {
	if path == "" {
		return nil, fmt.Errorf("%s is required: the CA that signed the relay's certificate (tether-relay ca prints it)", flag)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s %s: no PEM certificate in it", flag, path)
	}
	return pool, nil
}

package cli

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/klog/v2"

	"github.com/tether-k8s/tether/core/login"
	"github.com/tether-k8s/tether/core/proxy"
)

// Version is tether's version, set at build time with
// -ldflags "-X github.com/tether-k8s/tether/cmd/internal/cli.Version=v0.1.0".
var Version = "dev"

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

// Execute runs root and exits 1 with "NAME: error" on failure.
func Execute(root *cobra.Command) {
	root.Version = Version
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

// TokenFlags say where the caller's token comes from.
type TokenFlags struct {
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
func (t *TokenFlags) Add(fs *pflag.FlagSet) {
	fs.StringVar(&t.File, "token-file", "", "file holding the caller's token, re-read when it changes (default: $TETHER_TOKEN, else the login tether-proxy login cached)")
	fs.StringVar(&t.Command, "token-command", "", "command that prints the caller's token, run when the token is needed (cached 1 minute)")
	fs.StringVar(&t.From, "token-from", "", "github-actions: the job's OIDC token (needs permissions id-token: write; the default inside such a job when no other token is given); env:NAME: the variable NAME (e.g. a GitLab CI id_tokens entry)")
	fs.StringVar(&t.Audience, "token-audience", "tether", "with --token-from github-actions: the audience to request, as the relay's and agent's authentication configuration expect")
	fs.StringVar(&t.ClusterFile, "cluster-token-file", "", "service-account-token mode: file holding a service-account token of the cluster (re-read when it changes); the agent passes it to the API server as it is, and your own token still opens the tunnel at the relay")
}

// ClusterSource returns the --cluster-token-file token's source, or nil
// when the flag is not given.
func (t *TokenFlags) ClusterSource() func() (string, error) {
	if t.ClusterFile == "" {
		return nil
	}
	return fileToken("--cluster-token-file", t.ClusterFile)
}

// fileToken reads the token in path on every call, so a rotated token is
// picked up.
func fileToken(flag, path string) func() (string, error) {
	return func() (string, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("%s: %w", flag, err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return "", fmt.Errorf("%s %s is empty", flag, path)
		}
		return tok, nil
	}
}

// Source returns a function giving the current token: from the file (read
// on every call, so a rotated token is picked up), the command, the
// TETHER_TOKEN environment variable, or, when none is given, the login
// `tether-proxy login` cached (core/login), renewed as it nears expiry.
func (t *TokenFlags) Source() (func() (string, error), error) {
	given := 0
	for _, v := range []string{t.File, t.Command, t.From} {
		if v != "" {
			given++
		}
	}
	if given == 0 && strings.TrimSpace(os.Getenv("TETHER_TOKEN")) == "" && proxy.InGitHubActions() {
		t.From = "github-actions" // a CI job needs no stored secret
	}
	switch {
	case given > 1:
		return nil, errors.New("--token-file, --token-command and --token-from exclude each other")
	case t.From == "github-actions":
		return proxy.GitHubActionsToken(t.Audience, nil), nil
	case strings.HasPrefix(t.From, "env:"):
		name := strings.TrimPrefix(t.From, "env:")
		return func() (string, error) {
			tok := strings.TrimSpace(os.Getenv(name))
			if tok == "" {
				return "", fmt.Errorf("--token-from env:%s: the variable is empty or not set", name)
			}
			return tok, nil
		}, nil
	case t.From != "":
		return nil, fmt.Errorf("--token-from %q: want github-actions or env:NAME", t.From)
	case t.File != "":
		return fileToken("--token-file", t.File), nil
	case t.Command != "":
		return commandToken(t.Command), nil
	}
	if tok := strings.TrimSpace(os.Getenv("TETHER_TOKEN")); tok != "" {
		return func() (string, error) { return tok, nil }, nil
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

func commandToken(command string) func() (string, error) {
	var (
		mu     sync.Mutex
		cached string
		at     time.Time
	)
	return func() (string, error) {
		mu.Lock()
		defer mu.Unlock()
		if cached != "" && time.Since(at) < time.Minute {
			return cached, nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "sh", "-c", command).Output()
		if err != nil {
			return "", fmt.Errorf("--token-command: %w", err)
		}
		tok := strings.TrimSpace(string(out))
		if tok == "" {
			return "", errors.New("--token-command printed no token")
		}
		cached, at = tok, time.Now()
		return tok, nil
	}
}

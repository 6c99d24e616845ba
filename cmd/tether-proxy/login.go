package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	osexec "os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tether-k8s/tether/cmd/internal/cli"
	"github.com/tether-k8s/tether/core/kstatus"
	"github.com/tether-k8s/tether/core/login"
	"github.com/tether-k8s/tether/core/relayapi"
)

// loginOptions say where to log in: the relay's published settings, or
// --issuer and --client-id.
type loginOptions struct {
	relayURL, relayCA string
	issuer, clientID  string
	issuerCA          string
	browser, open     bool
	timeout           time.Duration
}

func (o *loginOptions) add(fs *pflag.FlagSet) {
	fs.StringVar(&o.relayURL, "relay", "", "the relay's API, https://host:port: it publishes where to log in (GET /v1/login)")
	fs.StringVar(&o.relayCA, "relay-ca", "", "PEM file of the CA that signed the relay's certificate (default: the system's roots)")
	fs.StringVar(&o.issuer, "issuer", "", "the OpenID provider's issuer URL (overrides the relay's)")
	fs.StringVar(&o.clientID, "client-id", "", "the public client to log in as (overrides the relay's)")
	fs.StringVar(&o.issuerCA, "issuer-ca", "", "PEM file of a private CA that signed the issuer's certificate (default: the system's roots); kept with the login for refreshes")
}

// settings returns the issuer and client ID: the flags, completed from
// the relay's GET /v1/login.
func (o *loginOptions) settings(ctx context.Context) (relayapi.LoginSettings, error) {
	s := relayapi.LoginSettings{Issuer: o.issuer, ClientID: o.clientID}
	if s.Issuer != "" && s.ClientID != "" {
		return s, nil
	}
	if err := recallRelay(&o.relayURL, &o.relayCA); err != nil {
		return s, err
	}
	if o.relayURL == "" {
		return s, errors.New("where to log in: give --relay URL (the relay publishes its login settings), or --issuer and --client-id")
	}
	pub, err := relayLoginSettings(ctx, o.relayURL, o.relayCA)
	if err != nil {
		return s, err
	}
	if s.Issuer == "" {
		s.Issuer = pub.Issuer
	}
	if s.ClientID == "" {
		s.ClientID = pub.ClientID
	}
	return s, nil
}

// relayLoginSettings reads the relay's GET /v1/login (unauthenticated).
func relayLoginSettings(ctx context.Context, relayURL, relayCA string) (relayapi.LoginSettings, error) {
	var pub relayapi.LoginSettings
	hc, err := relayHTTPClient(relayCA)
	if err != nil {
		return pub, err
	}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(relayURL, "/")+relayapi.LoginPath, nil)
	if err != nil {
		return pub, fmt.Errorf("--relay %s: %w", relayURL, err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return pub, fmt.Errorf("ask the relay at %s where to log in: %w", relayURL, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		if st, ok := kstatus.Decode(body); ok {
			return pub, fmt.Errorf("the relay at %s: %s", relayURL, st.Message)
		}
		return pub, fmt.Errorf("the relay at %s answered %s to GET %s", relayURL, resp.Status, relayapi.LoginPath)
	}
	if err := json.Unmarshal(body, &pub); err != nil {
		return pub, fmt.Errorf("the relay's login settings: %w", err)
	}
	return pub, nil
}

// command is the tether-proxy login command these options make, for the
// error of an expired login.
func (o *loginOptions) command() string {
	args := []string{"tether-proxy", "login"}
	for _, f := range [][2]string{{"--relay", o.relayURL}, {"--relay-ca", o.relayCA}, {"--issuer", o.issuer},
		{"--client-id", o.clientID}, {"--issuer-ca", o.issuerCA}} {
		if f[1] != "" {
			args = append(args, f[0], shellQuote(f[1]))
		}
	}
	if o.browser {
		args = append(args, "--browser")
	}
	return strings.Join(args, " ")
}

func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=@%+,", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// client builds the login client for these options.
func (o *loginOptions) client(ctx context.Context) (*login.Client, error) {
	s, err := o.settings(ctx)
	if err != nil {
		return nil, err
	}
	cfg := login.Config{Issuer: s.Issuer, ClientID: s.ClientID, Out: os.Stderr, LoginCommand: o.command()}
	if o.issuerCA != "" {
		if cfg.IssuerCA, err = os.ReadFile(o.issuerCA); err != nil {
			return nil, fmt.Errorf("--issuer-ca: %w", err)
		}
	}
	if o.open {
		cfg.OpenBrowser = openBrowser
	}
	return login.New(cfg)
}

func newLoginCommand() *cobra.Command {
	o := &loginOptions{}
	c := &cobra.Command{
		Use:   "login --relay URL",
		Short: "Log in at your OpenID provider; tether-proxy then uses (and refreshes) that login",
		Long: `tether-proxy login gets an ID token from the OpenID provider the relay names (GET /v1/login),
or from --issuer and --client-id, and caches it with its refresh token under your configuration
directory (` + "`$XDG_CONFIG_HOME/tether/login`" + `, mode 0600). tether-proxy and tether-proxy exec then use it
whenever no token flag is given, refreshing it as needed.

By default it uses the device flow: it prints a URL and a code to enter there, in any browser on
any machine. --browser uses the authorization code flow with PKCE instead, receiving the answer on
a loopback port; --open opens the URL in this machine's browser.

  tether-proxy login --relay https://relay.example.com:8443 --relay-ca relay-ca.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := cli.SignalContext(cmd.Context())
			defer cancel()
			ctx, stop := context.WithTimeout(ctx, o.timeout)
			defer stop()
			lc, err := o.client(ctx)
			if err != nil {
				return err
			}
			var e *login.Entry
			if o.browser {
				e, err = lc.BrowserLogin(ctx)
			} else {
				e, err = lc.DeviceLogin(ctx)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "Logged in as %s (expires %s; renewed as needed). Login cached in %s\n",
				e.Subject, e.Expiry.Local().Format("15:04"), lc.CachePath())
			if o.relayURL != "" {
				name, err := rememberRelay(o.relayURL, o.relayCA)
				if err != nil {
					return err
				}
				fmt.Fprintf(os.Stderr, "Relay %s remembered as %s, the default: later commands need only --cluster (--relay %s picks it among others)\n", o.relayURL, name, name)
			}
			return nil
		},
	}
	o.add(c.Flags())
	c.Flags().BoolVar(&o.browser, "browser", false, "log in with a browser (authorization code and PKCE, answer on a loopback port) instead of the device flow")
	c.Flags().BoolVar(&o.open, "open", false, "with --browser, open the URL in this machine's browser (when one can be started)")
	c.Flags().DurationVar(&o.timeout, "timeout", 10*time.Minute, "give up when the login is not completed within this long")
	return c
}

func newLogoutCommand() *cobra.Command {
	o := &loginOptions{}
	c := &cobra.Command{
		Use:   "logout",
		Short: "Remove the cached login and revoke its refresh token at the provider",
		Long: `tether-proxy logout removes the cached login (the current one, or that of --relay's provider or
--issuer and --client-id) and revokes its refresh token at the provider's revocation endpoint when
it has one. If the revocation fails, it says so and exits 1: the login is removed here all the same.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			var lc *login.Client
			var err error
			if o.relayURL == "" && o.issuer == "" {
				lc, err = login.FromCache("")
			} else {
				lc, err = o.client(ctx)
			}
			if errors.Is(err, login.ErrNotLoggedIn) {
				fmt.Fprintln(os.Stderr, "Not logged in: nothing to remove.")
				return nil
			}
			if err != nil {
				return err
			}
			removed, revokeErr, err := lc.Logout(ctx)
			if err != nil {
				return err
			}
			if !removed {
				fmt.Fprintln(os.Stderr, "Not logged in: nothing to remove.")
			} else {
				fmt.Fprintf(os.Stderr, "Logged out: removed %s\n", lc.CachePath())
			}
			if revokeErr != nil {
				return fmt.Errorf("the refresh token could not be revoked at the provider (it stays valid there until it expires): %w", revokeErr)
			}
			return nil
		},
	}
	o.add(c.Flags())
	return c
}

// openBrowser opens url with the desktop's opener, when there is one.
func openBrowser(url string) error {
	// The opener runs whatever the URL names (file:, custom schemes): only
	// the provider's https login page is handed to it.
	if !strings.HasPrefix(url, "https://") {
		return fmt.Errorf("not opening %q: only https URLs are opened", url)
	}
	name := "xdg-open"
	switch runtime.GOOS {
	case "darwin":
		name = "open"
	case "linux", "freebsd", "openbsd", "netbsd":
		if os.Getenv("DISPLAY") == "" && os.Getenv("WAYLAND_DISPLAY") == "" {
			return errors.New("no graphical session (DISPLAY and WAYLAND_DISPLAY are unset)")
		}
	default:
		return fmt.Errorf("no browser opener on %s", runtime.GOOS)
	}
	path, err := osexec.LookPath(name)
	if err != nil {
		return err
	}
	cmd := osexec.Command(path, url)
	if err := cmd.Start(); err != nil {
		return err
	}
	// The opener returns at once; reap it in the background.
	go func() { _ = cmd.Wait() }()
	return nil
}

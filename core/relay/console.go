package relay

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	apiserverapi "k8s.io/apiserver/pkg/apis/apiserver"

	"github.com/tether-k8s/tether/core/identity"
	"github.com/tether-k8s/tether/core/policy"
	"github.com/tether-k8s/tether/core/relay/console"
	"github.com/tether-k8s/tether/core/relayapi"
)

// ConsoleConfig switches on the web console at /ui (package console): a
// read-only view, for people signed in with the login issuer, of the
// clusters they may reach, and for administrators of the grants and
// recent tunnels.
type ConsoleConfig struct {
	// ClientID is the OpenID client the console signs in as (code flow,
	// PKCE, no secret). Zero means the login's client ID
	// (ServerConfig.Login.ClientID).
	ClientID string
	// RedirectURL is the console's callback as browsers reach it,
	// https://HOST[:PORT]/ui/callback, registered at the login issuer for
	// ClientID. Required.
	RedirectURL string
	// HTTPClient reaches the issuer (discovery, token endpoint). Nil means
	// one with the system's roots; Start gives one with the issuer's
	// certificateAuthority from the authentication configuration.
	HTTPClient *http.Client
}

// consoleAuditLines is how many tunnel audit lines the console keeps.
const consoleAuditLines = 200

// newConsole builds the console from s's configuration, with s as its
// source.
func (s *Server) newConsole() (*console.Console, error) {
	cc := *s.cfg.Console
	if cc.ClientID == "" {
		cc.ClientID = s.cfg.Login.ClientID
	}
	return console.New(console.Config{
		Issuer: s.cfg.Login.Issuer, ClientID: cc.ClientID, RedirectURL: cc.RedirectURL, HTTPClient: cc.HTTPClient,
		Authenticator: s.cfg.Authenticator, Source: consoleSource{s},
		RefusedAudience: func(aud []string) error {
			if slices.Contains(aud, s.cfg.AdminAudience) {
				return fmt.Errorf("it is for the admin audience %s", s.cfg.AdminAudience)
			}
			_, err := relayapi.CheckRelayAudiences(aud, s.cfg.RelayAudience)
			return err
		},
		Logger: s.audit,
	})
}

// consoleSource answers the console with the checks of the relay's API.
type consoleSource struct{ s *Server }

var _ console.Source = consoleSource{}

// admits reports whether who may reach c: the checks of a tunnel (its
// token's audiences, then the cluster's policy).
func admits(p policy.Policy, who identity.Result) (bool, string) {
	if err := policy.CheckAudience(p, who.Audiences); err != nil {
		return false, err.Error()
	}
	d, _ := policy.Check(p, who.Identity)
	return d.Allowed, d.Why
}

func (cs consoleSource) state(id string) console.Cluster {
	r := cs.s.cfg.Router
	c := console.Cluster{ID: id, Sessions: r.AllSessions(id), Agents: r.Agents(id)}
	if c.Sessions == 0 {
		c.LastSeen = r.LastSeen(id)
	}
	return c
}

// Reachable lists the clusters whose policy and audiences admit who, as
// GET /v1/whoami does.
func (cs consoleSource) Reachable(_ context.Context, who identity.Result) ([]console.Cluster, error) {
	all, err := cs.s.cfg.Registry.Clusters()
	if err != nil {
		return nil, err
	}
	out := []console.Cluster{}
	for _, c := range all {
		if ok, _ := admits(c.Policy, who); ok {
			out = append(out, cs.state(c.ID))
		}
	}
	slices.SortFunc(out, func(a, b console.Cluster) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// Reach returns cluster id for who, or a *console.RefusedError; an
// unknown cluster reads as one without a grant.
func (cs consoleSource) Reach(_ context.Context, who identity.Result, id string) (console.Cluster, error) {
	const noGrant = "no grant of this relay admits you to it (or it does not exist)"
	c, err := cs.s.cfg.Registry.Cluster(id)
	if err != nil {
		return console.Cluster{}, &console.RefusedError{Cluster: id, Why: noGrant}
	}
	if ok, _ := admits(c.Policy, who); !ok {
		return console.Cluster{}, &console.RefusedError{Cluster: id, Why: noGrant}
	}
	return cs.state(id), nil
}

// IsAdmin is the admin API's group check (ServerConfig.AdminGroups).
func (cs consoleSource) IsAdmin(who identity.Result) bool { return cs.s.isAdmin(who.Identity.Groups) }

// Grants lists every cluster's policy.
func (cs consoleSource) Grants(context.Context) ([]console.Grant, error) {
	all, err := cs.s.cfg.Registry.Clusters()
	if err != nil {
		return nil, err
	}
	out := make([]console.Grant, 0, len(all))
	for _, c := range all {
		p := c.Policy
		out = append(out, console.Grant{Cluster: c.ID, Users: p.Users, Groups: p.Groups, Rules: p.Rules, Audiences: p.Audiences})
	}
	slices.SortFunc(out, func(a, b console.Grant) int { return strings.Compare(a.Cluster, b.Cluster) })
	return out, nil
}

// Audit returns the recent tunnel audit lines, newest first.
func (cs consoleSource) Audit() []console.AuditLine { return cs.s.auditRing.lines() }

// isAdmin reports whether groups include one of ServerConfig.AdminGroups.
func (s *Server) isAdmin(groups []string) bool {
	return slices.ContainsFunc(groups, func(g string) bool { return slices.Contains(s.cfg.AdminGroups, g) })
}

// auditRing keeps the latest tunnel audit lines for the console.
type auditRing struct {
	mu   sync.Mutex
	buf  []console.AuditLine
	next int
	full bool
}

func newAuditRing(n int) *auditRing { return &auditRing{buf: make([]console.AuditLine, n)} }

// keep records r if it is a tunnel's line (its message starts with
// "relay: tunnel"), with its own attributes.
func (a *auditRing) keep(r slog.Record) {
	if !strings.HasPrefix(r.Message, "relay: tunnel") {
		return
	}
	line := console.AuditLine{Time: r.Time, Message: r.Message}
	r.Attrs(func(at slog.Attr) bool {
		line.Attrs = append(line.Attrs, at.Key+"="+at.Value.String())
		return true
	})
	a.mu.Lock()
	defer a.mu.Unlock()
	a.buf[a.next] = line
	a.next = (a.next + 1) % len(a.buf)
	a.full = a.full || a.next == 0
}

// lines returns the kept lines, newest first (nil on a nil ring).
func (a *auditRing) lines() []console.AuditLine {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	n := a.next
	if a.full {
		n = len(a.buf)
	}
	out := make([]console.AuditLine, 0, n)
	for i := 1; i <= n; i++ {
		out = append(out, a.buf[(a.next-i+len(a.buf))%len(a.buf)])
	}
	return out
}

// auditTee is a slog.Handler that gives every record to the ring and to
// the audit logger's own handler.
type auditTee struct {
	ring  *auditRing
	inner slog.Handler
}

func (t auditTee) Enabled(context.Context, slog.Level) bool { return true }

func (t auditTee) Handle(ctx context.Context, r slog.Record) error {
	t.ring.keep(r)
	if t.inner.Enabled(ctx, r.Level) {
		return t.inner.Handle(ctx, r)
	}
	return nil
}

func (t auditTee) WithAttrs(attrs []slog.Attr) slog.Handler {
	return auditTee{ring: t.ring, inner: t.inner.WithAttrs(attrs)}
}

func (t auditTee) WithGroup(name string) slog.Handler {
	return auditTee{ring: t.ring, inner: t.inner.WithGroup(name)}
}

// consoleHTTPClient is the console's client for issuer, trusting the
// certificateAuthority the authentication configuration gives it, over
// dial (nil: the default dialer).
func consoleHTTPClient(ac *apiserverapi.AuthenticationConfiguration, issuer string, dial func(ctx context.Context, network, addr string) (net.Conn, error)) (*http.Client, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if ac != nil {
		for _, j := range ac.JWT {
			if j.Issuer.URL == issuer && j.Issuer.CertificateAuthority != "" {
				tc.RootCAs = x509.NewCertPool()
				if !tc.RootCAs.AppendCertsFromPEM([]byte(j.Issuer.CertificateAuthority)) {
					return nil, errors.New("relay: console: the login issuer's certificateAuthority holds no PEM certificate")
				}
			}
		}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tc
	if dial != nil {
		tr.DialContext = dial
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: tr,
		// The token endpoint's answer is read as it is: no redirect is
		// followed with the code and verifier.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}, nil
}

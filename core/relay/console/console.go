package console

import (
	"context"
	"crypto/rand"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/tether-k8s/tether/core/identity"
)

// Path is where the console is served; CallbackPath is its OpenID
// redirect, which the issuer must have registered for Config.ClientID
// (as https://RELAY/ui/callback).
const (
	Path         = "/ui/"
	CallbackPath = "/ui/callback"
)

// Defaults of Config.
const (
	// DefaultMaxSessions caps the signed-in sessions one relay keeps.
	DefaultMaxSessions = 10000
	// LoginTimeout is how long a sign-in may take, from /ui/login to the
	// callback.
	LoginTimeout = 10 * time.Minute
)

// DefaultScopes are the scopes the console asks for: the ID token's
// identity and groups (no refresh token: a session ends with its token).
var DefaultScopes = []string{"openid", "profile", "email", "groups"}

// Cluster is a cluster as the console shows it.
type Cluster struct {
	// ID is the cluster's ID.
	ID string
	// Sessions is how many agent sessions the relay holds for it (on this
	// replica and, with several, the others); 0 means not connected.
	Sessions int
	// Agents are the connected agents' versions, each once.
	Agents []string
	// LastSeen is when the cluster's last agent session here ended; zero
	// if none has, or while one is connected.
	LastSeen time.Time
}

// Grant is one cluster's access policy, for administrators.
type Grant struct {
	// Cluster is the cluster's ID.
	Cluster string
	// Users, Groups and Rules admit callers; Audiences, when set, are
	// required of their tokens.
	Users, Groups, Rules, Audiences []string
}

// AuditLine is one line of the relay's tunnel audit log.
type AuditLine struct {
	// Time is when it was logged.
	Time time.Time
	// Message is the line's message ("relay: tunnel").
	Message string
	// Attrs are its attributes, in order ("cluster=prod", "user=...").
	Attrs []string
}

// RefusedError is Source.Reach's refusal: who may not reach Cluster.
type RefusedError struct {
	// Cluster is the cluster asked for.
	Cluster string
	// Why says why, for the person refused.
	Why string
}

func (e *RefusedError) Error() string { return "console: cluster " + e.Cluster + " refused: " + e.Why }

// Source is what the console shows, from the relay.
type Source interface {
	// Reachable lists the clusters who may reach, by ID, with the
	// checks a tunnel would make (audiences and policy).
	Reachable(ctx context.Context, who identity.Result) ([]Cluster, error)
	// Reach returns cluster id if who may reach it, else a *RefusedError,
	// also when no such cluster exists (a caller learns nothing of the
	// clusters it may not reach).
	Reach(ctx context.Context, who identity.Result, id string) (Cluster, error)
	// IsAdmin reports whether who may see the admin page.
	IsAdmin(who identity.Result) bool
	// Grants lists every cluster's policy, by ID.
	Grants(ctx context.Context) ([]Grant, error)
	// Audit returns the recent tunnel audit lines, newest first.
	Audit() []AuditLine
}

// Config configures a Console.
type Config struct {
	// Issuer is the OpenID provider's issuer URL (https). Required.
	Issuer string
	// ClientID is the public client (no secret) the console signs in as;
	// its ID tokens must name it in aud. Required.
	ClientID string
	// RedirectURL is the console's callback, https://RELAY/ui/callback,
	// registered at Issuer for ClientID. Required.
	RedirectURL string
	// RelayURL is the relay's API URL shown in the commands the console
	// prints. Zero means RedirectURL's scheme and host.
	RelayURL string
	// Scopes are asked for at sign-in. Empty means DefaultScopes.
	Scopes []string
	// Authenticator verifies the ID token: the relay's own, so that the
	// console admits the tokens, and maps the identities, the relay's
	// authentication configuration says. Required.
	Authenticator identity.Authenticator
	// RefusedAudience, when not nil, returns an error for audiences a
	// console token must not have (the relay: any cluster's, which an
	// agent saw; the admin API's).
	RefusedAudience func(audiences []string) error
	// Source answers what the pages show. Required.
	Source Source
	// HTTPClient reaches the issuer (discovery and token endpoint). Nil
	// means a client with a 30 s timeout and the system's roots.
	HTTPClient *http.Client
	// MaxSessions caps the signed-in sessions kept. Zero means
	// DefaultMaxSessions.
	MaxSessions int
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
	// Logger receives sign-ins, refusals and sign-outs (never a token).
	// Nil discards.
	Logger *slog.Logger
}

// Validate reports the first problem with c, naming the field.
func (c *Config) Validate() error {
	if c.Authenticator == nil || c.Source == nil {
		return errors.New("console: Config.Authenticator and Source are required")
	}
	if c.ClientID == "" {
		return errors.New("console: Config.ClientID is required: the OpenID client the console signs in as")
	}
	if u, err := url.Parse(c.Issuer); err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("console: Config.Issuer %q: want an https URL", c.Issuer)
	}
	u, err := url.Parse(c.RedirectURL)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.Path != CallbackPath || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("console: Config.RedirectURL %q: want https://HOST[:PORT]%s, the relay's address as browsers reach it", c.RedirectURL, CallbackPath)
	}
	if c.RelayURL != "" {
		if u, err := url.Parse(c.RelayURL); err != nil || u.Scheme != "https" || u.Host == "" {
			return fmt.Errorf("console: Config.RelayURL %q: want an https URL", c.RelayURL)
		}
	}
	if c.MaxSessions < 0 {
		return fmt.Errorf("console: Config.MaxSessions %d is negative", c.MaxSessions)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.RelayURL == "" {
		u, _ := url.Parse(c.RedirectURL)
		c.RelayURL = u.Scheme + "://" + u.Host
	}
	c.RelayURL = strings.TrimSuffix(c.RelayURL, "/")
	if len(c.Scopes) == 0 {
		c.Scopes = DefaultScopes
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
	if c.MaxSessions == 0 {
		c.MaxSessions = DefaultMaxSessions
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static/console.css
var staticFS embed.FS

var pages = template.Must(template.New("").Funcs(template.FuncMap{
	"since": func(now, t time.Time) string { return now.Sub(t).Round(time.Second).String() },
	"utc":   func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"join":  strings.Join,
}).ParseFS(templateFS, "templates/*.html"))

// Console serves the web console. Its sessions live in memory: a relay
// restart signs everyone out.
type Console struct {
	cfg      Config
	log      *slog.Logger
	oidc     *provider
	sessions *sessions
	seal     *sealer
	// exchanges bounds how often callbacks make the relay call the
	// issuer's token endpoint: a callback comes before anyone is known.
	exchanges *rate.Limiter
	mux       *http.ServeMux
	// origin is the console's, from Config.RedirectURL: what a browser
	// sends as Origin from its pages.
	origin string
}

// New validates cfg and returns a Console. It makes no request: the
// issuer's discovery document is fetched at the first sign-in.
func New(cfg Config) (*Console, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		return nil, fmt.Errorf("console: a cookie key: %w", err)
	}
	seal, err := newSealer(key[:])
	if err != nil {
		return nil, err
	}
	c := &Console{cfg: cfg, log: cfg.Logger, oidc: &provider{issuer: cfg.Issuer, client: cfg.HTTPClient},
		sessions: newSessions(cfg.MaxSessions), seal: seal, exchanges: rate.NewLimiter(5, 20), mux: http.NewServeMux()}
	if u, err := url.Parse(cfg.RedirectURL); err == nil {
		c.origin = u.Scheme + "://" + u.Host
	}
	static, _ := fs.Sub(staticFS, "static")
	c.mux.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", http.FileServerFS(static)))
	c.mux.HandleFunc("GET /ui/{$}", c.home)
	c.mux.HandleFunc("GET /ui/login", c.login)
	c.mux.HandleFunc("GET "+CallbackPath, c.callback)
	c.mux.HandleFunc("POST /ui/logout", c.logout)
	c.mux.HandleFunc("GET /ui/clusters/{id}", c.cluster)
	c.mux.HandleFunc("GET /ui/admin", c.admin)
	c.mux.HandleFunc("/ui/", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			c.render(w, r, http.StatusMethodNotAllowed, "message", page{Title: "Not allowed",
				Message: "The console is read-only: " + r.Method + " is not served here."})
			return
		}
		c.render(w, r, http.StatusNotFound, "message", page{Title: "Not found", Message: "No such console page: " + r.URL.Path})
	})
	return c, nil
}

// ServeHTTP serves /ui and everything under it. /ui itself redirects to
// /ui/.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	securityHeaders(w.Header())
	if r.URL.Path == "/ui" {
		http.Redirect(w, r, Path, http.StatusMovedPermanently)
		return
	}
	c.mux.ServeHTTP(w, r)
}

// securityHeaders are on every answer: nothing may frame, script or leak
// a Referer from a console page.
func securityHeaders(h http.Header) {
	h.Set("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
}

// page is what every template gets.
type page struct {
	Title    string
	Message  string
	Hint     string
	User     string
	Groups   []string
	Expires  time.Time
	Now      time.Time
	Admin    bool
	CSRF     string
	RelayURL string
	Clusters []Cluster
	Cluster  *Cluster
	Grants   []Grant
	Audit    []AuditLine
	SignIn   bool
}

// render writes template name with p, filling in the session's part.
func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, name string, p page) {
	p.Now, p.RelayURL = c.cfg.Now(), c.cfg.RelayURL
	if s := c.sessionOf(r); s != nil {
		p.User, p.Groups, p.Expires, p.CSRF, p.Admin = s.who.Identity.User, s.who.Identity.Groups, s.expires, s.csrf, c.cfg.Source.IsAdmin(s.who)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := pages.ExecuteTemplate(w, name, p); err != nil {
		c.log.Error("console: render", "page", name, "error", err)
	}
}

// signedIn returns the request's session, or answers 401 with the
// sign-in page and returns nil.
func (c *Console) signedIn(w http.ResponseWriter, r *http.Request) *session {
	s := c.sessionOf(r)
	if s == nil {
		msg := "Sign in to see the clusters you may reach."
		if _, err := r.Cookie(sessionCookie); err == nil {
			msg = "Your session has ended (it lasts as long as the identity provider's token): sign in again."
		}
		c.render(w, r, http.StatusUnauthorized, "message", page{Title: "Sign in", Message: msg, SignIn: true})
		return nil
	}
	return s
}

func (c *Console) home(w http.ResponseWriter, r *http.Request) {
	s := c.sessionOf(r)
	if s == nil {
		c.render(w, r, http.StatusOK, "message", page{Title: "Sign in", SignIn: true,
			Message: "Sign in with your identity provider to see the clusters you may reach through this relay."})
		return
	}
	list, err := c.cfg.Source.Reachable(r.Context(), s.who)
	if err != nil {
		c.log.Error("console: list clusters", "user", s.who.Identity.User, "error", err)
		c.render(w, r, http.StatusInternalServerError, "message", page{Title: "Error", Message: "The relay could not list its clusters: try again; if it persists, tell the relay's operator."})
		return
	}
	c.render(w, r, http.StatusOK, "list", page{Title: "Your clusters", Clusters: list})
}

func (c *Console) cluster(w http.ResponseWriter, r *http.Request) {
	s := c.signedIn(w, r)
	if s == nil {
		return
	}
	id := r.PathValue("id")
	cl, err := c.cfg.Source.Reach(r.Context(), s.who, id)
	var refused *RefusedError
	switch {
	case errors.As(err, &refused):
		c.log.Info("console: cluster refused", "user", s.who.Identity.User, "cluster", id, "why", refused.Why)
		c.render(w, r, http.StatusForbidden, "message", page{Title: "Not allowed",
			Message: fmt.Sprintf("You (%s) may not reach cluster %q through this relay: %s.", s.who.Identity.User, id, refused.Why),
			Hint:    fmt.Sprintf("An administrator grants access with: tether-relay cluster grant %s --user %s (or --group, --rule).", id, s.who.Identity.User)})
		return
	case err != nil:
		c.log.Error("console: cluster", "user", s.who.Identity.User, "cluster", id, "error", err)
		c.render(w, r, http.StatusInternalServerError, "message", page{Title: "Error", Message: "The relay could not read the cluster: try again."})
		return
	}
	c.render(w, r, http.StatusOK, "cluster", page{Title: "Cluster " + cl.ID, Cluster: &cl})
}

func (c *Console) admin(w http.ResponseWriter, r *http.Request) {
	s := c.signedIn(w, r)
	if s == nil {
		return
	}
	if !c.cfg.Source.IsAdmin(s.who) {
		c.log.Info("console: admin page refused", "user", s.who.Identity.User)
		c.render(w, r, http.StatusForbidden, "message", page{Title: "Not allowed",
			Message: fmt.Sprintf("You (%s) are not in an admin group of this relay: the admin page shows every cluster's grants and the tunnel audit log.", s.who.Identity.User),
			Hint:    "The relay's operator names the admin groups with tether-relay serve --admin-group."})
		return
	}
	grants, err := c.cfg.Source.Grants(r.Context())
	if err != nil {
		c.log.Error("console: grants", "error", err)
		c.render(w, r, http.StatusInternalServerError, "message", page{Title: "Error", Message: "The relay could not read its grants: try again."})
		return
	}
	c.render(w, r, http.StatusOK, "admin", page{Title: "Administration", Grants: grants, Audit: c.cfg.Source.Audit()})
}

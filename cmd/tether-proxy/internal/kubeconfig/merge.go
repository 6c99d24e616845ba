package kubeconfig

import (
	"errors"
	"fmt"
	"os"
	goruntime "runtime"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// CurrentContext says whether Write makes its context the current one.
type CurrentContext int

const (
	// CurrentNever leaves current-context as it is (the zero value).
	CurrentNever CurrentContext = iota
	// CurrentIfUnset sets it when the files set none.
	CurrentIfUnset
	// CurrentAlways sets it.
	CurrentAlways
)

// Config is what Write merges, and where.
type Config struct {
	// Path is the kubeconfig file to write (--kubeconfig). Empty: the files
	// kubectl uses, every file of $KUBECONFIG, else HomeFile.
	Path string
	// HomeFile is the file used when Path and $KUBECONFIG are empty.
	// Empty: clientcmd.RecommendedHomeFile (~/.kube/config).
	HomeFile string
	// Context is the name of the context to write (required). Its cluster
	// and user entries take the same name when it is free or tether's own
	// to replace, else the first such of NAME-tether, NAME-tether-2, ….
	Context string
	// Cluster and User are the entries to write (required); Write adds the
	// mark and leaves these as they are.
	Cluster *clientcmdapi.Cluster
	User    *clientcmdapi.AuthInfo
	// Mode is the mode of the entries (required).
	Mode Mode
	// Relay and ClusterName are recorded in the mark.
	Relay, ClusterName string
	// Overwrite lets Write replace a context tether would otherwise leave:
	// the user's, one written for the other mode, one of a tether-proxy that
	// is still running. It never repoints a cluster or user entry that is
	// not tether's own (the context gets entries of its own instead).
	Overwrite bool
	// Secret says the user entry holds a secret (a tether-proxy run's client
	// key, the only thing keeping other local users from its proxy): Write
	// refuses to put it in a file that group or others may read or write.
	Secret bool
	// Current says whether the context becomes the current one.
	Current CurrentContext
	// LockTimeout is how long to wait while another writer holds a file's
	// lock. Zero: DefaultLockTimeout.
	LockTimeout time.Duration
	// ProbeTimeout bounds the check of whether the tether-proxy run that
	// wrote a context still serves. Zero: 2 s.
	ProbeTimeout time.Duration
}

// Validate checks that the required fields are set.
func (c *Config) Validate() error {
	switch {
	case c.Context == "":
		return errors.New("kubeconfig: no context name")
	case c.Cluster == nil || c.User == nil:
		return errors.New("kubeconfig: no cluster or user entry to write")
	case c.Mode != ModeProxy && c.Mode != ModeEndpoint:
		return fmt.Errorf("kubeconfig: mode %q: want %q or %q", c.Mode, ModeProxy, ModeEndpoint)
	case c.LockTimeout < 0 || c.ProbeTimeout < 0:
		return errors.New("kubeconfig: negative timeout")
	}
	return nil
}

func (c *Config) pathOptions() *clientcmd.PathOptions {
	opts := clientcmd.NewDefaultPathOptions()
	if c.HomeFile != "" {
		opts.GlobalFile = c.HomeFile
	}
	opts.LoadingRules.ExplicitPath = c.Path
	return opts
}

func (c *Config) open() (*files, error) {
	t := c.LockTimeout
	if t == 0 {
		t = DefaultLockTimeout
	}
	return openFiles(c.pathOptions(), t)
}

func (c *Config) probeTimeout() time.Duration {
	if c.ProbeTimeout == 0 {
		return 2 * time.Second
	}
	return c.ProbeTimeout
}

// Written says what Write wrote; Remove takes it out again.
type Written struct {
	// Context, Cluster and User are the names of the entries written.
	Context, Cluster, User string
	// File is the file holding the context.
	File string
	// Replaced is what the context replaced: "" (nothing: a new context),
	// "own" (tether's own, of this mode, or of a tether-proxy that has
	// gone) or, with Overwrite, a description of what it was.
	Replaced string
	// MadeCurrent reports whether Write made it the current context.
	MadeCurrent bool
	// Notes are lines worth telling the user (entries of its own, and why).
	Notes []string

	cfg     Config
	run     string
	restore *clientcmdapi.Context // what Remove puts back, if anything
}

// Write merges the context, cluster and user of c into the kubeconfig
// files, or refuses with an error that says what is in the way and what
// to do; a refused or failed Write changes no file.
func Write(c Config) (*Written, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	f, err := c.open()
	if err != nil {
		return nil, err
	}
	defer f.close()
	cfg, err := f.load()
	if err != nil {
		return nil, err
	}
	m := Mark{Writer: Writer, Mode: c.Mode, Run: newRun(), Relay: c.Relay, Cluster: c.ClusterName}
	if c.Mode == ModeProxy {
		m.PID, m.Host = os.Getpid(), hostname()
	}
	w := &Written{Context: c.Context, cfg: c, run: m.Run}
	n := c.Context

	old := cfg.Contexts[n]
	var stale []string // entries of a replaced tether context, to delete once unused
	if old != nil {
		om := markOf(old.Extensions)
		switch {
		case c.replaceable(cfg, om):
			w.Replaced = "own"
			if cl := cfg.Clusters[old.Cluster]; cl != nil && runOf(cl.Extensions) == om.Run {
				stale = append(stale, "cluster:"+old.Cluster)
			}
			if u := cfg.AuthInfos[old.AuthInfo]; u != nil && runOf(u.Extensions) == om.Run {
				stale = append(stale, "user:"+old.AuthInfo)
			}
		case !c.Overwrite:
			return nil, c.refusal(cfg, f, old, om)
		default:
			w.Replaced = c.describeContext(cfg, old, om)
			if om == nil || om.Mode == ModeEndpoint {
				w.restore = old.DeepCopy()
			}
		}
	}

	// The cluster and user entries: never one another context uses, never
	// one that is not tether's own to replace.
	clusterName, note, err := c.entryName(cfg, "cluster")
	if err != nil {
		return nil, err
	}
	w.Notes = append(w.Notes, note...)
	userName, note, err := c.entryName(cfg, "user")
	if err != nil {
		return nil, err
	}
	w.Notes = append(w.Notes, note...)
	w.Cluster, w.User = clusterName, userName

	cl := c.Cluster.DeepCopy()
	cl.Extensions = withMark(cl.Extensions, m)
	cl.LocationOfOrigin = ""
	if prev := cfg.Clusters[clusterName]; prev != nil {
		cl.LocationOfOrigin = prev.LocationOfOrigin
	}
	cfg.Clusters[clusterName] = cl
	u := c.User.DeepCopy()
	u.Extensions = withMark(u.Extensions, m)
	u.LocationOfOrigin = ""
	if prev := cfg.AuthInfos[userName]; prev != nil {
		u.LocationOfOrigin = prev.LocationOfOrigin
	}
	cfg.AuthInfos[userName] = u
	if dest := f.origin(u.LocationOfOrigin); c.Secret && goruntime.GOOS != "windows" {
		if fi := f.modes[dest]; fi != nil && fi.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("kubeconfig %s has mode %04o: group or others could read the client key of context %s, the only thing that keeps other users of this machine from using this tether-proxy; run chmod 600 %s, or pass --kubeconfig a file of your own",
				dest, fi.Mode().Perm(), n, dest)
		}
	}
	ctx := &clientcmdapi.Context{Cluster: clusterName, AuthInfo: userName, Extensions: withMark(nil, m)}
	if old != nil {
		ctx.Namespace, ctx.LocationOfOrigin = old.Namespace, old.LocationOfOrigin
	}
	cfg.Contexts[n] = ctx
	w.File = f.origin(ctx.LocationOfOrigin)

	for _, s := range stale {
		kind, name, _ := strings.Cut(s, ":")
		if len(usersOf(cfg, kind, name, "")) > 0 {
			continue
		}
		if kind == "cluster" && name != clusterName {
			delete(cfg.Clusters, name)
		} else if kind == "user" && name != userName {
			delete(cfg.AuthInfos, name)
		}
	}
	switch {
	case c.Current == CurrentAlways, c.Current == CurrentIfUnset && cfg.CurrentContext == "":
		w.MadeCurrent = cfg.CurrentContext != n
		cfg.CurrentContext = n
	}
	if err := f.modify(cfg); err != nil {
		return nil, err
	}
	return w, nil
}

// entryName picks the name of the context's cluster or user entry (kind):
// the context's own name when it is free or tether's own to replace and no
// other context uses it, else the first such of NAME-tether, NAME-tether-2,
// …; with a note saying why when it is not the context's name.
func (c *Config) entryName(cfg *clientcmdapi.Config, kind string) (string, []string, error) {
	n := c.Context
	var why string
	for i := range 10 {
		name := n
		switch {
		case i == 1:
			name = n + "-tether"
		case i > 1:
			name = fmt.Sprintf("%s-tether-%d", n, i)
		}
		var ext map[string]runtime.Object
		var ok bool
		if kind == "cluster" {
			var e *clientcmdapi.Cluster
			if e, ok = cfg.Clusters[name]; ok {
				ext = e.Extensions
			}
		} else {
			var e *clientcmdapi.AuthInfo
			if e, ok = cfg.AuthInfos[name]; ok {
				ext = e.Extensions
			}
		}
		others := usersOf(cfg, kind, name, n)
		em := markOf(ext)
		if !ok || (em != nil && len(others) == 0 && c.entryReplaceable(cfg, em)) {
			if i == 0 {
				return name, nil, nil
			}
			return name, []string{fmt.Sprintf("the %s entry %s %s, so context %s has one of its own, %s", kind, n, why, n, name)}, nil
		}
		if i == 0 {
			switch {
			case len(others) > 0:
				why = "is also used by " + contextList(others)
			case em == nil:
				why = "is not tether's"
			default:
				why = "was written by " + em.Mode.describe()
			}
		}
	}
	return "", nil, fmt.Errorf("no free %s entry name for context %s: %s, %s-tether, … %s-tether-9 are all taken", kind, n, n, n, n)
}

// replaceable reports whether a context marked om (nil: the user's) is
// tether's own to replace without Overwrite: one of this mode written by
// tether-proxy kubeconfig, or one of a tether-proxy that has gone.
func (c *Config) replaceable(cfg *clientcmdapi.Config, om *Mark) bool {
	return om != nil && c.entryReplaceable(cfg, om)
}

// entryReplaceable is replaceable for an entry marked em.
func (c *Config) entryReplaceable(cfg *clientcmdapi.Config, em *Mark) bool {
	switch em.Mode {
	case ModeEndpoint:
		return c.Mode == ModeEndpoint
	case ModeProxy:
		return !c.running(cfg, em)
	}
	return false
}

// running reports whether the tether-proxy run of mark m still serves,
// probing the cluster entry it wrote.
func (c *Config) running(cfg *clientcmdapi.Config, m *Mark) bool {
	for _, cl := range cfg.Clusters {
		if runOf(cl.Extensions) == m.Run {
			return proxyRunning(cl, m, c.probeTimeout())
		}
	}
	return proxyRunning(nil, m, c.probeTimeout())
}

// usersOf returns the contexts other than except that use the cluster or
// user entry name, sorted.
func usersOf(cfg *clientcmdapi.Config, kind, name, except string) []string {
	var out []string
	for cn, ctx := range cfg.Contexts {
		if cn == except {
			continue
		}
		if (kind == "cluster" && ctx.Cluster == name) || (kind == "user" && ctx.AuthInfo == name) {
			out = append(out, cn)
		}
	}
	slices.Sort(out)
	return out
}

func contextList(names []string) string {
	if len(names) == 1 {
		return "context " + names[0]
	}
	return "contexts " + strings.Join(names, ", ")
}

// describeContext says what a context is, for refusals: who wrote it, its
// cluster and user, and which other contexts use those.
func (c *Config) describeContext(cfg *clientcmdapi.Config, ctx *clientcmdapi.Context, m *Mark) string {
	entry := func(kind, name string) string {
		s := kind + " " + name
		if others := usersOf(cfg, kind, name, c.Context); len(others) > 0 {
			s += ", also used by " + contextList(others)
		}
		return s
	}
	uses := fmt.Sprintf("it uses %s, and %s", entry("cluster", ctx.Cluster), entry("user", ctx.AuthInfo))
	switch {
	case m == nil:
		return "was not written by tether (" + uses + ")"
	case m.Mode == ModeEndpoint:
		return "was written by " + ModeEndpoint.describe()
	default:
		return fmt.Sprintf("belongs to a tether-proxy that is running (pid %d on %s)", m.PID, m.Host)
	}
}

// refusal is the error of a Write that would replace a context that is
// not tether's own to replace.
func (c *Config) refusal(cfg *clientcmdapi.Config, f *files, ctx *clientcmdapi.Context, m *Mark) error {
	what := fmt.Sprintf("context %s in %s %s", c.Context, f.origin(ctx.LocationOfOrigin), c.describeContext(cfg, ctx, m))
	var todo string
	switch {
	case m != nil && m.Mode == ModeProxy && c.Mode == ModeProxy:
		todo = "stop that tether-proxy, or choose another --context (and --port); --overwrite takes the context over"
	case m != nil && m.Mode == ModeProxy:
		todo = "stop that tether-proxy, or choose another --context; --overwrite takes the context over"
	case c.Mode == ModeProxy:
		todo = "run again with --overwrite to point it at this tether-proxy while it runs (it is put back as it was when tether-proxy exits), or choose another --context"
	default:
		todo = "run again with --overwrite to replace it, or choose another --context"
	}
	if m == nil {
		todo += "; the cluster and user entries stay as they are either way: tether writes entries of its own"
	}
	return fmt.Errorf("%s: %s", what, todo)
}

// Removal says what Remove did.
type Removal struct {
	// File is the file that held the context.
	File string
	// Removed lists the entries deleted ("context tether-prod", …).
	Removed []string
	// Restored is the context put back as it was before Write, if any.
	Restored string
	// Kept lists the entries of this run left in place, and why.
	Kept []string
}

// Remove takes out what Write wrote, as far as it is still this run's:
// an entry changed since, or used by another context, stays; a context
// Write replaced (with Overwrite) is put back.
func (w *Written) Remove() (*Removal, error) {
	f, err := w.cfg.open()
	if err != nil {
		return nil, err
	}
	defer f.close()
	cfg, err := f.load()
	if err != nil {
		return nil, err
	}
	r := &Removal{File: w.File}
	n := w.Context
	if cur := cfg.Contexts[n]; cur != nil && runOf(cur.Extensions) == w.run {
		r.File = f.origin(cur.LocationOfOrigin)
		if w.restore != nil {
			back := w.restore.DeepCopy()
			back.LocationOfOrigin = cur.LocationOfOrigin
			cfg.Contexts[n] = back
			r.Restored = "context " + n
		} else {
			delete(cfg.Contexts, n)
			r.Removed = append(r.Removed, "context "+n)
		}
	} else if cur != nil {
		r.Kept = append(r.Kept, "context "+n+" (changed since tether-proxy wrote it)")
	}
	if cl := cfg.Clusters[w.Cluster]; cl != nil && runOf(cl.Extensions) == w.run {
		if others := usersOf(cfg, "cluster", w.Cluster, ""); len(others) > 0 {
			r.Kept = append(r.Kept, "cluster "+w.Cluster+" (used by "+contextList(others)+")")
		} else {
			delete(cfg.Clusters, w.Cluster)
			r.Removed = append(r.Removed, "cluster "+w.Cluster)
		}
	}
	if u := cfg.AuthInfos[w.User]; u != nil && runOf(u.Extensions) == w.run {
		if others := usersOf(cfg, "user", w.User, ""); len(others) > 0 {
			r.Kept = append(r.Kept, "user "+w.User+" (used by "+contextList(others)+")")
		} else {
			delete(cfg.AuthInfos, w.User)
			r.Removed = append(r.Removed, "user "+w.User)
		}
	}
	if cfg.CurrentContext == n && cfg.Contexts[n] == nil {
		cfg.CurrentContext = ""
	}
	if err := f.modify(cfg); err != nil {
		return nil, err
	}
	return r, nil
}

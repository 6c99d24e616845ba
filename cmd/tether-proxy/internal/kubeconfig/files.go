package kubeconfig

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	clientcmdv1 "k8s.io/client-go/tools/clientcmd/api/v1"
	"sigs.k8s.io/yaml"
)

// DefaultLockTimeout is how long a write waits for another writer's lock.
const DefaultLockTimeout = 10 * time.Second

// files is a locked set of kubeconfig files (the loading precedence of
// clientcmd.PathOptions) with a private copy of each that exists, on which
// clientcmd.ModifyConfig works; commit puts the changed copies in place.
type files struct {
	opts   *clientcmd.PathOptions
	paths  []string          // the loading precedence, as named
	before map[string][]byte // path → its bytes when locked; absent: no file
	modes  map[string]os.FileInfo
	stage  string            // the private directory of the copies
	staged map[string]string // path → its copy
	real   map[string]string // copy → path
	locked []string
}

// openFiles locks the files of opts (as kubectl does, FILE.lock, waiting
// up to timeout), checks that each that exists is a kubeconfig, and copies
// them to a private directory.
func openFiles(opts *clientcmd.PathOptions, timeout time.Duration) (_ *files, err error) {
	f := &files{opts: opts, before: map[string][]byte{}, modes: map[string]os.FileInfo{}, staged: map[string]string{}, real: map[string]string{}}
	defer func() {
		if err != nil {
			f.close()
		}
	}()
	for _, p := range opts.GetLoadingPrecedence() {
		if p != "" && !slices.Contains(f.paths, p) {
			f.paths = append(f.paths, p)
		}
	}
	if len(f.paths) == 0 || opts.GetDefaultFilename() == "" {
		return nil, errors.New("no kubeconfig file to write: $KUBECONFIG names none")
	}
	// Sorted, as clientcmd.ModifyConfig locks, so that two writers never
	// wait for each other's second file.
	sorted := slices.Sorted(slices.Values(f.paths))
	for _, p := range sorted {
		if err := lock(p, timeout); err != nil {
			return nil, err
		}
		f.locked = append(f.locked, p)
	}
	if f.stage, err = os.MkdirTemp("", "tether-kubeconfig-"); err != nil {
		return nil, fmt.Errorf("a private directory for the kubeconfig being written: %w", err)
	}
	for i, p := range f.paths {
		copyPath := filepath.Join(f.stage, strconv.Itoa(i), filepath.Base(p))
		f.staged[p], f.real[copyPath] = copyPath, p
		b, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read kubeconfig %s: %w", p, err)
		}
		if err := checkKubeconfig(b); err != nil {
			return nil, fmt.Errorf("%s is not a kubeconfig (%w); tether-proxy leaves it as it is: point --kubeconfig (or $KUBECONFIG) at a kubeconfig file", p, err)
		}
		fi, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", p, err)
		}
		f.before[p], f.modes[p] = b, fi
		if err := os.MkdirAll(filepath.Dir(copyPath), 0o700); err != nil {
			return nil, fmt.Errorf("copy kubeconfig %s: %w", p, err)
		}
		if err := os.WriteFile(copyPath, b, 0o600); err != nil {
			return nil, fmt.Errorf("copy kubeconfig %s: %w", p, err)
		}
	}
	return f, nil
}

// close removes the copies and the locks.
func (f *files) close() {
	if f.stage != "" {
		_ = os.RemoveAll(f.stage)
	}
	for _, p := range f.locked {
		_ = os.Remove(lockName(p))
	}
	f.locked = nil
}

func lockName(path string) string { return path + ".lock" }

// lock creates path's lock file exclusively (the lock clientcmd.ModifyConfig
// and so kubectl take), waiting up to timeout while another writer holds it.
func lock(path string, timeout time.Duration) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("kubeconfig directory: %w", err)
	}
	deadline := time.Now().Add(timeout)
	for {
		l, err := os.OpenFile(lockName(path), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err == nil {
			return l.Close()
		}
		if !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("lock kubeconfig %s: %w", path, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kubeconfig %s is locked: %s has existed for %s (kubectl or another tether-proxy is writing the file; if neither is, remove it)",
				path, lockName(path), timeout)
		}
		time.Sleep(5*time.Millisecond + rand.N(20*time.Millisecond))
	}
}

// checkKubeconfig says why b is not a kubeconfig that clientcmd can write
// back without losing anything, or returns nil.
func checkKubeconfig(b []byte) error {
	if len(bytes.TrimSpace(b)) == 0 {
		return nil
	}
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		return fmt.Errorf("not YAML: %w", err)
	}
	var top any
	if err := json.Unmarshal(j, &top); err != nil {
		return fmt.Errorf("not YAML: %w", err)
	}
	m, ok := top.(map[string]any)
	switch {
	case top == nil:
		return nil // only comments
	case !ok:
		what := "scalar"
		if _, list := top.([]any); list {
			what = "list"
		}
		return fmt.Errorf("its top level is a %s, not a mapping", what)
	case m["kind"] != nil && m["kind"] != "Config":
		return fmt.Errorf("its kind is %v, not Config", m["kind"])
	case m["apiVersion"] != nil && m["apiVersion"] != "v1":
		return fmt.Errorf("its apiVersion is %v, not v1", m["apiVersion"])
	}
	if err := yaml.UnmarshalStrict(b, &clientcmdv1.Config{}); err != nil {
		if strings.Contains(err.Error(), "unknown field") {
			return fmt.Errorf("%w: writing it again would drop what clientcmd does not know", err)
		}
		return err
	}
	if _, err := clientcmd.Load(b); err != nil {
		return fmt.Errorf("clientcmd cannot read it: %w", err)
	}
	return nil
}

// access is the clientcmd.ConfigAccess of the copies: the loading
// precedence and the default file of the real files (which the lock keeps
// as they are), mapped to their copies.
func (f *files) access() clientcmd.ConfigAccess { return stagedAccess{f} }

type stagedAccess struct{ f *files }

func (a stagedAccess) GetLoadingPrecedence() []string {
	out := make([]string, len(a.f.paths))
	for i, p := range a.f.paths {
		out[i] = a.f.staged[p]
	}
	return out
}

func (a stagedAccess) GetStartingConfig() (*clientcmdapi.Config, error) {
	rules := &clientcmd.ClientConfigLoadingRules{Precedence: a.GetLoadingPrecedence(), DoNotResolvePaths: true}
	if a.IsExplicitFile() {
		rules.ExplicitPath = a.GetExplicitFile()
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).RawConfig()
	if errors.Is(err, fs.ErrNotExist) {
		return clientcmdapi.NewConfig(), nil
	}
	if err != nil {
		return nil, err
	}
	return &cfg, nil
}

func (a stagedAccess) GetDefaultFilename() string { return a.f.staged[a.f.opts.GetDefaultFilename()] }
func (a stagedAccess) IsExplicitFile() bool       { return a.f.opts.IsExplicitFile() }
func (a stagedAccess) GetExplicitFile() string    { return a.f.staged[a.f.opts.GetExplicitFile()] }

// load returns the merged configuration of the copies, with each entry's
// LocationOfOrigin naming its copy.
func (f *files) load() (*clientcmdapi.Config, error) {
	cfg, err := f.access().GetStartingConfig()
	if err != nil {
		return nil, fmt.Errorf("read kubeconfig %s: %w", f.describe(), err)
	}
	return cfg, nil
}

// modify applies cfg to the copies with clientcmd.ModifyConfig and puts
// every changed file in place.
func (f *files) modify(cfg *clientcmdapi.Config) error {
	if err := clientcmd.ModifyConfig(f.access(), *cfg, false); err != nil {
		return fmt.Errorf("merge into kubeconfig %s: %w", f.describe(), err)
	}
	return f.commit()
}

// describe names the files, for messages.
func (f *files) describe() string {
	if len(f.paths) == 1 {
		return f.paths[0]
	}
	return fmt.Sprintf("%v", f.paths)
}

// origin returns the real file of an entry's LocationOfOrigin, or the
// file new entries go to.
func (f *files) origin(loc string) string {
	if p, ok := f.real[loc]; ok {
		return p
	}
	return f.opts.GetDefaultFilename()
}

// commit replaces each file whose copy changed: a temporary file in the
// file's directory, synced, given the file's mode (0600 for a new file)
// and renamed over it. Every temporary file is written before any is
// renamed, so a full disk changes nothing.
func (f *files) commit() error {
	type pending struct{ tmp, target string }
	var todo []pending
	defer func() {
		for _, p := range todo {
			_ = os.Remove(p.tmp)
		}
	}()
	for _, p := range f.paths {
		after, err := os.ReadFile(f.staged[p])
		if errors.Is(err, fs.ErrNotExist) {
			continue // ModifyConfig never deletes a file
		}
		if err != nil {
			return fmt.Errorf("kubeconfig %s: %w", p, err)
		}
		before, existed := f.before[p]
		if existed && bytes.Equal(before, after) {
			continue
		}
		target := p
		if existed {
			// A symbolic link (a kubeconfig kept with dotfiles) stays one.
			if t, err := filepath.EvalSymlinks(p); err == nil {
				target = t
			}
		}
		tmp, err := writeTemp(target, after, f.modes[p])
		if err != nil {
			return fmt.Errorf("write kubeconfig %s: %w", p, err)
		}
		todo = append(todo, pending{tmp, target})
	}
	for i, p := range todo {
		if err := os.Rename(p.tmp, p.target); err != nil {
			return fmt.Errorf("write kubeconfig %s: %w", p.target, err)
		}
		todo[i].tmp = "" // renamed: nothing to remove
		syncDir(filepath.Dir(p.target))
	}
	return nil
}

// writeTemp writes b to a new temporary file next to target, with the
// mode (and owner, where it can) of fi, or 0600 when fi is nil.
func writeTemp(target string, b []byte, fi os.FileInfo) (name string, err error) {
	t, err := os.CreateTemp(filepath.Dir(target), "."+filepath.Base(target)+".tether-*")
	if err != nil {
		return "", err
	}
	defer func() {
		if err != nil {
			_ = t.Close()
			_ = os.Remove(t.Name())
		}
	}()
	mode := os.FileMode(0o600)
	if fi != nil {
		mode = fi.Mode().Perm()
		keepOwner(t, fi)
	}
	if err := t.Chmod(mode); err != nil {
		return "", err
	}
	if _, err := t.Write(b); err != nil {
		return "", err
	}
	if err := t.Sync(); err != nil {
		return "", err
	}
	if err := t.Close(); err != nil {
		return "", err
	}
	return t.Name(), nil
}

// syncDir makes a rename in dir durable, where the platform can.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
}

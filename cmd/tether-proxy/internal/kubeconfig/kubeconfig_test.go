package kubeconfig

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// The rules of merging are tested through the commands, in
// cmd/tether-proxy/merge_test.go; these are the file handling's.

func testConfig(path string) Config {
	return Config{Path: path, Context: "tether-prod", Mode: ModeEndpoint,
		Cluster: &clientcmdapi.Cluster{Server: "https://relay.example.com/v1/clusters/prod/k8s"},
		User:    &clientcmdapi.AuthInfo{Exec: &clientcmdapi.ExecConfig{APIVersion: "client.authentication.k8s.io/v1", Command: "/bin/tether-proxy"}}}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"no context", func(c *Config) { c.Context = "" }, "no context name"},
		{"no cluster", func(c *Config) { c.Cluster = nil }, "no cluster or user"},
		{"no mode", func(c *Config) { c.Mode = "" }, "mode"},
		{"negative timeout", func(c *Config) { c.LockTimeout = -1 }, "negative"},
	} {
		c := testConfig("x")
		tc.edit(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", tc.name, err, tc.want)
		}
	}
}

// TestLock: a lock held by another writer (kubectl's FILE.lock) is waited
// for; one that stays is reported, naming the file to remove.
func TestLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config")
	if err := os.WriteFile(lockName(path), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	go func() { time.Sleep(300 * time.Millisecond); _ = os.Remove(lockName(path)) }()
	if _, err := Write(testConfig(path)); err != nil {
		t.Fatalf("with a lock released after 300 ms: %v", err)
	}
	if _, err := os.Stat(lockName(path)); err == nil {
		t.Fatal("the lock file stayed")
	}

	before, _ := os.ReadFile(path)
	if err := os.WriteFile(lockName(path), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	c := testConfig(path)
	c.Context, c.LockTimeout = "other", 200*time.Millisecond
	_, err := Write(c)
	if err == nil || !strings.Contains(err.Error(), "kubeconfig "+path+" is locked: "+lockName(path)) || !strings.Contains(err.Error(), "remove it") {
		t.Fatalf("with a lock that stays: %v", err)
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Fatal("the file changed without the lock")
	}
	if _, err := os.Stat(lockName(path)); err != nil {
		t.Fatal("another writer's lock file was removed")
	}
}

// TestSymlink: a kubeconfig that is a symbolic link stays one, and the
// file it points at is written.
func TestSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "dotfiles", "kubeconfig")
	if err := os.MkdirAll(filepath.Dir(target), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(target, []byte("apiVersion: v1\nkind: Config\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "config")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if _, err := Write(testConfig(link)); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("%s is no longer a symbolic link: %v %v", link, fi.Mode(), err)
	}
	got, err := clientcmd.LoadFromFile(target)
	if err != nil || got.Contexts["tether-prod"] == nil {
		t.Fatalf("%s: %v %+v", target, err, got)
	}
	if fi, _ := os.Stat(target); fi.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v, want 0640 kept", fi.Mode())
	}
}

// TestMark: the entries carry tether's mark, readable back from the file;
// others' extensions on the user's entries survive the write.
func TestMark(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config")
	other := "apiVersion: v1\nkind: Config\nclusters:\n- name: mk\n  cluster:\n    server: https://mk\n    extensions:\n    - name: cluster_info\n      extension: {provider: minikube.sigs.k8s.io}\n"
	if err := os.WriteFile(path, []byte(other), 0o600); err != nil {
		t.Fatal(err)
	}
	c := testConfig(path)
	c.Relay, c.ClusterName = "https://relay.example.com", "prod"
	w, err := Write(c)
	if err != nil {
		t.Fatal(err)
	}
	got, err := clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, ext := range []map[string]runtime.Object{got.Clusters["tether-prod"].Extensions, got.AuthInfos["tether-prod"].Extensions, got.Contexts["tether-prod"].Extensions} {
		m := markOf(ext)
		if m == nil || m.Mode != ModeEndpoint || m.Run != w.run || m.Relay != c.Relay || m.Cluster != "prod" || m.PID != 0 {
			t.Fatalf("mark %+v", m)
		}
	}
	if got.Clusters["mk"].Extensions["cluster_info"] == nil || markOf(got.Clusters["mk"].Extensions) != nil {
		t.Fatalf("the user's cluster entry: %+v", got.Clusters["mk"])
	}
}

func TestCheckKubeconfig(t *testing.T) {
	for _, tc := range []struct{ content, want string }{
		{"", ""},
		{"\n  \n", ""},
		{"# only a comment\n", ""},
		{"{}", ""},
		{"apiVersion: v1\nkind: Config\npreferences: {}\nclusters: []\n", ""},
		{"foo: bar\n", `unknown field "foo"`},
		{"42\n", "scalar"},
		{"kind: List\n", "kind is List"},
		{"apiVersion: v2\nkind: Config\n", "apiVersion is v2"},
		{"clusters:\n- name: a\n  name: b\n", `key "name" already set`},
	} {
		err := checkKubeconfig([]byte(tc.content))
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%q: %v, want %q", tc.content, err, tc.want)
		}
	}
}

package main

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/tether-k8s/tether/core/registry"
	etcdfix "github.com/tether-k8s/tether/fixtures/etcd"
)

func writeKEK(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	path := filepath.Join(t.TempDir(), "kek")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestStoreFlags(t *testing.T) {
	kek := writeKEK(t)
	open := filepath.Join(t.TempDir(), "open-kek")
	if err := os.WriteFile(open, make([]byte, 32), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string // in the error; empty: none
		kind registry.Store
	}{
		{"default is bbolt", nil, "", registry.StoreBbolt},
		{"etcd", []string{"--store", "etcd", "--etcd-endpoints", "https://e0:2379,https://e1:2379", "--ca-key-encryption-key-file", kek}, "", registry.StoreEtcd},
		{"etcd needs a KEK", []string{"--store", "etcd", "--etcd-endpoints", "https://e0:2379"}, "needs --ca-key-encryption-key-file", ""},
		{"a KEK others may read", []string{"--store", "etcd", "--etcd-endpoints", "https://e0:2379", "--ca-key-encryption-key-file", open}, "chmod 600", ""},
		{"etcd needs endpoints", []string{"--store", "etcd", "--ca-key-encryption-key-file", kek}, "Endpoints is empty", ""},
		{"etcd flags without --store etcd", []string{"--etcd-endpoints", "https://e0:2379"}, "need --store etcd", ""},
		{"bad prefix", []string{"--store", "etcd", "--etcd-endpoints", "https://e0:2379", "--ca-key-encryption-key-file", kek, "--etcd-prefix", "tether"}, "must start and end with /", ""},
		{"unknown store", []string{"--store", "consul"}, `--store "consul"`, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var o storeOptions
			fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
			o.addFlags(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			cfg, err := o.config("relay.db", nil)
			switch {
			case tc.want == "" && err != nil:
				t.Fatal(err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			case tc.want == "" && cfg.Store != tc.kind:
				t.Fatalf("store %q, want %q", cfg.Store, tc.kind)
			}
		})
	}
}

// tether-relay store migrate moves a bbolt relay to etcd; the cluster
// commands then work on etcd; a second migrate is refused without
// --overwrite.
func TestStoreMigrateCommand(t *testing.T) {
	if _, err := etcdfix.Binary(""); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	etcd, err := etcdfix.Start(etcdfix.Config{Members: 1, TLS: true, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Stop)
	dir := t.TempDir()
	data := filepath.Join(dir, "relay.db")
	reg, err := registry.Open(registry.Config{Path: data})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.CreateCluster("prod"); err != nil {
		t.Fatal(err)
	}
	caPEM := reg.CAPEM()
	_ = reg.Close()

	cert, key, ca := etcd.ClientTLS()
	etcdFlags := []string{"--etcd-endpoints", strings.Join(etcd.Endpoints(), ","), "--etcd-cert", cert, "--etcd-key", key, "--etcd-ca", ca,
		"--etcd-prefix", "/tether/test/", "--ca-key-encryption-key-file", writeKEK(t)}
	run := func(args ...string) (string, error) { return runRelay(t, args...) }
	out, err := run(append([]string{"store", "migrate", "--from", "bbolt", data, "--to", "etcd"}, etcdFlags...)...)
	if err != nil || !strings.Contains(out, "migrated 1 clusters and 1 join tokens") {
		t.Fatalf("migrate: %v\n%s", err, out)
	}
	out, err = run(append([]string{"--data", filepath.Join(dir, "other.db"), "--store", "etcd", "cluster", "list"}, etcdFlags...)...)
	if err != nil || !strings.Contains(out, "prod") {
		t.Fatalf("cluster list on etcd: %v\n%s", err, out)
	}
	out, err = run(append([]string{"--data", filepath.Join(dir, "other.db"), "--store", "etcd", "ca"}, etcdFlags...)...)
	if err != nil || out != string(caPEM) {
		t.Fatalf("ca on etcd: %v\n%s", err, out)
	}
	if _, err = run(append([]string{"store", "migrate", "--from", "bbolt", data, "--to", "etcd"}, etcdFlags...)...); err == nil || !strings.Contains(err.Error(), "--overwrite") {
		t.Fatalf("second migrate = %v, want a refusal naming --overwrite", err)
	}
	if out, err = run(append([]string{"store", "migrate", "--overwrite", "--from", "bbolt", data, "--to", "etcd"}, etcdFlags...)...); err != nil {
		t.Fatalf("migrate --overwrite: %v\n%s", err, out)
	}
	if _, err = run("store", "migrate", "--from", "etcd", "--to", "etcd"); err == nil || !strings.Contains(err.Error(), "different kinds") {
		t.Fatalf("etcd to etcd = %v, want a refusal", err)
	}
}

package registry_test

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tether-k8s/tether/core/policy"
	"github.com/tether-k8s/tether/core/registry"
)

// A bbolt relay moves to etcd with nothing lost: the CA, clusters with
// their credentials and policies, join tokens still valid. And back.
func TestMigrateBboltToEtcdLosesNothing(t *testing.T) {
	src := open(t)
	cert := src.join(t, mustCreate(t, src, "prod"))
	_, key := csr(t, "prod")
	renewed, err := src.renewWith(t, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.reg.UpdatePolicy("prod", func(p policy.Policy) (policy.Policy, error) {
		return p.Add(policy.Policy{Groups: []string{"oidc:ops"}, Rules: []string{`user.username == "oidc:bob"`}}), nil
	}); err != nil {
		t.Fatal(err)
	}
	pending := mustCreate(t, src, "staging")
	mustCreate(t, src, "gone")
	if err := src.reg.DeleteCluster("gone"); err != nil {
		t.Fatal(err)
	}
	wantCA := string(src.reg.CAPEM())
	want, _ := src.reg.Clusters()
	if err := src.reg.Close(); err != nil {
		t.Fatal(err)
	}

	dst := &fixture{kind: "etcd", clk: src.clk, logs: &logBuffer{}, etcd: sharedEtcd(t), prefix: testPrefix(t), kek: testKEK(t)}
	ctx := context.Background()
	rep, err := registry.Migrate(ctx, src.config(), dst.config(), registry.MigrateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Clusters != 2 || rep.JoinTokens != 1 {
		t.Fatalf("migrated %+v, want 2 clusters and 1 token", rep)
	}
	dst.reopen(t)
	if string(dst.reg.CAPEM()) != wantCA {
		t.Fatal("the CA changed in the migration")
	}
	got, _ := dst.reg.Clusters()
	if a, b := mustJSON(t, want), mustJSON(t, got); a != b {
		t.Fatalf("clusters after the migration:\n%s\nwant\n%s", b, a)
	}
	if _, err := dst.reg.VerifyPeer(renewed); err != nil {
		t.Fatalf("a credential issued before the migration: %v", err)
	}
	dst.join(t, pending)
	_, key2 := csr(t, "prod")
	if _, err := dst.renewWith(t, renewed, key2); err != nil {
		t.Fatalf("renewing a credential issued before the migration: %v", err)
	}
	// The renewal chain came along: the first certificate, renewed before
	// the migration, is recognised when presented again with another key.
	_, key3 := csr(t, "prod")
	if _, err := dst.renewWith(t, cert, key3); !errors.Is(err, registry.ErrCredentialReused) {
		t.Fatalf("second renewal of a certificate renewed before the migration = %v, want ErrCredentialReused", err)
	}
	_ = dst.reg.Close()

	// Not over a non-empty prefix, unless asked.
	if _, err := registry.Migrate(ctx, src.config(), dst.config(), registry.MigrateOptions{}); !errors.Is(err, registry.ErrStoreNotEmpty) || !strings.Contains(err.Error(), "--overwrite") {
		t.Fatalf("migrating over a registry = %v, want ErrStoreNotEmpty naming --overwrite", err)
	}
	if _, err := registry.Migrate(ctx, src.config(), dst.config(), registry.MigrateOptions{Overwrite: true}); err != nil {
		t.Fatal(err)
	}
	dst.reopen(t)
	got, _ = dst.reg.Clusters()
	if a, b := mustJSON(t, want), mustJSON(t, got); a != b {
		t.Fatalf("clusters after --overwrite:\n%s\nwant\n%s", b, a)
	}
	_ = dst.reg.Close()

	// And back to a bbolt file.
	back := &fixture{kind: "bbolt", clk: src.clk, logs: &logBuffer{}, path: filepath.Join(t.TempDir(), "back.db")}
	if _, err := registry.Migrate(ctx, dst.config(), back.config(), registry.MigrateOptions{}); err != nil {
		t.Fatal(err)
	}
	back.reopen(t)
	if string(back.reg.CAPEM()) != wantCA {
		t.Fatal("the CA changed on the way back")
	}
	if _, err := back.reg.VerifyPeer(renewed); err != nil {
		t.Fatal(err)
	}
}

// A migration that did not finish leaves a mark: no relay opens that
// store, and it is no source either.
func TestHalfMigratedStoreIsRefused(t *testing.T) {
	f := openOn(t, "etcd")
	_ = f.reg.Close()
	cli, err := f.etcd.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(context.Background(), f.prefix+"meta/migrating", "from a test"); err != nil {
		t.Fatal(err)
	}
	if _, err := registry.Open(f.config()); err == nil || !strings.Contains(err.Error(), "migration that did not finish") {
		t.Fatalf("Open of a half-migrated store = %v, want a refusal", err)
	}
	dst := open(t)
	_ = dst.reg.Close()
	if _, err := registry.Migrate(context.Background(), f.config(), dst.config(), registry.MigrateOptions{Overwrite: true}); err == nil || !strings.Contains(err.Error(), "did not finish") {
		t.Fatalf("Migrate from a half-migrated store = %v, want a refusal", err)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

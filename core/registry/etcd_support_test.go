package registry_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tether-k8s/tether/core/registry"
	etcdfix "github.com/tether-k8s/tether/fixtures/etcd"
)

// The tests' shared etcd: three members on loopback, started by the first
// test that needs it and stopped after the last. Each test has a prefix of
// its own. Tests that kill members start a cluster of their own.
var shared struct {
	once sync.Once
	c    *etcdfix.Cluster
	err  error
	dir  string
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.c != nil {
		shared.c.Stop()
	}
	if shared.dir != "" {
		_ = os.RemoveAll(shared.dir)
	}
	os.Exit(code)
}

// requireEtcdBinary skips without the fixture's etcd binary, except in CI
// (CI is set), where its absence fails the test.
func requireEtcdBinary(t *testing.T) {
	t.Helper()
	if _, err := etcdfix.Binary(""); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%v: the etcd store's tests need it", err)
		}
		t.Skipf("%v: skipping the etcd store's tests", err)
	}
}

func sharedEtcd(t *testing.T) *etcdfix.Cluster {
	t.Helper()
	requireEtcdBinary(t)
	shared.once.Do(func() {
		shared.dir, shared.err = os.MkdirTemp("", "tether-registry-etcd-")
		if shared.err == nil {
			shared.c, shared.err = etcdfix.Start(etcdfix.Config{Members: 3, Dir: shared.dir})
		}
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.c
}

// ownEtcd starts a cluster for one test, stopped when it ends.
func ownEtcd(t *testing.T, tls bool) *etcdfix.Cluster {
	t.Helper()
	requireEtcdBinary(t)
	c, err := etcdfix.Start(etcdfix.Config{Members: 3, TLS: tls, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	return c
}

func testPrefix(t *testing.T) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "/test/" + hex.EncodeToString(b) + "/"
}

func testKEK(t *testing.T) registry.KeyEncryptionKey {
	t.Helper()
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	k, err := registry.NewKeyEncryptionKey(b)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// etcdKVs returns every key and value under prefix.
func etcdKVs(t *testing.T, c *etcdfix.Cluster, prefix string) map[string][]byte {
	t.Helper()
	cli, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, kv := range resp.Kvs {
		out[string(kv.Key)] = kv.Value
	}
	return out
}

// logBuffer is a buffer that several goroutines log to.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

package registry_test

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tether-k8s/tether/core/policy"
	"github.com/tether-k8s/tether/core/registry"
)

// replica opens another registry on f's store, as another relay replica
// would: its own etcd client, the same prefix and key-encryption key.
func (f *fixture) replica(t *testing.T) *registry.Registry {
	t.Helper()
	reg, err := registry.Open(f.config())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	return reg
}

// A join token presented to N replicas at the same instant is consumed by
// exactly one: the others are refused, clearly.
func TestEtcdJoinTokenIsConsumedExactlyOnce(t *testing.T) {
	f := openOn(t, "etcd")
	const replicas, rounds = 8, 5
	regs := []*registry.Registry{f.reg}
	for range replicas - 1 {
		regs = append(regs, f.replica(t))
	}
	tok := mustCreate(t, f, "prod")
	for round := range rounds {
		if round > 0 {
			tok = f.rotate(t, "prod")
		}
		csrs := make([][]byte, replicas)
		for i := range csrs {
			csrs[i], _ = csr(t, "prod")
		}
		var (
			start = make(chan struct{})
			wg    sync.WaitGroup
			mu    sync.Mutex
			won   int
			errs  []error
		)
		for i, reg := range regs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				_, err := reg.Join(tok, csrs[i])
				mu.Lock()
				defer mu.Unlock()
				if err == nil {
					won++
				} else {
					errs = append(errs, err)
				}
			}()
		}
		close(start)
		wg.Wait()
		if won != 1 {
			t.Fatalf("round %d: %d of %d replicas consumed the token, want exactly 1 (errors: %v)", round, won, replicas, errs)
		}
		for _, err := range errs {
			if !errors.Is(err, registry.ErrInvalidJoinToken) || !strings.Contains(err.Error(), "already used") {
				t.Fatalf("round %d: a losing replica got %v, want ErrInvalidJoinToken", round, err)
			}
		}
		c, err := f.reg.Cluster("prod")
		if err != nil {
			t.Fatal(err)
		}
		if n := len(c.Credentials); n != 1 {
			t.Fatalf("round %d: %d credentials after one join, want 1", round, n)
		}
	}
	t.Logf("join race: %d rounds of %d replicas at once, exactly one join each", rounds, replicas)
}

// waitChange reads ch until a change of cluster and kind arrives.
func waitChange(t *testing.T, ch <-chan registry.Change, cluster string, kind registry.ChangeKind) registry.Change {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case c, ok := <-ch:
			if !ok {
				t.Fatal("the change feed closed")
			}
			if c.Cluster == cluster && c.Kind == kind {
				return c
			}
		case <-timeout:
			t.Fatalf("no %s change of cluster %s within 10s", kind, cluster)
		}
	}
}

// Rotate, delete, policy changes, renewals and theft made on one replica
// reach another within one watch round trip, on its change feed and in
// what its VerifyPeer and Cluster answer. The propagation time is logged.
func TestEtcdChangesReachOtherReplicas(t *testing.T) {
	f := openOn(t, "etcd")
	b := f.replica(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	feed := b.Changes(ctx)

	tok := mustCreate(t, f, "prod")
	waitChange(t, feed, "prod", registry.ChangeCreated)
	cert := f.join(t, tok)
	waitChange(t, feed, "prod", registry.ChangeIssued)
	if _, err := b.VerifyPeer(cert); err != nil {
		t.Fatalf("replica B refuses a credential A issued: %v", err)
	}

	// Policy: measure write-to-event over many changes.
	var lat []time.Duration
	for i := range 40 {
		user := "oidc:u" + string(rune('a'+i%26)) + strings.Repeat("x", i/26)
		start := time.Now()
		if _, err := f.reg.UpdatePolicy("prod", func(p policy.Policy) (policy.Policy, error) { return p.Add(policy.Policy{Users: []string{user}}), nil }); err != nil {
			t.Fatal(err)
		}
		waitChange(t, feed, "prod", registry.ChangePolicy)
		lat = append(lat, time.Since(start))
		c, _ := b.Cluster("prod")
		if !slices.Contains(c.Policy.Users, user) {
			t.Fatalf("replica B's policy lacks %s after the change event", user)
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("propagation (UpdatePolicy called on A to the event on B), %d changes: min %s, median %s, p90 %s, max %s",
		len(lat), lat[0], lat[len(lat)/2], lat[len(lat)*9/10], lat[len(lat)-1])

	// A renewal supersedes the old certificate on B too.
	_, key := csr(t, "prod")
	renewed, err := f.renewWith(t, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	ch := waitChange(t, feed, "prod", registry.ChangeRevoked)
	if !slices.Contains(ch.Serials, hexSerial(cert)) {
		t.Fatalf("the revoked change names %v, not the renewed certificate %s", ch.Serials, hexSerial(cert))
	}
	f.clk.Advance(registry.DefaultRenewalGrace)
	if _, err := b.VerifyPeer(cert); !errors.Is(err, registry.ErrCredentialRevoked) {
		t.Fatalf("replica B after the grace: VerifyPeer(renewed) = %v, want ErrCredentialRevoked", err)
	}
	if _, err := b.VerifyPeer(renewed); err != nil {
		t.Fatal(err)
	}

	// Theft detected on B revokes on A.
	_, other := csr(t, "prod")
	if _, err := b.Renew(cert, csrFor(t, other, "prod")); !errors.Is(err, registry.ErrCredentialReused) {
		t.Fatalf("second renewal with another key on B = %v, want ErrCredentialReused", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := f.reg.VerifyPeer(renewed); errors.Is(err, registry.ErrCredentialRevoked) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("replica A still accepts a chain B revoked for theft")
		}
		time.Sleep(5 * time.Millisecond)
	}

	// Rotate and delete.
	cert = f.join(t, f.rotate(t, "prod"))
	start := time.Now()
	f.rotate(t, "prod")
	for {
		// Skip the revocation of the stolen chain, still queued.
		if ch := waitChange(t, feed, "prod", registry.ChangeRevoked); slices.Contains(ch.Serials, hexSerial(cert)) {
			break
		}
	}
	t.Logf("propagation of a rotate: %s", time.Since(start))
	if _, err := b.VerifyPeer(cert); !errors.Is(err, registry.ErrCredentialRevoked) {
		t.Fatalf("replica B after rotate: %v, want ErrCredentialRevoked", err)
	}
	if err := f.reg.DeleteCluster("prod"); err != nil {
		t.Fatal(err)
	}
	waitChange(t, feed, "prod", registry.ChangeDeleted)
	if _, err := b.Cluster("prod"); !errors.Is(err, registry.ErrUnknownCluster) {
		t.Fatalf("replica B after delete: %v, want ErrUnknownCluster", err)
	}
}

func hexSerial(c *x509.Certificate) string { return hex.EncodeToString(c.SerialNumber.Bytes()) }

// The CA's private key is sealed in etcd; a wrong or missing
// key-encryption key is a clear error and never a new CA; keys rotate.
func TestEtcdCAKeyIsEncryptedAtRest(t *testing.T) {
	f := openOn(t, "etcd")
	caPEM := f.reg.CAPEM()
	kvs := etcdKVs(t, f.etcd, f.prefix)
	sealedKey := kvs[f.prefix+"meta/caKey"]
	if _, err := x509.ParsePKCS8PrivateKey(sealedKey); err == nil || !strings.Contains(string(sealedKey), `"kid":"`+f.kek.ID+`"`) {
		t.Fatalf("the CA key in etcd is not sealed with %s: %.80q", f.kek.ID, sealedKey)
	}
	_ = f.reg.Close()

	good := f.kek
	wrong := testKEK(t)
	f.kek = wrong
	if _, err := registry.Open(f.config()); !errors.Is(err, registry.ErrKeyEncryption) || !strings.Contains(err.Error(), good.ID) {
		t.Fatalf("Open with the wrong key-encryption key = %v, want ErrKeyEncryption naming %s", err, good.ID)
	}
	// A key with the right ID but other bytes.
	f.kek = registry.KeyEncryptionKey{ID: good.ID, Key: wrong.Key}
	if _, err := registry.Open(f.config()); !errors.Is(err, registry.ErrKeyEncryption) {
		t.Fatalf("Open with a forged key ID = %v, want ErrKeyEncryption", err)
	}
	cfg := f.config()
	cfg.Etcd.KeyEncryptionKeys = nil
	if _, err := registry.Open(cfg); err == nil || !strings.Contains(err.Error(), "--ca-key-encryption-key-file") {
		t.Fatalf("Open with no key-encryption key = %v, want the flag named", err)
	}
	if got := etcdKVs(t, f.etcd, f.prefix)[f.prefix+"meta/caKey"]; string(got) != string(sealedKey) {
		t.Fatal("a failed Open changed the stored CA key")
	}

	// Rotation: the new key first, the old one still accepted; the CA
	// key is sealed again with the new one, and the old one can go.
	f.kek = wrong
	cfg = f.config()
	cfg.Etcd.KeyEncryptionKeys = []registry.KeyEncryptionKey{wrong, good}
	reg, err := registry.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if string(reg.CAPEM()) != string(caPEM) {
		t.Fatal("a new CA after a key rotation")
	}
	_ = reg.Close()
	f.kek = wrong
	f.reopen(t)
	if string(f.reg.CAPEM()) != string(caPEM) {
		t.Fatal("a new CA after a key rotation")
	}
	_ = f.reg.Close()
	f.kek = good
	if _, err := registry.Open(f.config()); !errors.Is(err, registry.ErrKeyEncryption) {
		t.Fatalf("the retired key still opens the CA key: %v", err)
	}
}

// A prefix that holds clusters but no CA is refused, not given a new CA.
func TestEtcdNeverCreatesACAOverExistingClusters(t *testing.T) {
	f := openOn(t, "etcd")
	mustCreate(t, f, "prod")
	_ = f.reg.Close()
	cli, err := f.etcd.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx := context.Background()
	if _, err := cli.Delete(ctx, f.prefix+"meta/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	if _, err := registry.Open(f.config()); err == nil || !strings.Contains(err.Error(), "but no CA") {
		t.Fatalf("Open over clusters without a CA = %v, want a refusal", err)
	}
	if kvs := etcdKVs(t, f.etcd, f.prefix+"meta/"); len(kvs) != 0 {
		t.Fatalf("Open wrote %d meta keys: a new CA", len(kvs))
	}
}

// With etcd over TLS: one member killed changes nothing; all stopped,
// reads keep being served from memory and writes fail fast with
// ErrStoreUnavailable naming the store; restarted, writes resume and
// nothing was lost.
func TestEtcdSurvivesMemberLossAndOutage(t *testing.T) {
	cluster := ownEtcd(t, true)
	f := &fixture{kind: "etcd", clk: &clock{now: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)}, logs: &logBuffer{},
		etcd: cluster, prefix: testPrefix(t), kek: testKEK(t)}
	f.reopen(t)
	b := f.replica(t)
	cert := f.join(t, mustCreate(t, f, "prod"))
	if _, err := f.reg.UpdatePolicy("prod", func(p policy.Policy) (policy.Policy, error) {
		return p.Add(policy.Policy{Groups: []string{"oidc:ops"}}), nil
	}); err != nil {
		t.Fatal(err)
	}
	pending := mustCreate(t, f, "staging") // a token not yet used

	cluster.Kill(0)
	t.Log("member 0 killed")
	if _, err := f.reg.CreateCluster("one-down"); err != nil {
		t.Fatalf("a write with one member of three down: %v", err)
	}
	if _, err := b.VerifyPeer(cert); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Restart(0); err != nil {
		t.Fatal(err)
	}

	cluster.Stop()
	t.Log("every member stopped")
	waitFor(t, 15*time.Second, "the registry to notice etcd is down", func() bool { return !f.reg.StoreStatus().Available })
	for _, reg := range []*registry.Registry{f.reg, b} {
		if id, err := reg.VerifyPeer(cert); err != nil || id != "prod" {
			t.Fatalf("VerifyPeer with etcd down = %q, %v; want prod from memory", id, err)
		}
		c, err := reg.Cluster("prod")
		if err != nil || !slices.Contains(c.Policy.Groups, "oidc:ops") {
			t.Fatalf("Cluster with etcd down = %+v, %v; want the policy from memory", c, err)
		}
	}
	req, _ := csr(t, "staging")
	_, key := csr(t, "prod")
	writes := map[string]func() error{
		"create": func() error { _, err := f.reg.CreateCluster("new"); return err },
		"join":   func() error { _, err := f.reg.Join(pending, req); return err },
		"renew":  func() error { _, err := f.renewWith(t, cert, key); return err },
		"rotate": func() error { _, err := f.reg.Rotate("prod"); return err },
		"grant": func() error {
			_, err := f.reg.UpdatePolicy("prod", func(p policy.Policy) (policy.Policy, error) { return p.Add(policy.Policy{Users: []string{"x"}}), nil })
			return err
		},
		"delete": func() error { return f.reg.DeleteCluster("prod") },
	}
	for name, write := range writes {
		start := time.Now()
		err := write()
		took := time.Since(start)
		if !errors.Is(err, registry.ErrStoreUnavailable) || !strings.Contains(err.Error(), "etcd at https://127.0.0.1:") || !strings.Contains(err.Error(), "check that etcd is up") {
			t.Fatalf("%s with etcd down = %v, want ErrStoreUnavailable naming the store and what to do", name, err)
		}
		t.Logf("%s with etcd down refused in %s: %v", name, took.Round(time.Millisecond), err)
	}

	start := time.Now()
	for i := range 3 {
		if err := cluster.Restart(i); err != nil {
			t.Fatal(err)
		}
	}
	if err := cluster.WaitReady(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	var created error
	waitFor(t, 20*time.Second, "writes to resume", func() bool { _, created = f.reg.CreateCluster("after"); return created == nil })
	t.Logf("writes resumed %s after the members were started again", time.Since(start).Round(time.Millisecond))
	if _, err := f.reg.Join(pending, req); err != nil {
		t.Fatalf("a token issued before the outage: %v", err)
	}
	for _, reg := range []*registry.Registry{f.reg, b} {
		if _, err := reg.VerifyPeer(cert); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "replica B to see the cluster created after the outage", func() bool { _, err := b.Cluster("after"); return err == nil })
	f2 := *f
	_ = f.reg.Close()
	f2.reopen(t)
	cs, _ := f2.reg.Clusters()
	var ids []string
	for _, c := range cs {
		ids = append(ids, c.ID)
	}
	if want := []string{"after", "one-down", "prod", "staging"}; !slices.Equal(ids, want) {
		t.Fatalf("clusters after the outage: %v, want %v", ids, want)
	}
}

// A replica cut off from etcd while another revokes applies the
// revocation when its watch resumes; the time is logged.
func TestEtcdRevocationWhileCutOffAppliesOnResume(t *testing.T) {
	f := openOn(t, "etcd")
	cert := f.join(t, mustCreate(t, f, "prod"))
	p := newCutProxy(t, strings.TrimPrefix(f.etcd.Endpoints()[0], "http://"))
	cfg := f.config()
	cfg.Etcd.Endpoints = []string{"http://" + p.addr()}
	cut, err := registry.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cut.Close() })
	if _, err := cut.VerifyPeer(cert); err != nil {
		t.Fatal(err)
	}
	p.cut()
	f.rotate(t, "prod")
	time.Sleep(time.Second)
	if _, err := cut.VerifyPeer(cert); err != nil {
		t.Fatalf("the cut-off replica already knows of the rotation: the proxy does not cut: %v", err)
	}
	start := time.Now()
	p.restore()
	waitFor(t, 30*time.Second, "the cut-off replica to apply the rotation", func() bool {
		_, err := cut.VerifyPeer(cert)
		return errors.Is(err, registry.ErrCredentialRevoked)
	})
	t.Logf("a rotation made while a replica was cut off took effect %s after it could reach etcd again", time.Since(start).Round(time.Millisecond))

	// Again, and etcd compacts the revisions the replica missed: it
	// reloads, and still applies the rotation.
	cert = f.join(t, f.rotate(t, "prod"))
	waitFor(t, 10*time.Second, "the replica to see the new credential", func() bool { _, err := cut.VerifyPeer(cert); return err == nil })
	p.cut()
	f.rotate(t, "prod")
	// A later write, so that compacting at the current revision removes
	// the rotation's own event.
	mustCreate(t, f, "later")
	cli, err := f.etcd.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	resp, err := cli.Get(context.Background(), "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(context.Background(), resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	p.restore()
	waitFor(t, 30*time.Second, "the cut-off replica to reload and apply the rotation", func() bool {
		_, err := cut.VerifyPeer(cert)
		return errors.Is(err, registry.ErrCredentialRevoked)
	})
	if !strings.Contains(f.logs.String(), "reloaded the clusters from etcd") {
		t.Fatal("the replica applied the rotation without reloading: the compaction was not exercised")
	}
	t.Logf("after a compaction of what it missed, the replica reloaded and applied the rotation %s after it could reach etcd again", time.Since(start).Round(time.Millisecond))
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// cutProxy forwards TCP to an etcd member until cut: then it closes every
// connection and refuses new ones until restored.
type cutProxy struct {
	target string
	l      net.Listener
	mu     sync.Mutex
	down   bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{target: target, l: l, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() { _ = l.Close(); p.cut(); p.wg.Wait() })
	return p
}

func (p *cutProxy) addr() string { return p.l.Addr().String() }

func (p *cutProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.down {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go func() { defer p.wg.Done(); _, _ = io.Copy(up, c); _ = up.Close() }()
		go func() { defer p.wg.Done(); _, _ = io.Copy(c, up); _ = c.Close() }()
	}
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for c := range p.conns {
		_ = c.Close()
	}
	p.conns = map[net.Conn]struct{}{}
}

func (p *cutProxy) restore() {
	p.mu.Lock()
	p.down = false
	p.mu.Unlock()
}

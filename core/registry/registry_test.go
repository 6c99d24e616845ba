package registry_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tether-k8s/tether/core/clusterid"
	"github.com/tether-k8s/tether/core/registry"
	etcdfix "github.com/tether-k8s/tether/fixtures/etcd"
)

// clock is a settable fake clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

type fixture struct {
	reg  *registry.Registry
	clk  *clock
	logs *logBuffer
	// kind is "bbolt" or "etcd"; path is the bbolt file, prefix the etcd
	// key prefix.
	kind   string
	path   string
	prefix string
	etcd   *etcdfix.Cluster
	kek    registry.KeyEncryptionKey
}

// backends are the stores every behavioural test runs on.
var backends = []string{"bbolt", "etcd"}

// forBackends runs fn once per backend, as a subtest named after it.
func forBackends(t *testing.T, fn func(t *testing.T, open func(t *testing.T) *fixture)) {
	for _, kind := range backends {
		t.Run(kind, func(t *testing.T) {
			fn(t, func(t *testing.T) *fixture { return openOn(t, kind) })
		})
	}
}

// open opens a bbolt registry: for the tests of the file itself.
func open(t *testing.T) *fixture { return openOn(t, "bbolt") }

func openOn(t *testing.T, kind string) *fixture {
	t.Helper()
	f := &fixture{kind: kind, clk: &clock{now: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)}, logs: &logBuffer{}}
	switch kind {
	case "bbolt":
		f.path = filepath.Join(t.TempDir(), "registry.db")
	case "etcd":
		f.etcd = sharedEtcd(t)
		f.prefix = testPrefix(t)
		f.kek = testKEK(t)
	}
	f.reopen(t)
	return f
}

func (f *fixture) config() registry.Config {
	cfg := registry.Config{
		Path: f.path, Now: f.clk.Now, JoinTokenTTL: time.Hour, CredentialTTL: 24 * time.Hour, MaxCredentials: 2,
		Logger: slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if f.kind == "etcd" {
		cfg.Store = registry.StoreEtcd
		cfg.Etcd = registry.EtcdConfig{Endpoints: f.etcd.Endpoints(), Prefix: f.prefix, KeyEncryptionKeys: []registry.KeyEncryptionKey{f.kek}}
		cfg.Etcd.CertFile, cfg.Etcd.KeyFile, cfg.Etcd.CAFile = f.etcd.ClientTLS()
	}
	return cfg
}

func (f *fixture) reopen(t *testing.T) {
	t.Helper()
	reg, err := registry.Open(f.config())
	if err != nil {
		t.Fatal(err)
	}
	f.reg = reg
	t.Cleanup(func() { _ = reg.Close() })
}

// storedBytes returns everything the store holds, as raw bytes.
func (f *fixture) storedBytes(t *testing.T) []byte {
	t.Helper()
	if f.kind == "bbolt" {
		if err := f.reg.Close(); err != nil {
			t.Fatal(err)
		}
		raw, err := os.ReadFile(f.path)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	var out []byte
	for _, kv := range etcdKVs(t, f.etcd, f.prefix) {
		out = append(out, kv...)
	}
	return out
}

// csr returns a CSR for a new P-256 key whose subject and SANs claim the
// given cluster, and the key.
func csr(t *testing.T, claim string) ([]byte, crypto.Signer) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return csrFor(t, key, claim), key
}

func csrFor(t *testing.T, key crypto.Signer, claim string) []byte {
	t.Helper()
	u, _ := url.Parse("tether://cluster/" + claim)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: claim}, URIs: []*url.URL{u},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func parseCert(t *testing.T, pemBytes []byte) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(pemBytes)
	if b == nil {
		t.Fatal("no PEM block")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (f *fixture) join(t *testing.T, token string) *x509.Certificate {
	t.Helper()
	req, _ := csr(t, "ignored")
	cred, err := f.reg.Join(token, req)
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	return parseCert(t, cred.CertPEM)
}

func (f *fixture) rotate(t *testing.T, id string) string {
	t.Helper()
	tok, err := f.reg.Rotate(id)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func mustCreate(t *testing.T, f *fixture, id string) string {
	t.Helper()
	tok, err := f.reg.CreateCluster(id)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestJoinIssuesCredentialForTheTokensCluster(t *testing.T) {
	forBackends(t, func(t *testing.T, open func(t *testing.T) *fixture) {
		f := open(t)
		tokA := mustCreate(t, f, "cluster-a")
		mustCreate(t, f, "cluster-b")

		// The CSR claims cluster-b; the token is for cluster-a, and wins.
		req, _ := csr(t, "cluster-b")
		cred, err := f.reg.Join(tokA, req)
		if err != nil {
			t.Fatal(err)
		}
		cert := parseCert(t, cred.CertPEM)
		if cred.ClusterID != "cluster-a" || cert.Subject.CommonName != "cluster-a" {
			t.Fatalf("credential for %q (CN %q), want cluster-a", cred.ClusterID, cert.Subject.CommonName)
		}
		id, err := f.reg.VerifyPeer(cert)
		if err != nil || id != "cluster-a" {
			t.Fatalf("VerifyPeer = %q, %v; want cluster-a", id, err)
		}
		if !slicesEqual(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) || cert.IsCA {
			t.Fatalf("credential must be a client-auth leaf, got EKU %v IsCA %v", cert.ExtKeyUsage, cert.IsCA)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: pool(f.reg.CACertificate()), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, CurrentTime: f.clk.Now()}); err != nil {
			t.Fatalf("credential does not verify against the registry CA: %v", err)
		}
		if !bytes.Equal(cred.CAPEM, f.reg.CAPEM()) {
			t.Fatal("credential's CA differs from the registry's")
		}
	})
}

func slicesEqual[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func pool(c *x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c)
	return p
}

func TestJoinTokenRefusals(t *testing.T) {
	forBackends(t, func(t *testing.T, open func(t *testing.T) *fixture) {
		f := open(t)
		good := mustCreate(t, f, "prod")
		weakKey, err := rsa.GenerateKey(rand.Reader, 1024)
		if err != nil {
			t.Fatal(err)
		}
		goodCSR, _ := csr(t, "prod")
		tampered := bytes.Clone(goodCSR)
		tampered[len(tampered)-5] ^= 0xff

		tests := []struct {
			name  string
			token func() string
			csr   []byte
			want  error
		}{
			{"empty token", func() string { return "" }, goodCSR, registry.ErrInvalidJoinToken},
			{"no prefix", func() string { return strings.TrimPrefix(good, registry.JoinTokenPrefix) }, goodCSR, registry.ErrInvalidJoinToken},
			{"1 MB token", func() string { return registry.JoinTokenPrefix + strings.Repeat("A", 1<<20) }, goodCSR, registry.ErrInvalidJoinToken},
			{"token of dots", func() string { return registry.JoinTokenPrefix + "...." }, goodCSR, registry.ErrInvalidJoinToken},
			{"one character off", func() string { return good[:len(good)-1] + string(good[len(good)-1]^1) }, goodCSR, registry.ErrInvalidJoinToken},
			{"weak RSA key (consumes the token)", func() string { return good }, csrFor(t, weakKey, "prod"), registry.ErrBadCSR},
			{"replayed after a refused CSR", func() string { return good }, goodCSR, registry.ErrInvalidJoinToken},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				_, err := f.reg.Join(tc.token(), tc.csr)
				if !errors.Is(err, tc.want) {
					t.Fatalf("Join = %v, want %v", err, tc.want)
				}
			})
		}

		t.Run("tampered CSR signature", func(t *testing.T) {
			tok := f.rotate(t, "prod")
			if _, err := f.reg.Join(tok, tampered); !errors.Is(err, registry.ErrBadCSR) {
				t.Fatalf("Join = %v, want ErrBadCSR", err)
			}
		})

		t.Run("replayed after a successful join", func(t *testing.T) {
			tok := f.rotate(t, "prod")
			f.join(t, tok)
			req, _ := csr(t, "prod")
			if _, err := f.reg.Join(tok, req); !errors.Is(err, registry.ErrInvalidJoinToken) {
				t.Fatalf("second Join = %v, want ErrInvalidJoinToken", err)
			}
		})

		t.Run("expired", func(t *testing.T) {
			tok := f.rotate(t, "prod")
			f.clk.Advance(time.Hour)
			req, _ := csr(t, "prod")
			if _, err := f.reg.Join(tok, req); !errors.Is(err, registry.ErrJoinTokenExpired) || !strings.Contains(err.Error(), "tether-relay cluster rotate prod") {
				t.Fatalf("Join = %v, want ErrJoinTokenExpired saying how to get a new one", err)
			}
			if _, err := f.reg.Join(tok, req); !errors.Is(err, registry.ErrInvalidJoinToken) {
				t.Fatalf("Join after expiry = %v, want ErrInvalidJoinToken (consumed)", err)
			}
		})

		t.Run("cluster deleted before the token is used", func(t *testing.T) {
			tok := mustCreate(t, f, "short-lived")
			if err := f.reg.DeleteCluster("short-lived"); err != nil {
				t.Fatal(err)
			}
			req, _ := csr(t, "short-lived")
			if _, err := f.reg.Join(tok, req); !errors.Is(err, registry.ErrInvalidJoinToken) {
				t.Fatalf("Join = %v, want ErrInvalidJoinToken", err)
			}
		})

		if strings.Contains(f.logs.String(), strings.TrimPrefix(good, registry.JoinTokenPrefix)) {
			t.Fatal("a join token appears in the logs")
		}
	})
}

func TestTokensAreStoredHashed(t *testing.T) {
	forBackends(t, func(t *testing.T, open func(t *testing.T) *fixture) {
		f := open(t)
		tok := mustCreate(t, f, "prod")
		raw := f.storedBytes(t)
		if secret := strings.TrimPrefix(tok, registry.JoinTokenPrefix); bytes.Contains(raw, []byte(secret)) {
			t.Fatal("the join token is stored in clear in the registry's store")
		}
		if f.kind == "bbolt" {
			fi, err := os.Stat(f.path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Fatalf("registry file mode %v, want 0600", fi.Mode().Perm())
			}
		}
		_ = f.reg.Close()
		f.reopen(t)
		f.join(t, tok) // still usable after a restart
	})
}

func TestVerifyPeerRefusals(t *testing.T) {
	forBackends(t, func(t *testing.T, open func(t *testing.T) *fixture) {
		f := open(t)
		cert := f.join(t, mustCreate(t, f, "prod"))

		other := openOn(t, "bbolt") // another relay, another CA, same cluster name
		foreign := other.join(t, mustCreate(t, other, "prod"))
		if _, err := f.reg.VerifyPeer(foreign); err == nil || !strings.Contains(err.Error(), "not signed by this relay's CA") {
			t.Fatalf("VerifyPeer(foreign CA) = %v, want refusal", err)
		}

		rotated := f.join(t, mustCreate(t, f, "staging"))
		if _, err := f.reg.Rotate("staging"); err != nil {
			t.Fatal(err)
		}
		if _, err := f.reg.VerifyPeer(rotated); !errors.Is(err, registry.ErrCredentialRevoked) {
			t.Fatalf("VerifyPeer(rotated) = %v, want ErrCredentialRevoked", err)
		}

		deleted := f.join(t, mustCreate(t, f, "gone"))
		if err := f.reg.DeleteCluster("gone"); err != nil {
			t.Fatal(err)
		}
		if _, err := f.reg.VerifyPeer(deleted); !errors.Is(err, registry.ErrUnknownCluster) {
			t.Fatalf("VerifyPeer(deleted cluster) = %v, want ErrUnknownCluster", err)
		}

		if _, err := f.reg.VerifyPeer(cert); err != nil {
			t.Fatalf("VerifyPeer(valid) = %v", err)
		}
		f.clk.Advance(24 * time.Hour)
		if _, err := f.reg.VerifyPeer(cert); !errors.Is(err, registry.ErrCredentialExpired) {
			t.Fatalf("VerifyPeer(expired) = %v, want ErrCredentialExpired", err)
		}
	})
}

func TestCreateCluster(t *testing.T) {
	forBackends(t, func(t *testing.T, open func(t *testing.T) *fixture) {
		f := open(t)
		mustCreate(t, f, "prod")
		if _, err := f.reg.CreateCluster("prod"); !errors.Is(err, registry.ErrClusterExists) {
			t.Fatalf("duplicate create = %v, want ErrClusterExists", err)
		}
		for _, id := range []string{"Prod", "prod.", "../prod", "%70rod"} {
			if _, err := f.reg.CreateCluster(id); !errors.Is(err, clusterid.ErrInvalid) {
				t.Fatalf("CreateCluster(%q) = %v, want clusterid.ErrInvalid", id, err)
			}
		}
		cs, err := f.reg.Clusters()
		if err != nil || len(cs) != 1 || cs[0].ID != "prod" {
			t.Fatalf("Clusters() = %v, %v; want just prod", cs, err)
		}
	})
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  registry.Config
		want string
	}{
		{registry.Config{}, "Config.Path"},
		{registry.Config{Path: "x", JoinTokenTTL: -1}, "must not be negative"},
		{registry.Config{Path: "x", CredentialTTL: time.Minute}, "shorter than 10m"},
		{registry.Config{Path: "x", MaxCredentials: 100}, "Config.MaxCredentials"},
		{registry.Config{Path: "x", RenewalGrace: -1}, "must not be negative"},
		{registry.Config{Store: "sqlite", Path: "x"}, `want "bbolt" or "etcd"`},
		{registry.Config{Store: registry.StoreEtcd}, "Config.Etcd.Endpoints is empty"},
		{registry.Config{Store: registry.StoreEtcd, Etcd: registry.EtcdConfig{Endpoints: []string{"127.0.0.1:2379"}}}, "not an etcd client URL"},
		{registry.Config{Store: registry.StoreEtcd, Etcd: registry.EtcdConfig{Endpoints: []string{"https://e:2379"}, CertFile: "c"}}, "CertFile and KeyFile go together"},
		{registry.Config{Store: registry.StoreEtcd, Etcd: registry.EtcdConfig{Endpoints: []string{"http://e:2379"}, CAFile: "ca"}}, "no endpoint is https"},
		{registry.Config{Store: registry.StoreEtcd, Etcd: registry.EtcdConfig{Endpoints: []string{"https://e:2379"}, Prefix: "tether"}}, "must start and end with /"},
		{registry.Config{Store: registry.StoreEtcd, Etcd: registry.EtcdConfig{Endpoints: []string{"https://e:2379"}}}, "KeyEncryptionKeys is empty"},
		{registry.Config{Store: registry.StoreEtcd, Etcd: registry.EtcdConfig{Endpoints: []string{"https://e:2379"},
			KeyEncryptionKeys: []registry.KeyEncryptionKey{{ID: "a", Key: make([]byte, 16)}}}}, "has 16 bytes, want 32"},
		{registry.Config{Store: registry.StoreEtcd, Etcd: registry.EtcdConfig{Endpoints: []string{"https://e:2379"},
			KeyEncryptionKeys: []registry.KeyEncryptionKey{{ID: "a", Key: make([]byte, 32)}, {ID: "a", Key: make([]byte, 32)}}}}, "empty or repeated"},
		{registry.Config{Store: registry.StoreEtcd, Etcd: registry.EtcdConfig{Endpoints: []string{"https://e:2379"}, DialTimeout: -1,
			KeyEncryptionKeys: []registry.KeyEncryptionKey{{ID: "a", Key: make([]byte, 32)}}}}, "must not be negative"},
	} {
		if err := tc.cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
}

func TestServingCertificate(t *testing.T) {
	forBackends(t, func(t *testing.T, open func(t *testing.T) *fixture) {
		f := open(t)
		cert, err := f.reg.ServingCertificate([]string{"relay.example.com", "198.18.1.1"})
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		for _, host := range []string{"relay.example.com", "198.18.1.1"} {
			if _, err := leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: pool(f.reg.CACertificate()), CurrentTime: f.clk.Now()}); err != nil {
				t.Errorf("serving certificate for %s: %v", host, err)
			}
		}
		if _, err := f.reg.VerifyPeer(leaf); err == nil {
			t.Fatal("the relay's serving certificate was accepted as a cluster credential")
		}
		if _, err := f.reg.ServingCertificate(nil); err == nil {
			t.Fatal("a serving certificate for no host")
		}
	})
}

// A command that only reads or manages a relay's state, given a store with
// no relay in it (a mistyped --data, another --etcd-prefix), is refused and
// creates nothing; once a relay exists there, the same command opens it.
func TestMustExistRefusesAStoreWithNoRelay(t *testing.T) {
	for _, kind := range backends {
		t.Run(kind, func(t *testing.T) {
			f := &fixture{kind: kind, clk: &clock{now: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)}, logs: &logBuffer{}}
			switch kind {
			case "bbolt":
				f.path = filepath.Join(t.TempDir(), "typo.db")
			case "etcd":
				f.etcd, f.prefix, f.kek = sharedEtcd(t), testPrefix(t), testKEK(t)
			}
			cfg := f.config()
			cfg.MustExist = true
			if reg, err := registry.Open(cfg); !errors.Is(err, registry.ErrNoState) {
				if reg != nil {
					_ = reg.Close()
				}
				t.Fatalf("Open(MustExist) on an empty %s store: %v, want ErrNoState", kind, err)
			} else if !strings.Contains(err.Error(), "tether-relay serve") {
				t.Errorf("the refusal does not say how to create a relay: %v", err)
			}
			if kind == "bbolt" {
				if _, err := os.Stat(f.path); !errors.Is(err, fs.ErrNotExist) {
					t.Fatalf("the refused Open left a file at %s: %v", f.path, err)
				}
			} else if b := f.storedBytes(t); len(b) != 0 {
				t.Fatalf("the refused Open wrote %d bytes under %s", len(b), f.prefix)
			}
			f.reopen(t) // creates the relay, as serve does
			ca := f.reg.CAPEM()
			if err := f.reg.Close(); err != nil {
				t.Fatal(err)
			}
			reg, err := registry.Open(cfg)
			if err != nil {
				t.Fatalf("Open(MustExist) once the relay exists: %v", err)
			}
			defer reg.Close()
			if !bytes.Equal(reg.CAPEM(), ca) {
				t.Fatal("Open(MustExist) found another CA")
			}
		})
	}
}

package registry

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Defaults for Config's zero values.
const (
	DefaultJoinTokenTTL   = 24 * time.Hour
	DefaultCredentialTTL  = 30 * 24 * time.Hour
	DefaultCAValidity     = 10 * 365 * 24 * time.Hour
	DefaultMaxCredentials = 4
	// DefaultRenewalGrace is how long a certificate that was renewed is
	// still accepted for new sessions (see Config.RenewalGrace).
	DefaultRenewalGrace = 10 * time.Minute
)

// Defaults for EtcdConfig's zero values.
const (
	DefaultEtcdPrefix         = "/tether/relay/"
	DefaultEtcdDialTimeout    = 5 * time.Second
	DefaultEtcdRequestTimeout = 3 * time.Second
	DefaultEtcdHealthInterval = 2 * time.Second
)

// Store names a registry's backend.
type Store string

// The stores a registry can keep its state in.
const (
	// StoreBbolt is one go.etcd.io/bbolt file (Config.Path): one relay.
	StoreBbolt Store = "bbolt"
	// StoreEtcd is an etcd cluster (Config.Etcd): several relay replicas
	// share it.
	StoreEtcd Store = "etcd"
)

// Config configures a Registry.
type Config struct {
	// Store is where the registry lives. Empty means StoreBbolt.
	Store Store
	// Path is the bbolt file holding the registry; created with mode 0600
	// if missing. Required with StoreBbolt, ignored with StoreEtcd.
	Path string
	// Etcd is the etcd store. Required with StoreEtcd, ignored otherwise.
	Etcd EtcdConfig
	// JoinTokenTTL is how long a join token may be used. Zero means
	// DefaultJoinTokenTTL (24h).
	JoinTokenTTL time.Duration
	// CredentialTTL is the validity of a cluster's client certificate;
	// agents renew at two thirds of it. Zero means DefaultCredentialTTL
	// (30 days).
	CredentialTTL time.Duration
	// MaxCredentials is how many credentials a cluster may hold current
	// at once, one per join (a renewal replaces the certificate it
	// renews, and does not count); issuing one more drops the oldest.
	// Zero means DefaultMaxCredentials (4).
	MaxCredentials int
	// RenewalGrace is how long a certificate that was renewed is still
	// accepted for new sessions, so that a session dialled while the
	// renewal's answer travelled, or by a sibling that has not yet picked
	// up the new certificate, is not refused. A retry of the renewal with
	// the same new key (its answer was lost) is accepted for as long as
	// the new certificate is current, whatever the grace. Zero means
	// DefaultRenewalGrace (10m).
	RenewalGrace time.Duration
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
	// Logger receives one line per change to the registry. Nil discards.
	// Join tokens are never logged.
	Logger *slog.Logger
	// MustExist makes Open refuse, with ErrNoState, a store that holds no
	// relay yet (a bbolt file that does not exist, an etcd prefix with no
	// CA) instead of creating one. Commands that only read or manage a
	// relay's state set it, so a mistyped --data does not quietly create
	// a new relay with a new CA. False (serve, cluster create) creates.
	MustExist bool
}

// EtcdConfig says how to reach the etcd store and how to protect what the
// registry keeps there.
type EtcdConfig struct {
	// Endpoints are the etcd members' client URLs (https://host:2379).
	// Required.
	Endpoints []string
	// CertFile and KeyFile are the PEM client certificate and key the
	// registry presents to etcd. Both or neither.
	CertFile, KeyFile string
	// CAFile is the PEM CA that signed the etcd members' certificates.
	// Empty means the system roots. Used only for https endpoints.
	CAFile string
	// Prefix starts every key the registry writes, so several relays (or
	// other programs) can share one etcd. It must start and end with "/".
	// Empty means DefaultEtcdPrefix ("/tether/relay/").
	Prefix string
	// KeyEncryptionKeys encrypt the CA's private key at rest (AES-256-GCM):
	// the first encrypts, every one may decrypt (to rotate, put the new
	// key first and keep the old one until every replica has restarted).
	// Required: etcd does not encrypt what it stores.
	KeyEncryptionKeys []KeyEncryptionKey
	// DialTimeout bounds connecting to etcd at Open. Zero means
	// DefaultEtcdDialTimeout (5s).
	DialTimeout time.Duration
	// RequestTimeout bounds each read or write transaction. Zero means
	// DefaultEtcdRequestTimeout (3s).
	RequestTimeout time.Duration
	// HealthInterval is how often the registry checks that etcd answers
	// while nothing else tells it; while it does not, writes fail at once
	// with ErrStoreUnavailable. Zero means DefaultEtcdHealthInterval (2s).
	HealthInterval time.Duration
	// Client, when set, is the etcd client the registry uses instead of
	// dialing Endpoints (which then only name it in messages; the TLS
	// files are not read). The registry closes it on Close. It exists for
	// the simulator, whose in-memory etcd on virtual time
	// (sim/internal/etcdsim) has no gRPC server to dial; tether-relay
	// never sets it.
	Client *clientv3.Client
}

// Validate reports the first problem with c, naming the field.
func (c *Config) Validate() error {
	switch c.Store {
	case "", StoreBbolt:
		if c.Path == "" {
			return errors.New("registry: Config.Path is empty: name the file that holds the registry")
		}
	case StoreEtcd:
		if err := c.Etcd.Validate(); err != nil {
			return err
		}
	default:
		return fmt.Errorf("registry: Config.Store %q: want %q or %q", c.Store, StoreBbolt, StoreEtcd)
	}
	if c.JoinTokenTTL < 0 || c.CredentialTTL < 0 || c.RenewalGrace < 0 {
		return fmt.Errorf("registry: Config.JoinTokenTTL (%s), CredentialTTL (%s) and RenewalGrace (%s) must not be negative", c.JoinTokenTTL, c.CredentialTTL, c.RenewalGrace)
	}
	if c.CredentialTTL != 0 && c.CredentialTTL < 10*time.Minute {
		return fmt.Errorf("registry: Config.CredentialTTL %s is shorter than 10m: agents would spend their time renewing", c.CredentialTTL)
	}
	if c.MaxCredentials < 0 || c.MaxCredentials > 64 {
		return fmt.Errorf("registry: Config.MaxCredentials %d: want 1 to 64, or 0 for %d", c.MaxCredentials, DefaultMaxCredentials)
	}
	return nil
}

// Validate reports the first problem with e, naming the field.
func (e *EtcdConfig) Validate() error {
	if len(e.Endpoints) == 0 {
		return errors.New("registry: Config.Etcd.Endpoints is empty: name the etcd members' client URLs (https://host:2379)")
	}
	anyHTTPS := false
	for _, ep := range e.Endpoints {
		u, err := url.Parse(ep)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return fmt.Errorf("registry: Config.Etcd.Endpoints: %q is not an etcd client URL: want https://host:port", ep)
		}
		anyHTTPS = anyHTTPS || u.Scheme == "https"
	}
	if (e.CertFile == "") != (e.KeyFile == "") {
		return errors.New("registry: Config.Etcd.CertFile and KeyFile go together")
	}
	if !anyHTTPS && (e.CertFile != "" || e.CAFile != "") {
		return errors.New("registry: Config.Etcd: a client certificate or CA is set, but no endpoint is https: the certificate would not be used")
	}
	if e.Prefix != "" && (!strings.HasPrefix(e.Prefix, "/") || !strings.HasSuffix(e.Prefix, "/") || len(e.Prefix) < 2) {
		return fmt.Errorf("registry: Config.Etcd.Prefix %q must start and end with / (e.g. %s)", e.Prefix, DefaultEtcdPrefix)
	}
	if len(e.KeyEncryptionKeys) == 0 {
		return errors.New("registry: Config.Etcd.KeyEncryptionKeys is empty: the CA's private key is encrypted in etcd with a 32-byte key-encryption key (--ca-key-encryption-key-file); create one with `head -c 32 /dev/urandom > kek` and keep it apart from etcd's backups")
	}
	seen := map[string]bool{}
	for i, k := range e.KeyEncryptionKeys {
		if len(k.Key) != kekBytes {
			return fmt.Errorf("registry: Config.Etcd.KeyEncryptionKeys[%d] (%s) has %d bytes, want %d", i, k.ID, len(k.Key), kekBytes)
		}
		if k.ID == "" || seen[k.ID] {
			return fmt.Errorf("registry: Config.Etcd.KeyEncryptionKeys[%d]: its ID is empty or repeated: load keys with LoadKeyEncryptionKey", i)
		}
		seen[k.ID] = true
	}
	if e.DialTimeout < 0 || e.RequestTimeout < 0 || e.HealthInterval < 0 {
		return fmt.Errorf("registry: Config.Etcd.DialTimeout (%s), RequestTimeout (%s) and HealthInterval (%s) must not be negative", e.DialTimeout, e.RequestTimeout, e.HealthInterval)
	}
	return nil
}

// withDefaults returns c with its zero values replaced by the defaults.
func (c Config) withDefaults() Config {
	if c.Store == "" {
		c.Store = StoreBbolt
	}
	if c.JoinTokenTTL == 0 {
		c.JoinTokenTTL = DefaultJoinTokenTTL
	}
	if c.CredentialTTL == 0 {
		c.CredentialTTL = DefaultCredentialTTL
	}
	if c.MaxCredentials == 0 {
		c.MaxCredentials = DefaultMaxCredentials
	}
	if c.RenewalGrace == 0 {
		c.RenewalGrace = DefaultRenewalGrace
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	e := &c.Etcd
	if e.Prefix == "" {
		e.Prefix = DefaultEtcdPrefix
	}
	if e.DialTimeout == 0 {
		e.DialTimeout = DefaultEtcdDialTimeout
	}
	if e.RequestTimeout == 0 {
		e.RequestTimeout = DefaultEtcdRequestTimeout
	}
	if e.HealthInterval == 0 {
		e.HealthInterval = DefaultEtcdHealthInterval
	}
	return c
}

package registry

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tether-k8s/tether/core/clustercert"
	"github.com/tether-k8s/tether/core/clusterid"
	"github.com/tether-k8s/tether/core/policy"
)

// Errors the registry returns, wrapped with what failed.
var (
	ErrClusterExists     = errors.New("cluster already exists")
	ErrUnknownCluster    = errors.New("unknown cluster")
	ErrInvalidJoinToken  = errors.New("invalid join token (unknown, or already used)")
	ErrJoinTokenExpired  = errors.New("join token expired")
	ErrCredentialRevoked = errors.New("credential revoked or superseded")
	ErrCredentialExpired = errors.New("credential expired")
)

// JoinTokenPrefix starts every join token, so that one is recognisable in a
// secret scanner and in a support ticket (without its secret part).
const JoinTokenPrefix = "tether-join."

// joinTokenBytes is the entropy of a join token.
const joinTokenBytes = 32

// maxJoinTokenLen bounds what Join hashes.
const maxJoinTokenLen = 128

// Defaults for Config's zero values.
const (
	DefaultJoinTokenTTL   = 24 * time.Hour
	DefaultCredentialTTL  = 30 * 24 * time.Hour
	DefaultCAValidity     = 10 * 365 * 24 * time.Hour
	DefaultMaxCredentials = 4
)

// Config configures a Registry.
type Config struct {
	// Path is the bbolt file holding the registry; created with mode 0600
	// if missing. Required.
	Path string
	// JoinTokenTTL is how long a join token may be used. Zero means
	// DefaultJoinTokenTTL (24h).
	JoinTokenTTL time.Duration
	// CredentialTTL is the validity of a cluster's client certificate;
	// agents renew at two thirds of it. Zero means DefaultCredentialTTL
	// (30 days).
	CredentialTTL time.Duration
	// MaxCredentials is how many certificates a cluster may hold valid at
	// once (replicas joining, renewals overlapping); issuing one more drops
	// the oldest. Zero means DefaultMaxCredentials (4).
	MaxCredentials int
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
	// Logger receives one line per change to the registry. Nil discards.
	// Join tokens are never logged.
	Logger *slog.Logger
}

// Validate reports the first problem with c, naming the field.
func (c *Config) Validate() error {
	if c.Path == "" {
		return errors.New("registry: Config.Path is empty: name the file that holds the registry")
	}
	if c.JoinTokenTTL < 0 || c.CredentialTTL < 0 {
		return fmt.Errorf("registry: Config.JoinTokenTTL (%s) and CredentialTTL (%s) must not be negative", c.JoinTokenTTL, c.CredentialTTL)
	}
	if c.CredentialTTL != 0 && c.CredentialTTL < 10*time.Minute {
		return fmt.Errorf("registry: Config.CredentialTTL %s is shorter than 10m: agents would spend their time renewing", c.CredentialTTL)
	}
	if c.MaxCredentials < 0 || c.MaxCredentials > 64 {
		return fmt.Errorf("registry: Config.MaxCredentials %d: want 1 to 64, or 0 for %d", c.MaxCredentials, DefaultMaxCredentials)
	}
	return nil
}

// Cluster is what the registry knows of one cluster.
type Cluster struct {
	// ID is the cluster's ID (see package clusterid).
	ID string `json:"id"`
	// CreatedAt is when the cluster was created.
	CreatedAt time.Time `json:"createdAt"`
	// Credentials are the certificates currently valid for the cluster,
	// oldest first.
	Credentials []CredentialInfo `json:"credentials,omitempty"`
	// Policy says which callers the relay lets reach the cluster; the zero
	// Policy admits no one.
	Policy policy.Policy `json:"policy,omitzero"`
}

// CredentialInfo describes one issued certificate.
type CredentialInfo struct {
	// Serial is the certificate's serial number in hex.
	Serial string `json:"serial"`
	// IssuedAt and NotAfter bound the certificate's use.
	IssuedAt time.Time `json:"issuedAt"`
	NotAfter time.Time `json:"notAfter"`
}

// Credential is what an agent receives for a join token or a renewal.
type Credential struct {
	// ClusterID is the cluster the certificate names.
	ClusterID string
	// CertPEM is the client certificate.
	CertPEM []byte
	// CAPEM is the registry's CA certificate: the relay's client CA.
	CAPEM []byte
	// NotAfter is the certificate's expiry.
	NotAfter time.Time
}

type tokenRecord struct {
	ClusterID string    `json:"clusterID"`
	ExpiresAt time.Time `json:"expiresAt"`
}

var (
	bucketMeta     = []byte("meta")
	bucketClusters = []byte("clusters")
	bucketTokens   = []byte("joinTokens")
	keyCACert      = []byte("caCert")
	keyCAKey       = []byte("caKey")
)

// Registry is the relay's cluster registry. Its methods are safe for
// concurrent use; bbolt serialises writers.
type Registry struct {
	cfg Config
	db  *bolt.DB
	ca  *authority
	log *slog.Logger
}

// Open opens (creating if needed) the registry at cfg.Path, and its CA.
func Open(cfg Config) (*Registry, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.JoinTokenTTL == 0 {
		cfg.JoinTokenTTL = DefaultJoinTokenTTL
	}
	if cfg.CredentialTTL == 0 {
		cfg.CredentialTTL = DefaultCredentialTTL
	}
	if cfg.MaxCredentials == 0 {
		cfg.MaxCredentials = DefaultMaxCredentials
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	db, err := bolt.Open(cfg.Path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("registry: open %s: %w (is another relay using it?)", cfg.Path, err)
	}
	r := &Registry{cfg: cfg, db: db, log: log}
	if err := r.init(); err != nil {
		_ = db.Close()
		return nil, err
	}
	return r, nil
}

// init creates the buckets and the CA on first use, and loads the CA.
func (r *Registry) init() error {
	return r.db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketClusters, bucketTokens} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return fmt.Errorf("registry: create bucket %s: %w", b, err)
			}
		}
		meta := tx.Bucket(bucketMeta)
		certDER, keyDER := meta.Get(keyCACert), meta.Get(keyCAKey)
		if certDER == nil {
			var err error
			certDER, keyDER, err = newAuthorityKeyPair(r.cfg.Now(), DefaultCAValidity)
			if err != nil {
				return err
			}
			if err := meta.Put(keyCACert, certDER); err != nil {
				return fmt.Errorf("registry: store CA: %w", err)
			}
			if err := meta.Put(keyCAKey, keyDER); err != nil {
				return fmt.Errorf("registry: store CA: %w", err)
			}
			r.log.Info("registry: created cluster CA")
		}
		ca, err := loadAuthority(slices.Clone(certDER), slices.Clone(keyDER))
		if err != nil {
			return err
		}
		r.ca = ca
		return nil
	})
}

// Close closes the registry's file.
func (r *Registry) Close() error {
	if err := r.db.Close(); err != nil {
		return fmt.Errorf("registry: close: %w", err)
	}
	return nil
}

// CACertificate returns the CA that signs cluster credentials: the pool the
// relay verifies agents' client certificates against.
func (r *Registry) CACertificate() *x509.Certificate { return r.ca.cert }

// CAPEM returns the CA certificate in PEM.
func (r *Registry) CAPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.ca.certDER})
}

// ServingCertificate signs a TLS server certificate for the relay's own
// endpoints, valid for hosts (DNS names or IP addresses) for 90 days, with a
// fresh key. Agents and callers that pin CAPEM trust it.
func (r *Registry) ServingCertificate(hosts []string) (tls.Certificate, error) {
	if len(hosts) == 0 {
		return tls.Certificate{}, errors.New("registry: a serving certificate needs at least one host name or address")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("registry: serving key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return tls.Certificate{}, err
	}
	now := r.cfg.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: hosts[0], Organization: []string{"tether relay"}},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(90 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, r.ca.cert, key.Public(), r.ca.key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("registry: sign serving certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der, r.ca.certDER}, PrivateKey: key}, nil
}

// CreateCluster records a new cluster and returns its first join token. The
// token is shown once: only its hash is stored.
func (r *Registry) CreateCluster(id string) (joinToken string, err error) {
	if err := clusterid.Validate(id); err != nil {
		return "", fmt.Errorf("registry: create cluster: %w", err)
	}
	err = r.db.Update(func(tx *bolt.Tx) error {
		clusters := tx.Bucket(bucketClusters)
		if clusters.Get([]byte(id)) != nil {
			return fmt.Errorf("registry: create cluster %s: %w", id, ErrClusterExists)
		}
		if err := putJSON(clusters, id, Cluster{ID: id, CreatedAt: r.cfg.Now().UTC()}); err != nil {
			return err
		}
		joinToken, err = r.issueToken(tx, id)
		return err
	})
	if err != nil {
		return "", err
	}
	r.log.Info("registry: created cluster", "cluster", id)
	return joinToken, nil
}

// Cluster returns the cluster with the given ID.
func (r *Registry) Cluster(id string) (Cluster, error) {
	var c Cluster
	err := r.db.View(func(tx *bolt.Tx) error {
		var err error
		c, err = getCluster(tx, id)
		return err
	})
	return c, err
}

// Clusters returns every cluster, ordered by ID.
func (r *Registry) Clusters() ([]Cluster, error) {
	var out []Cluster
	err := r.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketClusters).ForEach(func(k, v []byte) error {
			var c Cluster
			if err := json.Unmarshal(v, &c); err != nil {
				return fmt.Errorf("registry: decode cluster %s: %w", k, err)
			}
			out = append(out, c)
			return nil
		})
	})
	return out, err
}

// UpdatePolicy changes a cluster's access policy with fn, validates the
// result and stores it.
func (r *Registry) UpdatePolicy(id string, fn func(policy.Policy) (policy.Policy, error)) (policy.Policy, error) {
	var out policy.Policy
	err := r.db.Update(func(tx *bolt.Tx) error {
		c, err := getCluster(tx, id)
		if err != nil {
			return err
		}
		p, err := fn(c.Policy)
		if err != nil {
			return err
		}
		if err := p.Validate(); err != nil {
			return fmt.Errorf("registry: cluster %s: %w", id, err)
		}
		c.Policy, out = p, p
		return putJSON(tx.Bucket(bucketClusters), id, c)
	})
	if err == nil {
		r.log.Info("registry: access policy changed", "cluster", id, "users", len(out.Users), "groups", len(out.Groups), "rules", len(out.Rules))
	}
	return out, err
}

// DeleteCluster forgets a cluster, its join tokens and its credentials: its
// agents' certificates are refused from then on.
func (r *Registry) DeleteCluster(id string) error {
	err := r.db.Update(func(tx *bolt.Tx) error {
		if _, err := getCluster(tx, id); err != nil {
			return err
		}
		if err := deleteTokensFor(tx, id); err != nil {
			return err
		}
		if err := tx.Bucket(bucketClusters).Delete([]byte(id)); err != nil {
			return fmt.Errorf("registry: delete cluster %s: %w", id, err)
		}
		return nil
	})
	if err == nil {
		r.log.Info("registry: deleted cluster", "cluster", id)
	}
	return err
}

// Rotate revokes every credential of a cluster and every join token not yet
// used, and returns a new join token for its agents to join again.
func (r *Registry) Rotate(id string) (joinToken string, err error) {
	err = r.db.Update(func(tx *bolt.Tx) error {
		c, err := getCluster(tx, id)
		if err != nil {
			return err
		}
		c.Credentials = nil
		if err := putJSON(tx.Bucket(bucketClusters), id, c); err != nil {
			return err
		}
		if err := deleteTokensFor(tx, id); err != nil {
			return err
		}
		joinToken, err = r.issueToken(tx, id)
		return err
	})
	if err == nil {
		r.log.Info("registry: rotated cluster credentials", "cluster", id)
	}
	return joinToken, err
}

// Join consumes a join token and signs a credential for its cluster, for the
// key in the DER-encoded certificate signing request. The token is consumed
// even when the request is refused for a bad CSR, so a token is never tried
// twice.
func (r *Registry) Join(joinToken string, csrDER []byte) (Credential, error) {
	if len(joinToken) > maxJoinTokenLen || !strings.HasPrefix(joinToken, JoinTokenPrefix) {
		r.log.Warn("registry: join refused: malformed token", "length", len(joinToken))
		return Credential{}, fmt.Errorf("registry: join: %w", ErrInvalidJoinToken)
	}
	key := tokenKey(joinToken)
	var cred Credential
	var refused error
	err := r.db.Update(func(tx *bolt.Tx) error {
		tokens := tx.Bucket(bucketTokens)
		raw := tokens.Get(key)
		if raw == nil {
			refused = fmt.Errorf("registry: join: %w", ErrInvalidJoinToken)
			return nil
		}
		var rec tokenRecord
		if err := json.Unmarshal(raw, &rec); err != nil {
			return fmt.Errorf("registry: decode join token: %w", err)
		}
		if err := tokens.Delete(key); err != nil {
			return fmt.Errorf("registry: consume join token: %w", err)
		}
		if !r.cfg.Now().Before(rec.ExpiresAt) {
			refused = fmt.Errorf("registry: join cluster %s: %w at %s: create a new one with `tether-relay cluster rotate %s`", rec.ClusterID, ErrJoinTokenExpired, rec.ExpiresAt.Format(time.RFC3339), rec.ClusterID)
			return nil
		}
		csr, err := parseCSR(csrDER)
		if err != nil {
			refused = fmt.Errorf("registry: join cluster %s: %w", rec.ClusterID, err)
			return nil
		}
		cred, err = r.issueCredential(tx, rec.ClusterID, csr)
		if errors.Is(err, ErrUnknownCluster) {
			refused = err
			return nil
		}
		return err
	})
	if err != nil {
		return Credential{}, err
	}
	if refused != nil {
		r.log.Warn("registry: join refused", "error", refused)
		return Credential{}, refused
	}
	r.log.Info("registry: cluster joined", "cluster", cred.ClusterID, "notAfter", cred.NotAfter)
	return cred, nil
}

// Renew signs a new credential for the cluster named by current, a
// certificate the caller has verified (its TLS peer) and that VerifyPeer
// accepts. The current certificate stays valid until it expires, is
// superseded by MaxCredentials newer ones, or the cluster is rotated.
func (r *Registry) Renew(current *x509.Certificate, csrDER []byte) (Credential, error) {
	id, err := r.VerifyPeer(current)
	if err != nil {
		return Credential{}, fmt.Errorf("registry: renew: %w", err)
	}
	csr, err := parseCSR(csrDER)
	if err != nil {
		return Credential{}, fmt.Errorf("registry: renew cluster %s: %w", id, err)
	}
	var cred Credential
	err = r.db.Update(func(tx *bolt.Tx) error {
		var err error
		cred, err = r.issueCredential(tx, id, csr)
		return err
	})
	if err != nil {
		return Credential{}, err
	}
	r.log.Info("registry: credential renewed", "cluster", id, "notAfter", cred.NotAfter)
	return cred, nil
}

// VerifyPeer returns the cluster an agent's client certificate names, after
// the TLS handshake has verified it against CACertificate. It refuses a
// certificate that names no valid cluster, an unknown cluster, or one whose
// serial the cluster no longer lists (rotated, deleted, superseded) or that
// has expired.
func (r *Registry) VerifyPeer(cert *x509.Certificate) (string, error) {
	id, err := clustercert.ClusterID(cert)
	if err != nil {
		return "", err
	}
	if err := cert.CheckSignatureFrom(r.ca.cert); err != nil {
		return "", fmt.Errorf("registry: certificate for cluster %s not signed by this relay's CA: %w", id, err)
	}
	serial := hex.EncodeToString(cert.SerialNumber.Bytes())
	var c Cluster
	err = r.db.View(func(tx *bolt.Tx) error {
		var err error
		c, err = getCluster(tx, id)
		return err
	})
	if err != nil {
		return "", err
	}
	i := slices.IndexFunc(c.Credentials, func(ci CredentialInfo) bool { return ci.Serial == serial })
	if i < 0 {
		return "", fmt.Errorf("registry: cluster %s certificate %s: %w", id, serial, ErrCredentialRevoked)
	}
	if now := r.cfg.Now(); !now.Before(c.Credentials[i].NotAfter) || now.Before(cert.NotBefore) {
		return "", fmt.Errorf("registry: cluster %s certificate %s: %w (valid %s to %s)", id, serial, ErrCredentialExpired,
			cert.NotBefore.Format(time.RFC3339), c.Credentials[i].NotAfter.Format(time.RFC3339))
	}
	return id, nil
}

// issueToken stores the hash of a new join token for cluster id.
func (r *Registry) issueToken(tx *bolt.Tx, id string) (string, error) {
	b := make([]byte, joinTokenBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("registry: random join token: %w", err)
	}
	token := JoinTokenPrefix + base64.RawURLEncoding.EncodeToString(b)
	rec := tokenRecord{ClusterID: id, ExpiresAt: r.cfg.Now().Add(r.cfg.JoinTokenTTL).UTC()}
	v, err := json.Marshal(rec)
	if err != nil {
		return "", fmt.Errorf("registry: encode join token: %w", err)
	}
	if err := tx.Bucket(bucketTokens).Put(tokenKey(token), v); err != nil {
		return "", fmt.Errorf("registry: store join token: %w", err)
	}
	return token, nil
}

// issueCredential signs a certificate for cluster id and records it.
func (r *Registry) issueCredential(tx *bolt.Tx, id string, csr *x509.CertificateRequest) (Credential, error) {
	c, err := getCluster(tx, id)
	if err != nil {
		return Credential{}, err
	}
	serial, err := randomSerial()
	if err != nil {
		return Credential{}, err
	}
	now := r.cfg.Now().UTC()
	notAfter := now.Add(r.cfg.CredentialTTL)
	der, err := r.ca.sign(id, csr, serial, now.Add(-time.Minute), notAfter)
	if err != nil {
		return Credential{}, err
	}
	c.Credentials = append(c.Credentials, CredentialInfo{Serial: hex.EncodeToString(serial.Bytes()), IssuedAt: now, NotAfter: notAfter})
	if n := len(c.Credentials) - r.cfg.MaxCredentials; n > 0 {
		c.Credentials = c.Credentials[n:]
	}
	if err := putJSON(tx.Bucket(bucketClusters), id, c); err != nil {
		return Credential{}, err
	}
	return Credential{
		ClusterID: id,
		CertPEM:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		CAPEM:     r.CAPEM(),
		NotAfter:  notAfter,
	}, nil
}

func getCluster(tx *bolt.Tx, id string) (Cluster, error) {
	if err := clusterid.Validate(id); err != nil {
		return Cluster{}, fmt.Errorf("registry: %w", err)
	}
	raw := tx.Bucket(bucketClusters).Get([]byte(id))
	if raw == nil {
		return Cluster{}, fmt.Errorf("registry: cluster %s: %w", id, ErrUnknownCluster)
	}
	var c Cluster
	if err := json.Unmarshal(raw, &c); err != nil {
		return Cluster{}, fmt.Errorf("registry: decode cluster %s: %w", id, err)
	}
	return c, nil
}

func deleteTokensFor(tx *bolt.Tx, id string) error {
	tokens := tx.Bucket(bucketTokens)
	var doomed [][]byte
	err := tokens.ForEach(func(k, v []byte) error {
		var rec tokenRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("registry: decode join token: %w", err)
		}
		if rec.ClusterID == id {
			doomed = append(doomed, slices.Clone(k))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range doomed {
		if err := tokens.Delete(k); err != nil {
			return fmt.Errorf("registry: delete join token: %w", err)
		}
	}
	return nil
}

func putJSON(b *bolt.Bucket, key string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("registry: encode %s: %w", key, err)
	}
	if err := b.Put([]byte(key), raw); err != nil {
		return fmt.Errorf("registry: store %s: %w", key, err)
	}
	return nil
}

// tokenKey is the stored form of a join token: its SHA-256. Tokens carry 256
// bits of entropy, so an unsalted hash is enough.
func tokenKey(token string) []byte {
	sum := sha256.Sum256([]byte(token))
	return sum[:]
}

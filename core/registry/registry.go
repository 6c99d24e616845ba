package registry

import (
	"context"
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
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

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
	// ErrCredentialReused is wrapped (with ErrCredentialRevoked) by Renew
	// when a certificate that was already renewed is renewed again with
	// another key: two parties hold the credential, and the registry
	// revokes the whole chain, as refresh-token reuse detection does.
	ErrCredentialReused = errors.New("credential renewed twice with different keys (a copy is in other hands)")
)

// JoinTokenPrefix starts every join token, so that one is recognisable in a
// secret scanner and in a support ticket (without its secret part).
const JoinTokenPrefix = "tether-join."

// joinTokenBytes is the entropy of a join token.
const joinTokenBytes = 32

// maxJoinTokenLen bounds what Join hashes.
const maxJoinTokenLen = 128

// Cluster is what the registry knows of one cluster.
type Cluster struct {
	// ID is the cluster's ID (see package clusterid).
	ID string `json:"id"`
	// CreatedAt is when the cluster was created.
	CreatedAt time.Time `json:"createdAt"`
	// Credentials are the certificates issued for the cluster that are
	// not yet expired, oldest first: the current ones, and those a renewal
	// superseded (kept until they expire, to recognise a second renewal).
	Credentials []CredentialInfo `json:"credentials,omitempty"`
	// Policy says which callers the relay lets reach the cluster; the zero
	// Policy admits no one.
	Policy policy.Policy `json:"policy,omitzero"`
}

// CurrentCredentials returns c's certificates that no renewal has
// replaced: one per agent credential (a replaced one is accepted for the
// renewal grace only).
func (c Cluster) CurrentCredentials() []CredentialInfo {
	var out []CredentialInfo
	for _, ci := range c.Credentials {
		if ci.Current() {
			out = append(out, ci)
		}
	}
	return out
}

// CredentialInfo describes one issued certificate.
type CredentialInfo struct {
	// Serial is the certificate's serial number in hex.
	Serial string `json:"serial"`
	// IssuedAt and NotAfter bound the certificate's use.
	IssuedAt time.Time `json:"issuedAt"`
	NotAfter time.Time `json:"notAfter"`
	// Key is the SHA-256 (hex) of the certificate's public key, to tell a
	// retried renewal (same new key) from a second one.
	Key string `json:"key,omitempty"`
	// RenewedFrom is the serial this certificate renewed, if any.
	RenewedFrom string `json:"renewedFrom,omitempty"`
	// SupersededBy is the serial of the certificate that renewed this
	// one, and SupersededAt when. A superseded certificate is accepted for
	// Config.RenewalGrace more, then refused.
	SupersededBy string    `json:"supersededBy,omitempty"`
	SupersededAt time.Time `json:"supersededAt,omitzero"`
}

// Current reports whether c has not been superseded by a renewal.
func (c CredentialInfo) Current() bool { return c.SupersededBy == "" }

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

// Registry is the relay's cluster registry. Its methods are safe for
// concurrent use. VerifyPeer, Cluster and Clusters answer from memory (a
// cache of every cluster, kept fresh by the registry's own writes and, on
// etcd, by a watch), so the request path never waits for the store.
type Registry struct {
	cfg   Config
	store backend
	ca    *authority
	log   *slog.Logger
	cache *cache

	// stop ends the background work (the etcd watch and health check,
	// Changes subscriptions); wg waits for it.
	stop    context.CancelFunc
	wg      sync.WaitGroup
	closeMu sync.Once
}

// Open opens (creating if needed) the registry in the configured store, and
// its CA. With etcd, a store without a CA gets one only if it holds no
// cluster and no token; a CA key that the configured key-encryption keys do
// not open is an error (ErrKeyEncryption), never a new CA.
func Open(cfg Config) (*Registry, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	store, err := openBackend(cfg)
	if err != nil {
		return nil, err
	}
	r, err := open(cfg, store)
	if err != nil {
		_ = store.close()
		return nil, err
	}
	return r, nil
}

func open(cfg Config, store backend) (*Registry, error) {
	ctx, stop := context.WithCancel(context.Background())
	r := &Registry{cfg: cfg, store: store, log: cfg.Logger, stop: stop}
	r.cache = newCache(r.log)
	if es, ok := store.(*etcdStore); ok {
		es.status = func(err error) { r.cache.setStatus(es.String(), err) }
	}
	if err := r.initCA(); err != nil {
		stop()
		return nil, err
	}
	if es, ok := store.(*etcdStore); ok {
		all, rev, err := es.snapshot(ctx, bucketClusters)
		if err != nil {
			stop()
			return nil, err
		}
		if err := r.cache.reset(rev, all); err != nil {
			stop()
			return nil, err
		}
		r.wg.Add(2)
		go func() { defer r.wg.Done(); es.follow(ctx, bucketClusters, rev, r.cache) }()
		go func() { defer r.wg.Done(); es.checkHealth(ctx) }()
	} else {
		all := map[string][]byte{}
		err := store.view(ctx, func(tx tx) error {
			return tx.forEach(bucketClusters, func(k, v []byte) error { all[string(k)] = v; return nil })
		})
		if err == nil {
			err = r.cache.reset(0, all)
		}
		if err != nil {
			stop()
			return nil, err
		}
	}
	return r, nil
}

// initCA loads the CA, creating it in an empty store.
func (r *Registry) initCA() error {
	var certDER, keyDER []byte
	var created, resealed bool
	_, err := r.store.update(context.Background(), func(tx tx) error {
		created, resealed = false, false
		if m, err := tx.get(bucketMeta, keyMigrating); err != nil {
			return err
		} else if m != nil {
			return fmt.Errorf("registry: %s holds a migration that did not finish (%s): run `tether-relay store migrate` again with --overwrite", r.store, m)
		}
		var err error
		if certDER, err = tx.get(bucketMeta, keyCACert); err != nil {
			return err
		}
		stored, err := tx.get(bucketMeta, keyCAKey)
		if err != nil {
			return err
		}
		if certDER == nil {
			if stored != nil {
				return fmt.Errorf("registry: %s has a CA key but no CA certificate: restore it from a backup", r.store)
			}
			if r.cfg.MustExist {
				return fmt.Errorf("registry: %s: %w: check --store and --etcd-prefix, or create a relay with `tether-relay serve` or `tether-relay cluster create`", r.store, ErrNoState)
			}
			if err := mustBeEmpty(tx, r.store); err != nil {
				return err
			}
			if certDER, keyDER, err = newAuthorityKeyPair(r.cfg.Now(), DefaultCAValidity); err != nil {
				return err
			}
			if err := tx.put(bucketMeta, keyCACert, certDER); err != nil {
				return err
			}
			created = true
			return r.putCAKey(tx, keyDER)
		}
		if stored == nil {
			return fmt.Errorf("registry: %s has a CA certificate but no CA key: restore it from a backup", r.store)
		}
		if keyDER, resealed, err = r.openCAKey(stored); err != nil {
			return err
		}
		if resealed {
			return r.putCAKey(tx, keyDER)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if created {
		r.log.Info("registry: created cluster CA", "store", r.store.String())
	}
	if resealed {
		r.log.Info("registry: re-encrypted the CA key with the first key-encryption key", "kid", r.cfg.Etcd.KeyEncryptionKeys[0].ID)
	}
	ca, err := loadAuthority(certDER, keyDER)
	if err != nil {
		return err
	}
	r.ca = ca
	return nil
}

// mustBeEmpty refuses to create a CA in a store that already holds
// clusters or tokens: their credentials were signed by a CA that is gone.
func mustBeEmpty(t tx, store backend) error {
	stop := errors.New("found")
	for _, b := range []bucket{bucketClusters, bucketTokens} {
		err := t.forEach(b, func(_, _ []byte) error { return stop })
		if errors.Is(err, stop) {
			return fmt.Errorf("registry: %s holds %s but no CA: restore the CA from a backup (a new CA would make every agent's credential worthless)", store, b.name)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// sealsCAKey reports whether the CA key is kept encrypted: on etcd.
func (r *Registry) sealsCAKey() bool { return r.cfg.Store == StoreEtcd }

func (r *Registry) putCAKey(tx tx, keyDER []byte) error {
	v := keyDER
	if r.sealsCAKey() {
		var err error
		if v, err = seal(r.cfg.Etcd.KeyEncryptionKeys[0], keyDER); err != nil {
			return err
		}
	}
	return tx.put(bucketMeta, keyCAKey, v)
}

// openCAKey returns the CA key's DER from its stored form, and whether it
// should be stored again under the first key-encryption key.
func (r *Registry) openCAKey(stored []byte) ([]byte, bool, error) {
	if !r.sealsCAKey() {
		return stored, false, nil
	}
	keys := r.cfg.Etcd.KeyEncryptionKeys
	der, kid, err := unseal(keys, stored)
	if err != nil {
		return nil, false, fmt.Errorf("%w (%s)", err, r.store)
	}
	return der, kid != keys[0].ID, nil
}

// Close stops the registry's background work and closes its store.
// Subscriptions to Changes end.
func (r *Registry) Close() error {
	var err error
	r.closeMu.Do(func() {
		r.stop()
		r.cache.close()
		r.wg.Wait()
		err = r.store.close()
	})
	return err
}

// Store names the registry's store, for messages: "bbolt file X" or
// "etcd at Y (prefix P)".
func (r *Registry) Store() string { return r.store.String() }

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
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: hosts[0], Organization: []string{"tether relay"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	return r.issue("serving certificate", tmpl, 90*24*time.Hour)
}

// Etcd returns the etcd client the registry uses and the key prefix of its
// state, for what else the replicas keep in that etcd under the prefix
// (their presence and routes: core/relay/mesh). ok is false on bbolt. The
// client is the registry's: Close closes it.
func (r *Registry) Etcd() (cli *clientv3.Client, prefix string, ok bool) {
	es, ok := r.store.(*etcdStore)
	if !ok {
		return nil, "", false
	}
	return es.cli, es.cfg.Prefix, true
}

// PeerCertificate returns a new key and a certificate for it, signed by the
// relay's CA for validity, that replica relayID presents to the other
// replicas and serves them (clustercert.RelayURI): client and server
// authentication, no host name. It is kept in memory only; a replica
// issues itself a new one before it expires.
func (r *Registry) PeerCertificate(relayID string, validity time.Duration) (tls.Certificate, error) {
	u, err := clustercert.RelayURI(relayID)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("registry: peer certificate: %w", err)
	}
	return r.issue("peer certificate", &x509.Certificate{
		Subject:     pkix.Name{CommonName: relayID, Organization: []string{"tether relay replica"}},
		URIs:        []*url.URL{u},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}, validity)
}

// issue signs tmpl (its subject, names and extended usages) for a new P-256
// key, valid from a minute ago for validity.
func (r *Registry) issue(what string, tmpl *x509.Certificate, validity time.Duration) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("registry: %s key: %w", what, err)
	}
	if tmpl.SerialNumber, err = randomSerial(); err != nil {
		return tls.Certificate{}, err
	}
	now := r.cfg.Now()
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Minute), now.Add(validity)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, r.ca.cert, key.Public(), r.ca.key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("registry: sign %s: %w", what, err)
	}
	return tls.Certificate{Certificate: [][]byte{der, r.ca.certDER}, PrivateKey: key}, nil
}

// update runs fn in a write transaction and brings the cache up to date
// with what it wrote.
func (r *Registry) update(fn func(tx) error) error {
	c, err := r.store.update(context.Background(), fn)
	if err != nil {
		return err
	}
	r.cache.commit(c)
	return nil
}

// CreateCluster records a new cluster and returns its first join token. The
// token is shown once: only its hash is stored.
func (r *Registry) CreateCluster(id string) (joinToken string, err error) {
	if err := clusterid.Validate(id); err != nil {
		return "", fmt.Errorf("registry: create cluster: %w", err)
	}
	err = r.update(func(tx tx) error {
		raw, err := tx.get(bucketClusters, []byte(id))
		if err != nil {
			return err
		}
		if raw != nil {
			return fmt.Errorf("registry: create cluster %s: %w", id, ErrClusterExists)
		}
		if err := putCluster(tx, Cluster{ID: id, CreatedAt: r.cfg.Now().UTC()}); err != nil {
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

// Cluster returns the cluster with the given ID, from memory. The
// returned value is a copy.
func (r *Registry) Cluster(id string) (Cluster, error) {
	if err := clusterid.Validate(id); err != nil {
		return Cluster{}, fmt.Errorf("registry: %w", err)
	}
	c, ok := r.cache.get(id)
	if !ok {
		return Cluster{}, fmt.Errorf("registry: cluster %s: %w", id, ErrUnknownCluster)
	}
	return c, nil
}

// Clusters returns every cluster, ordered by ID, from memory.
func (r *Registry) Clusters() ([]Cluster, error) { return r.cache.all(), nil }

// UpdatePolicy changes a cluster's access policy with fn, validates the
// result and stores it. fn may be called more than once (etcd retries a
// transaction another replica raced).
func (r *Registry) UpdatePolicy(id string, fn func(policy.Policy) (policy.Policy, error)) (policy.Policy, error) {
	var out policy.Policy
	err := r.update(func(tx tx) error {
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
		return putCluster(tx, c)
	})
	if err == nil {
		r.log.Info("registry: access policy changed", "cluster", id, "users", len(out.Users), "groups", len(out.Groups), "rules", len(out.Rules))
	}
	return out, err
}

// DeleteCluster forgets a cluster, its join tokens and its credentials: its
// agents' certificates are refused from then on.
func (r *Registry) DeleteCluster(id string) error {
	err := r.update(func(tx tx) error {
		if _, err := getCluster(tx, id); err != nil {
			return err
		}
		if err := deleteTokensFor(tx, id); err != nil {
			return err
		}
		return tx.delete(bucketClusters, []byte(id))
	})
	if err == nil {
		r.log.Info("registry: deleted cluster", "cluster", id)
	}
	return err
}

// Rotate revokes every credential of a cluster and every join token not yet
// used, and returns a new join token for its agents to join again.
func (r *Registry) Rotate(id string) (joinToken string, err error) {
	err = r.update(func(tx tx) error {
		c, err := getCluster(tx, id)
		if err != nil {
			return err
		}
		c.Credentials = nil
		if err := putCluster(tx, c); err != nil {
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
// twice. A token that does not exist costs a read and no write: the join
// endpoint is unauthenticated. On etcd, a token presented to several
// replicas at once is consumed by exactly one of them (the transaction
// compares the token key's revision); the others are refused with
// ErrInvalidJoinToken.
func (r *Registry) Join(joinToken string, csrDER []byte) (Credential, error) {
	if len(joinToken) > maxJoinTokenLen || !strings.HasPrefix(joinToken, JoinTokenPrefix) {
		r.log.Warn("registry: join refused: malformed token", "length", len(joinToken))
		return Credential{}, fmt.Errorf("registry: join: %w", ErrInvalidJoinToken)
	}
	key := tokenKey(joinToken)
	var exists bool
	err := r.store.view(context.Background(), func(tx tx) error {
		raw, err := tx.get(bucketTokens, key)
		exists = raw != nil
		return err
	})
	if err != nil {
		return Credential{}, fmt.Errorf("registry: join: %w", err)
	}
	if !exists {
		r.log.Warn("registry: join refused: unknown token")
		return Credential{}, fmt.Errorf("registry: join: %w", ErrInvalidJoinToken)
	}
	var cred Credential
	var refused error
	err = r.update(func(tx tx) error {
		cred, refused = Credential{}, nil
		raw, err := tx.get(bucketTokens, key)
		if err != nil {
			return err
		}
		if raw == nil {
			refused = fmt.Errorf("registry: join: %w", ErrInvalidJoinToken)
			return nil
		}
		var rec tokenRecord
		if err := json.Unmarshal(raw, &rec); err != nil {
			return fmt.Errorf("registry: decode join token: %w", err)
		}
		if err := tx.delete(bucketTokens, key); err != nil {
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
		c, err := getCluster(tx, rec.ClusterID)
		if errors.Is(err, ErrUnknownCluster) {
			refused = err
			return nil
		}
		if err != nil {
			return err
		}
		var info CredentialInfo
		if cred, info, err = r.signCredential(c.ID, csr); err != nil {
			return err
		}
		c.Credentials = append(c.Credentials, info)
		r.prune(&c)
		return putCluster(tx, c)
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

// VerifyPeer returns the cluster an agent's client certificate names, after
// the TLS handshake has verified it against CACertificate. It refuses a
// certificate that names no valid cluster, an unknown cluster, or one whose
// serial the cluster no longer lists (rotated, deleted, renewed more than
// Config.RenewalGrace ago) or that has expired. It reads memory only.
func (r *Registry) VerifyPeer(cert *x509.Certificate) (string, error) {
	id, _, err := r.VerifyPeerUntil(cert)
	return id, err
}

// VerifyPeerUntil is VerifyPeer, and also says until when the answer holds
// if nothing changes: the certificate's expiry, or the end of its grace
// once renewed. A relay that re-checks open sessions re-checks then, and at
// every Change of the cluster.
func (r *Registry) VerifyPeerUntil(cert *x509.Certificate) (string, time.Time, error) {
	id, err := clustercert.ClusterID(cert)
	if err != nil {
		return "", time.Time{}, err
	}
	if err := cert.CheckSignatureFrom(r.ca.cert); err != nil {
		return "", time.Time{}, fmt.Errorf("registry: certificate for cluster %s not signed by this relay's CA: %w", id, err)
	}
	serial := serialHex(cert)
	c, ok := r.cache.get(id)
	if !ok {
		return "", time.Time{}, fmt.Errorf("registry: cluster %s: %w", id, ErrUnknownCluster)
	}
	i := slices.IndexFunc(c.Credentials, func(ci CredentialInfo) bool { return ci.Serial == serial })
	if i < 0 {
		return "", time.Time{}, fmt.Errorf("registry: cluster %s certificate %s: %w", id, serial, ErrCredentialRevoked)
	}
	ci := c.Credentials[i]
	now := r.cfg.Now()
	if !now.Before(ci.NotAfter) || now.Before(cert.NotBefore) {
		return "", time.Time{}, fmt.Errorf("registry: cluster %s certificate %s: %w (valid %s to %s)", id, serial, ErrCredentialExpired,
			cert.NotBefore.Format(time.RFC3339), ci.NotAfter.Format(time.RFC3339))
	}
	until := ci.NotAfter
	if !ci.Current() {
		end := ci.SupersededAt.Add(r.cfg.RenewalGrace)
		if !now.Before(end) {
			return "", time.Time{}, fmt.Errorf("registry: cluster %s certificate %s: %w: renewed at %s (as %s)", id, serial, ErrCredentialRevoked,
				ci.SupersededAt.Format(time.RFC3339), ci.SupersededBy)
		}
		until = minTime(until, end)
	}
	return id, until, nil
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// issueToken stores the hash of a new join token for cluster id.
func (r *Registry) issueToken(tx tx, id string) (string, error) {
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
	if err := tx.put(bucketTokens, tokenKey(token), v); err != nil {
		return "", fmt.Errorf("registry: store join token: %w", err)
	}
	return token, nil
}

// signCredential signs a new certificate for cluster id and the key in csr.
func (r *Registry) signCredential(id string, csr *x509.CertificateRequest) (Credential, CredentialInfo, error) {
	serial, err := randomSerial()
	if err != nil {
		return Credential{}, CredentialInfo{}, err
	}
	now := r.cfg.Now().UTC().Truncate(time.Second)
	info := CredentialInfo{Serial: hex.EncodeToString(serial.Bytes()), IssuedAt: now, NotAfter: now.Add(r.cfg.CredentialTTL), Key: keyHash(csr)}
	cred, err := r.resign(id, csr, info)
	return cred, info, err
}

// resign signs the certificate info describes, for the key in csr: the
// same serial and validity, so the same credential.
func (r *Registry) resign(id string, csr *x509.CertificateRequest, info CredentialInfo) (Credential, error) {
	serial, ok := parseSerial(info.Serial)
	if !ok {
		return Credential{}, fmt.Errorf("registry: cluster %s: stored serial %q is not hex", id, info.Serial)
	}
	der, err := r.ca.sign(id, csr, serial, info.IssuedAt.Add(-time.Minute), info.NotAfter)
	if err != nil {
		return Credential{}, err
	}
	return Credential{
		ClusterID: id,
		CertPEM:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		CAPEM:     r.CAPEM(),
		NotAfter:  info.NotAfter,
	}, nil
}

// maxSuperseded bounds the renewed certificates a cluster keeps (to
// recognise a second renewal of one of them) beyond its current ones.
const maxSuperseded = 16

// prune drops c's expired certificates, the oldest current ones beyond
// Config.MaxCredentials (one per join) and the oldest superseded ones
// beyond maxSuperseded.
func (r *Registry) prune(c *Cluster) {
	now := r.cfg.Now()
	c.Credentials = slices.DeleteFunc(c.Credentials, func(ci CredentialInfo) bool { return !now.Before(ci.NotAfter) })
	dropOldest := func(keep func(CredentialInfo) bool, max int) {
		n := 0
		for _, ci := range c.Credentials {
			if keep(ci) {
				n++
			}
		}
		for i := 0; n > max && i < len(c.Credentials); {
			if keep(c.Credentials[i]) {
				c.Credentials = slices.Delete(c.Credentials, i, i+1)
				n--
				continue
			}
			i++
		}
	}
	dropOldest(CredentialInfo.Current, r.cfg.MaxCredentials)
	dropOldest(func(ci CredentialInfo) bool { return !ci.Current() }, maxSuperseded)
}

func getCluster(tx tx, id string) (Cluster, error) {
	if err := clusterid.Validate(id); err != nil {
		return Cluster{}, fmt.Errorf("registry: %w", err)
	}
	raw, err := tx.get(bucketClusters, []byte(id))
	if err != nil {
		return Cluster{}, err
	}
	if raw == nil {
		return Cluster{}, fmt.Errorf("registry: cluster %s: %w", id, ErrUnknownCluster)
	}
	var c Cluster
	if err := json.Unmarshal(raw, &c); err != nil {
		return Cluster{}, fmt.Errorf("registry: decode cluster %s: %w", id, err)
	}
	return c, nil
}

func putCluster(tx tx, c Cluster) error {
	raw, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("registry: encode cluster %s: %w", c.ID, err)
	}
	return tx.put(bucketClusters, []byte(c.ID), raw)
}

func deleteTokensFor(tx tx, id string) error {
	var doomed [][]byte
	err := tx.forEach(bucketTokens, func(k, v []byte) error {
		var rec tokenRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("registry: decode join token: %w", err)
		}
		if rec.ClusterID == id {
			doomed = append(doomed, k)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range doomed {
		if err := tx.delete(bucketTokens, k); err != nil {
			return fmt.Errorf("registry: delete join token: %w", err)
		}
	}
	return nil
}

// tokenKey is the stored form of a join token: its SHA-256. Tokens carry 256
// bits of entropy, so an unsalted hash is enough.
func tokenKey(token string) []byte {
	sum := sha256.Sum256([]byte(token))
	return sum[:]
}

// keyHash identifies the public key of a CSR: the SHA-256 of its
// SubjectPublicKeyInfo, in hex.
func keyHash(csr *x509.CertificateRequest) string {
	sum := sha256.Sum256(csr.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

func serialHex(cert *x509.Certificate) string { return hex.EncodeToString(cert.SerialNumber.Bytes()) }

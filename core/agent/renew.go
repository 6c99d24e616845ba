package agent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"time"

	"github.com/tether-k8s/tether/core/clustercert"
	"github.com/tether-k8s/tether/core/internal/wait"
	"github.com/tether-k8s/tether/core/tunnel"
)

// useCert checks that cert is a credential for this agent's cluster and
// makes it the one in use.
func (a *Agent) useCert(cert tls.Certificate) error {
	if cert.Leaf == nil {
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			return fmt.Errorf("agent: parse the credential: %w", err)
		}
		cert.Leaf = leaf
	}
	id, err := clustercert.ClusterID(cert.Leaf)
	if err != nil {
		return fmt.Errorf("agent: the credential names no cluster: %w", err)
	}
	if id != a.cfg.Cluster {
		return fmt.Errorf("agent: the credential is for cluster %s, but this agent serves %s", id, a.cfg.Cluster)
	}
	a.cert.Store(&cert)
	return nil
}

// CredentialNotAfter returns when the credential in use expires.
func (a *Agent) CredentialNotAfter() time.Time { return a.cert.Load().Leaf.NotAfter }

// renewAt returns when to renew leaf: RenewBefore its expiry, and earlier
// by up to a tenth of the time from its issue to then, at random (2 days of
// the default 20), so that replicas sharing one credential (one Secret) do
// not renew at the same instant: the first renews and stores the new
// credential, the others find it stored and use it (adoptStored). The
// relay takes two renewals of one certificate with different keys for
// theft and revokes both.
func (a *Agent) renewAt(leaf *x509.Certificate) time.Time {
	before := a.cfg.RenewBefore
	if before == 0 {
		before = leaf.NotAfter.Sub(leaf.NotBefore) / 3
	}
	due := leaf.NotAfter.Add(-before)
	span := max(due.Sub(leaf.NotBefore), 0)
	return due.Add(-time.Duration(mrand.Int64N(int64(span/10) + 1)))
}

// adoptStored switches to the credential in the store when it is another,
// valid one for this cluster that expires no sooner than the one in use: a
// replica sharing the store renewed it. It reports whether it did.
func (a *Agent) adoptStored(ctx context.Context) bool {
	certPEM, keyPEM, err := a.cfg.Store.Load(ctx)
	if err != nil {
		return false
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return false
	}
	cur := a.cert.Load().Leaf
	if bytes.Equal(cert.Certificate[0], cur.Raw) {
		return false
	}
	// The store holds what a replica last stored: take it unless it is
	// older than the one in use.
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil || leaf.NotAfter.Before(cur.NotAfter) {
		return false
	}
	cert.Leaf = leaf
	if err := a.useCertIfValid(cert); err != nil {
		return false
	}
	a.log.Info("agent: using the credential another replica renewed and stored", "notAfter", leaf.NotAfter, "store", a.cfg.Store.String())
	return true
}

// renewLoop renews the credential when renewAt says, retrying with backoff
// on failure, until ctx ends.
func (a *Agent) renewLoop(ctx context.Context) {
	retry := a.cfg.RenewRetry
	if retry == 0 {
		retry = time.Minute
	}
	pause := retry
	for {
		leaf := a.cert.Load().Leaf
		at := a.renewAt(leaf)
		a.log.Debug("agent: credential renewal scheduled", "at", at, "notAfter", leaf.NotAfter)
		if !wait.Sleep(ctx, time.Until(at)) {
			return
		}
		if a.adoptStored(ctx) {
			continue
		}
		// One key for every attempt of this renewal: a retry after a
		// lost answer presents the same key, which the relay answers with
		// the same credential; a new key would look like a second holder.
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			a.log.Error("agent: generate a key for the renewal", "error", err)
			if !wait.Sleep(ctx, pause) {
				return
			}
			continue
		}
		for {
			err := a.renewOnce(ctx, key)
			if err == nil {
				pause = retry
				// Never renew again sooner than one retry interval, even
				// when RenewBefore exceeds the lifetime.
				if !wait.Sleep(ctx, retry) {
					return
				}
				break
			}
			if ctx.Err() != nil {
				return
			}
			left := time.Until(leaf.NotAfter).Round(time.Second)
			if left <= 0 {
				a.log.Error("agent: the credential has expired and cannot be renewed; rotate the cluster (tether-relay cluster rotate) and give the agent the new join token",
					"notAfter", leaf.NotAfter, "error", err)
			} else {
				a.log.Warn("agent: credential renewal failed; retrying", "error", err, "in", pause, "expiresIn", left)
			}
			if !wait.Sleep(ctx, pause) {
				return
			}
			pause = min(2*pause, time.Hour)
		}
	}
}

// renewOnce trades the current credential for a new one for key, keeps it
// in the store, and makes it the one in use.
func (a *Agent) renewOnce(ctx context.Context, key *ecdsa.PrivateKey) error {
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return fmt.Errorf("create CSR: %w", err)
	}
	conn, err := a.dialALPN(ctx, tunnel.RenewALPN)
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	_ = conn.SetDeadline(time.Now().Add(tunnel.DefaultHandshakeTimeout))
	if err := tunnel.WriteFrame(conn, &tunnel.Renew{CSR: csr}); err != nil {
		return err
	}
	var res tunnel.Renewed
	if err := tunnel.ReadFrame(conn, &res); err != nil {
		return fmt.Errorf("read the relay's answer: %w", err)
	}
	if !res.OK {
		return &tunnel.RefusedError{Frame: tunnel.FrameRenewed, Reason: res.Reason, Message: res.Message}
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode key: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	cert, err := tls.X509KeyPair([]byte(res.Certificate), keyPEM)
	if err != nil {
		return fmt.Errorf("the relay's certificate does not match the key: %w", err)
	}
	old := a.cert.Load().Leaf
	if err := a.useCertIfValid(cert); err != nil {
		return err
	}
	// The renewal replaced the old credential, which the relay accepts
	// only briefly more (and never renews again): keep trying to store the
	// new one, so that a restart, or a replica sharing the store, finds it.
	for attempt := 1; ; attempt++ {
		err := a.cfg.Store.Save(ctx, []byte(res.Certificate), keyPEM)
		if err == nil {
			break
		}
		if attempt == 5 || !wait.Sleep(ctx, time.Duration(attempt)*time.Second) {
			a.log.Error("agent: renewed, but could not keep the new credential: a restart would present the replaced one, which the relay refuses; fix the store", "store", a.cfg.Store.String(), "error", err)
			break
		}
	}
	a.log.Info("agent: credential renewed", "notAfter", a.CredentialNotAfter(), "previousNotAfter", old.NotAfter, "store", a.cfg.Store.String())
	return nil
}

// useCertIfValid is useCert for a certificate from the relay, which must
// also be valid now.
func (a *Agent) useCertIfValid(cert tls.Certificate) error {
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return fmt.Errorf("parse the renewed certificate: %w", err)
	}
	if now := time.Now(); now.Before(leaf.NotBefore) || !now.Before(leaf.NotAfter) {
		return errors.New("the relay issued a certificate that is not valid now (check the clocks of relay and agent)")
	}
	cert.Leaf = leaf
	return a.useCert(cert)
}

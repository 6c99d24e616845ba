package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/tether-k8s/tether/core/clustercert"
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

// renewAt returns when to renew leaf.
func (a *Agent) renewAt(leaf *x509.Certificate) time.Time {
	before := a.cfg.RenewBefore
	if before == 0 {
		before = leaf.NotAfter.Sub(leaf.NotBefore) / 3
	}
	return leaf.NotAfter.Add(-before)
}

// renewLoop renews the credential when renewAt says, retrying with backoff
// on failure, until ctx ends.
func (a *Agent) renewLoop(ctx context.Context) {
	retry := a.cfg.RenewRetry
	if retry == 0 {
		retry = time.Minute
	}
	wait := retry
	for {
		leaf := a.cert.Load().Leaf
		at := a.renewAt(leaf)
		a.log.Debug("agent: credential renewal scheduled", "at", at, "notAfter", leaf.NotAfter)
		if !sleepUntil(ctx, at) {
			return
		}
		for {
			err := a.renewOnce(ctx)
			if err == nil {
				wait = retry
				// Never renew again sooner than one retry interval, even
				// when RenewBefore exceeds the lifetime.
				if !sleepUntil(ctx, time.Now().Add(retry)) {
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
				a.log.Warn("agent: credential renewal failed; retrying", "error", err, "in", wait, "expiresIn", left)
			}
			if !sleepUntil(ctx, time.Now().Add(wait)) {
				return
			}
			wait = min(2*wait, time.Hour)
		}
	}
}

// renewOnce trades the current credential for a new one with a new key,
// keeps it in the store, and makes it the one in use.
func (a *Agent) renewOnce(ctx context.Context) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate key: %w", err)
	}
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
	if err := a.cfg.Store.Save(ctx, []byte(res.Certificate), keyPEM); err != nil {
		// The new credential works in this process; the old one, still
		// stored, stays valid until it expires, so a restart is safe.
		a.log.Error("agent: renewed, but could not keep the new credential; a restart falls back to the old one", "store", a.cfg.Store.String(), "error", err)
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

// sleepUntil waits until t or ctx ends; it reports whether t came.
func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}

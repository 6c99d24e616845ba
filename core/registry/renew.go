package registry

import (
	"crypto/x509"
	"fmt"
	"math/big"
	"slices"
	"strings"

	"github.com/tether-k8s/tether/core/clustercert"
)

// Renew signs a new credential for the cluster named by current, a
// certificate the caller has verified (its TLS peer), for the key in the
// DER-encoded CSR. The new certificate replaces current, which is accepted
// for Config.RenewalGrace more (for sessions dialled meanwhile) and never
// renews again:
//
//   - presented again with the same new key (the answer was lost and the
//     agent retries), it gets the same credential again, for as long as
//     that one is current;
//   - presented again with another key, two parties hold the credential:
//     one is a thief. Renew revokes every certificate of the chain, logs it
//     as an error and returns an error wrapping ErrCredentialReused and
//     ErrCredentialRevoked that says to rotate the cluster. Which party
//     renewed first does not matter: neither keeps a credential.
func (r *Registry) Renew(current *x509.Certificate, csrDER []byte) (Credential, error) {
	// Not VerifyPeer: a certificate renewed more than the grace ago is
	// refused there but must be recognised here, so that its reuse is
	// caught.
	id, err := clustercert.ClusterID(current)
	if err != nil {
		return Credential{}, fmt.Errorf("registry: renew: %w", err)
	}
	if err := current.CheckSignatureFrom(r.ca.cert); err != nil {
		return Credential{}, fmt.Errorf("registry: renew: certificate for cluster %s not signed by this relay's CA: %w", id, err)
	}
	csr, err := parseCSR(csrDER)
	if err != nil {
		return Credential{}, fmt.Errorf("registry: renew cluster %s: %w", id, err)
	}
	serial, key := serialHex(current), keyHash(csr)
	var (
		cred    Credential
		refused error
		revoked []string
		retried bool
	)
	err = r.update(func(tx tx) error {
		cred, refused, revoked, retried = Credential{}, nil, nil, false
		c, err := getCluster(tx, id)
		if err != nil {
			return err
		}
		i := slices.IndexFunc(c.Credentials, func(ci CredentialInfo) bool { return ci.Serial == serial })
		if i < 0 {
			refused = fmt.Errorf("registry: renew: cluster %s certificate %s: %w", id, serial, ErrCredentialRevoked)
			return nil
		}
		cur := c.Credentials[i]
		if now := r.cfg.Now(); !now.Before(cur.NotAfter) {
			refused = fmt.Errorf("registry: renew: cluster %s certificate %s: %w at %s", id, serial, ErrCredentialExpired, cur.NotAfter)
			return nil
		}
		if cur.Current() {
			var info CredentialInfo
			if cred, info, err = r.signCredential(id, csr); err != nil {
				return err
			}
			info.RenewedFrom = serial
			c.Credentials[i].SupersededBy, c.Credentials[i].SupersededAt = info.Serial, r.cfg.Now().UTC()
			c.Credentials = append(c.Credentials, info)
			r.prune(&c)
			return putCluster(tx, c)
		}
		j := slices.IndexFunc(c.Credentials, func(ci CredentialInfo) bool { return ci.Serial == cur.SupersededBy })
		if j >= 0 && c.Credentials[j].Key == key {
			next := c.Credentials[j]
			if !next.Current() {
				refused = fmt.Errorf("registry: renew: cluster %s certificate %s: %w: it was renewed as %s, which was renewed in turn; use the newest certificate", id, serial, ErrCredentialRevoked, next.Serial)
				return nil
			}
			// The same requester again: its answer was lost.
			retried = true
			cred, err = r.resign(id, csr, next)
			return err
		}
		if j < 0 {
			// The certificate it was renewed as is gone (rotated away,
			// dropped): nothing left to steal.
			refused = fmt.Errorf("registry: renew: cluster %s certificate %s: %w: renewed as %s, which is no longer valid", id, serial, ErrCredentialRevoked, cur.SupersededBy)
			return nil
		}
		revoked = chain(c.Credentials, serial)
		c.Credentials = slices.DeleteFunc(c.Credentials, func(ci CredentialInfo) bool { return slices.Contains(revoked, ci.Serial) })
		refused = fmt.Errorf("registry: renew: cluster %s: certificate %s was renewed twice, with two different keys: %w (%w). Every certificate of its chain is revoked (%s). Find where the credential was copied (the agent's Secret, a backup), then run `tether-relay cluster rotate %s` and give the agent the new join token",
			id, serial, ErrCredentialReused, ErrCredentialRevoked, strings.Join(revoked, ", "), id)
		return putCluster(tx, c)
	})
	if err != nil {
		return Credential{}, err
	}
	if len(revoked) > 0 {
		r.log.Error("registry: a credential was renewed twice with different keys: two parties hold it; its chain is revoked",
			"cluster", id, "serial", serial, "revoked", revoked)
	}
	if refused != nil {
		return Credential{}, refused
	}
	if retried {
		r.log.Info("registry: renewal retried with the same key; the same credential issued again", "cluster", id, "renewed", serial, "notAfter", cred.NotAfter)
	} else {
		r.log.Info("registry: credential renewed", "cluster", id, "renewed", serial, "notAfter", cred.NotAfter)
	}
	return cred, nil
}

// chain returns serial and every certificate linked to it by renewal,
// before and after it.
func chain(creds []CredentialInfo, serial string) []string {
	out := []string{serial}
	for k := 0; k < len(out); k++ {
		for _, ci := range creds {
			linked := ci.RenewedFrom == out[k] || ci.SupersededBy == out[k]
			if linked && !slices.Contains(out, ci.Serial) {
				out = append(out, ci.Serial)
			}
		}
	}
	return out
}

func parseSerial(s string) (*big.Int, bool) {
	n, ok := new(big.Int).SetString(s, 16)
	return n, ok && n.Sign() > 0
}

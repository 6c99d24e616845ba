package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// ErrNoCredential is returned by a CredentialStore that holds none yet.
var ErrNoCredential = errors.New("no credential stored")

// CredentialStore keeps the agent's key and certificate (PEM) across
// restarts, so that a join token is needed only once.
type CredentialStore interface {
	// Load returns the stored credential, or an error wrapping
	// ErrNoCredential.
	Load(ctx context.Context) (certPEM, keyPEM []byte, err error)
	// Save stores a credential, replacing any other.
	Save(ctx context.Context, certPEM, keyPEM []byte) error
	// String says where, for messages.
	String() string
}

// FileStore keeps the credential as tls.crt and tls.key (mode 0600) in Dir.
type FileStore struct{ Dir string }

// Load implements CredentialStore. Save renames the key, then the
// certificate, into place: a Load between the two (a replica sharing the
// directory renews) reads a pair that does not match, so Load reads again,
// a few times, until the pair matches.
func (f FileStore) Load(ctx context.Context) ([]byte, []byte, error) {
	for i := 0; ; i++ {
		cert, key, err := f.load()
		if err != nil || i == 4 {
			return cert, key, err
		}
		if _, err := tls.X509KeyPair(cert, key); err == nil {
			return cert, key, nil
		}
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (f FileStore) load() ([]byte, []byte, error) {
	cert, err := os.ReadFile(filepath.Join(f.Dir, CertFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("%s: %w", f, ErrNoCredential)
	}
	if err != nil {
		return nil, nil, err
	}
	key, err := os.ReadFile(filepath.Join(f.Dir, KeyFile))
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

// Save implements CredentialStore, writing each file atomically.
func (f FileStore) Save(_ context.Context, certPEM, keyPEM []byte) error {
	if err := os.MkdirAll(f.Dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", f.Dir, err)
	}
	for _, file := range []struct {
		name string
		data []byte
	}{{KeyFile, keyPEM}, {CertFile, certPEM}} {
		path := filepath.Join(f.Dir, file.name)
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, file.data, 0o600); err != nil {
			return fmt.Errorf("write %s: %w", tmp, err)
		}
		if err := os.Rename(tmp, path); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	return nil
}

func (f FileStore) String() string { return "directory " + f.Dir }

// SecretStore keeps the credential in a kubernetes.io/tls Secret, which the
// agent's service account may get, create and update (and nothing else).
type SecretStore struct {
	Client          kubernetes.Interface
	Namespace, Name string
}

// Load implements CredentialStore.
func (s SecretStore) Load(ctx context.Context) ([]byte, []byte, error) {
	sec, err := s.Client.CoreV1().Secrets(s.Namespace).Get(ctx, s.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil, fmt.Errorf("%s: %w", s, ErrNoCredential)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", s, err)
	}
	cert, key := sec.Data[corev1.TLSCertKey], sec.Data[corev1.TLSPrivateKeyKey]
	if len(cert) == 0 || len(key) == 0 {
		return nil, nil, fmt.Errorf("%s has no tls.crt and tls.key: %w", s, ErrNoCredential)
	}
	return cert, key, nil
}

// Save implements CredentialStore: it creates the Secret, or updates it.
func (s SecretStore) Save(ctx context.Context, certPEM, keyPEM []byte) error {
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: s.Name, Namespace: s.Namespace, Labels: map[string]string{"app.kubernetes.io/managed-by": "tether-agent"}},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{corev1.TLSCertKey: certPEM, corev1.TLSPrivateKeyKey: keyPEM},
	}
	secrets := s.Client.CoreV1().Secrets(s.Namespace)
	_, err := secrets.Create(ctx, sec, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		var cur *corev1.Secret
		if cur, err = secrets.Get(ctx, s.Name, metav1.GetOptions{}); err == nil {
			cur.Type, cur.Data = sec.Type, sec.Data
			_, err = secrets.Update(ctx, cur, metav1.UpdateOptions{})
		}
	}
	if err != nil {
		return fmt.Errorf("save %s: %w", s, err)
	}
	return nil
}

func (s SecretStore) String() string { return "secret " + s.Namespace + "/" + s.Name }

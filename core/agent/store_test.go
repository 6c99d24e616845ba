package agent_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tether-k8s/tether/core/agent"
)

func pemPair(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// A Load between Save's two renames (a replica renewing in the shared
// directory) reads the new key beside the old certificate; it reads again
// and returns the new pair, not a torn one.
func TestFileStoreLoadWaitsOutATornPair(t *testing.T) {
	dir := t.TempDir()
	oldCert, _ := pemPair(t)
	newCert, newKey := pemPair(t)
	if err := os.WriteFile(filepath.Join(dir, agent.CertFile), oldCert, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, agent.KeyFile), newKey, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		time.Sleep(30 * time.Millisecond)
		done <- os.WriteFile(filepath.Join(dir, agent.CertFile), newCert, 0o600)
	}()
	cert, key, err := agent.FileStore{Dir: dir}.Load(context.Background())
	if werr := <-done; werr != nil {
		t.Fatal(werr)
	}
	if err != nil || !bytes.Equal(cert, newCert) || !bytes.Equal(key, newKey) {
		t.Fatalf("Load returned a torn pair (err %v)", err)
	}
}

package registry

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
)

// ErrKeyEncryption is wrapped when the CA's private key in the store
// cannot be decrypted with the configured key-encryption keys: a missing
// or wrong key, or a damaged record. The registry never creates a new CA
// instead.
var ErrKeyEncryption = errors.New("cannot decrypt the relay's CA key")

// kekBytes is the size of a key-encryption key: AES-256.
const kekBytes = 32

// sealedAlg names the only envelope algorithm.
const sealedAlg = "A256GCM"

// KeyEncryptionKey is a 32-byte AES-256-GCM key that encrypts the CA's
// private key at rest, and its ID, which the stored envelope names so the
// right key is found after a rotation.
type KeyEncryptionKey struct {
	// ID names the key in the envelope. LoadKeyEncryptionKey derives it
	// from the key (a hash prefix), so it tells keys apart without
	// revealing them.
	ID string
	// Key is the AES-256 key.
	Key []byte
}

// NewKeyEncryptionKey returns key with its derived ID: "kek-" and the
// first 8 bytes of its SHA-256 in hex.
func NewKeyEncryptionKey(key []byte) (KeyEncryptionKey, error) {
	if len(key) != kekBytes {
		return KeyEncryptionKey{}, fmt.Errorf("registry: a key-encryption key has %d bytes, want %d", len(key), kekBytes)
	}
	sum := sha256.Sum256(key)
	return KeyEncryptionKey{ID: "kek-" + hex.EncodeToString(sum[:8]), Key: bytes.Clone(key)}, nil
}

// LoadKeyEncryptionKey reads a key-encryption key from path: 32 raw bytes
// (head -c 32 /dev/urandom), or 64 hex digits, or the base64 of 32 bytes
// (what a Kubernetes Secret's data holds before it is mounted), with or
// without a trailing newline. Others must have no access to the file, and
// its group at most read access (see kekModeRefused).
func LoadKeyEncryptionKey(path string) (KeyEncryptionKey, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return KeyEncryptionKey{}, fmt.Errorf("registry: key-encryption key: %w", err)
	}
	if perm := fi.Mode().Perm(); kekModeRefused(perm) && fi.Mode().IsRegular() {
		return KeyEncryptionKey{}, fmt.Errorf("registry: key-encryption key %s has mode %04o (%v): %s; want 0600 or 0400, or 0640 or 0440 (group read only, as the kubelet mounts a Secret for a pod with an fsGroup): chmod 600 %s, or in a pod give the Secret volume defaultMode 0440 or 0400",
			path, uint32(perm), perm, kekModeProblem(perm), path)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return KeyEncryptionKey{}, fmt.Errorf("registry: key-encryption key: %w", err)
	}
	key, err := decodeKEK(raw)
	if err != nil {
		return KeyEncryptionKey{}, fmt.Errorf("registry: key-encryption key %s: %w", path, err)
	}
	return NewKeyEncryptionKey(key)
}

// kekGroupRead is the one bit beyond the owner's a key-encryption key's
// file may have: the kubelet mounts a Secret's files root-owned, with
// group read for the pod's fsGroup (0440), and that group is the relay's.
const kekGroupRead = 0o040

// kekModeRefused reports whether perm lets anyone but the owner and a
// reading group at the key: any bit for others, or group write or execute.
func kekModeRefused(perm os.FileMode) bool {
	return perm&0o077&^kekGroupRead != 0
}

// kekModeProblem says what perm lets others or the group do, for the error.
func kekModeProblem(perm os.FileMode) string {
	var p []string
	if perm&0o030 != 0 {
		p = append(p, "its group may write or execute it")
	}
	if perm&0o007 != 0 {
		p = append(p, "others may access it")
	}
	return strings.Join(p, ", and ")
}

func decodeKEK(raw []byte) ([]byte, error) {
	if len(raw) == kekBytes {
		return raw, nil
	}
	text := strings.TrimSpace(string(raw))
	if b, err := hex.DecodeString(text); err == nil && len(b) == kekBytes {
		return b, nil
	}
	if b, err := base64.StdEncoding.DecodeString(text); err == nil && len(b) == kekBytes {
		return b, nil
	}
	return nil, fmt.Errorf("%d bytes that are neither 32 raw bytes, 64 hex digits nor the base64 of 32 bytes; create one with `head -c 32 /dev/urandom > FILE`", len(raw))
}

// sealed is the stored form of an encrypted CA key.
type sealed struct {
	Alg   string `json:"alg"`
	KeyID string `json:"kid"`
	Nonce []byte `json:"nonce"`
	Data  []byte `json:"data"`
}

// sealAAD binds an envelope to its purpose and its key ID.
func sealAAD(kid string) []byte {
	return []byte("tether-relay CA private key, " + sealedAlg + ", " + kid)
}

// seal encrypts plaintext with k.
func seal(k KeyEncryptionKey, plaintext []byte) ([]byte, error) {
	aead, err := newGCM(k.Key)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("registry: nonce: %w", err)
	}
	env := sealed{Alg: sealedAlg, KeyID: k.ID, Nonce: nonce, Data: aead.Seal(nil, nonce, plaintext, sealAAD(k.ID))}
	out, err := json.Marshal(env)
	if err != nil {
		return nil, fmt.Errorf("registry: encode encrypted CA key: %w", err)
	}
	return out, nil
}

// unseal decrypts an envelope with whichever of keys it names, and says
// which key that was.
func unseal(keys []KeyEncryptionKey, raw []byte) (plaintext []byte, kid string, err error) {
	var env sealed
	if err := json.Unmarshal(raw, &env); err != nil || env.Alg == "" {
		return nil, "", fmt.Errorf("registry: %w: the stored CA key is not an encrypted envelope (was it written by a relay without a key-encryption key?)", ErrKeyEncryption)
	}
	if env.Alg != sealedAlg {
		return nil, "", fmt.Errorf("registry: %w: envelope algorithm %q, want %s", ErrKeyEncryption, env.Alg, sealedAlg)
	}
	ids := make([]string, 0, len(keys))
	for _, k := range keys {
		ids = append(ids, k.ID)
		if k.ID != env.KeyID {
			continue
		}
		aead, err := newGCM(k.Key)
		if err != nil {
			return nil, "", err
		}
		pt, err := aead.Open(nil, env.Nonce, env.Data, sealAAD(env.KeyID))
		if err != nil {
			return nil, "", fmt.Errorf("registry: %w: key %s does not open it (a different key with the same ID, or the record was altered)", ErrKeyEncryption, k.ID)
		}
		return pt, k.ID, nil
	}
	return nil, "", fmt.Errorf("registry: %w: it is encrypted with key %s, and the configured keys are %s: pass the key-encryption key the relay was started with (--ca-key-encryption-key-file)",
		ErrKeyEncryption, env.KeyID, strings.Join(ids, ", "))
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("registry: key-encryption key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("registry: key-encryption key: %w", err)
	}
	return aead, nil
}

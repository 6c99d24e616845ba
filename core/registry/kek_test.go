package registry

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLoadKeyEncryptionKeyModes checks which file modes the key-encryption
// key may have: the owner's bits and group read (a Secret the kubelet
// mounts with an fsGroup is 0440), never group write or execute, never any
// bit for others; and that a refusal names the file, its mode and the fix.
func TestLoadKeyEncryptionKeyModes(t *testing.T) {
	key := make([]byte, kekBytes)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		mode os.FileMode
		ok   bool
		why  string // in the refusal
	}{
		{0o600, true, ""},
		{0o400, true, ""},
		{0o640, true, ""}, // group read: an fsGroup's Secret, 0640 with defaultMode 0600
		{0o440, true, ""}, // what the kubelet mounts with fsGroup and defaultMode 0400 or 0440
		{0o700, true, ""},
		{0o660, false, "its group may write or execute it"},
		{0o620, false, "its group may write or execute it"},
		{0o610, false, "its group may write or execute it"},
		{0o650, false, "its group may write or execute it"},
		{0o644, false, "others may access it"},
		{0o604, false, "others may access it"},
		{0o602, false, "others may access it"},
		{0o601, false, "others may access it"},
		{0o444, false, "others may access it"},
		{0o666, false, "its group may write or execute it, and others may access it"},
		{0o777, false, "its group may write or execute it, and others may access it"},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%04o", uint32(tc.mode)), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "kek")
			if err := os.WriteFile(path, key, 0o600); err != nil {
				t.Fatal(err)
			}
			// Chmod, not WriteFile's mode: the umask would clear bits.
			if err := os.Chmod(path, tc.mode); err != nil {
				t.Fatal(err)
			}
			k, err := LoadKeyEncryptionKey(path)
			if tc.ok {
				if err != nil {
					t.Fatalf("mode %04o refused: %v", uint32(tc.mode), err)
				}
				if len(k.Key) != kekBytes || k.ID == "" {
					t.Fatalf("mode %04o: loaded %d bytes, ID %q", uint32(tc.mode), len(k.Key), k.ID)
				}
				return
			}
			if err == nil {
				t.Fatalf("mode %04o accepted", uint32(tc.mode))
			}
			for _, want := range []string{path, fmt.Sprintf("mode %04o", uint32(tc.mode)), tc.why, "chmod 600 " + path, "defaultMode 0440"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error does not say %q: %v", want, err)
				}
			}
		})
	}
}

// TestLoadKeyEncryptionKeyThroughASymlink checks a key mounted as the
// kubelet mounts a Secret's key (a symlink into ..data) is judged by the
// file's mode, not the link's.
func TestLoadKeyEncryptionKeyThroughASymlink(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "..2026_12_02_13_00_00.000000001")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "kek"), make([]byte, kekBytes), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Base(data), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "kek")
	if err := os.Symlink(filepath.Join("..data", "kek"), link); err != nil {
		t.Fatal(err)
	}
	for mode, ok := range map[os.FileMode]bool{0o440: true, 0o444: false} {
		if err := os.Chmod(filepath.Join(data, "kek"), mode); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadKeyEncryptionKey(link); (err == nil) != ok {
			t.Errorf("mode %04o behind a symlink: err %v, want accepted %t", uint32(mode), err, ok)
		}
	}
}

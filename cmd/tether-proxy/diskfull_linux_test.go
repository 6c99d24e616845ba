package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// fullFilesystem mounts a small tmpfs, writes a user's kubeconfig in it
// and fills what is left. It needs root (to mount) and skips without.
func fullFilesystem(t *testing.T) (path string, orig []byte) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs needs root")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=64k,mode=0700"); err != nil {
		t.Skipf("mount a tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	path = filepath.Join(dir, "config")
	orig = writeUserKubeconfig(t, path)
	// Just under one page, so that writing it again with tether's entries
	// needs a page more than truncating it frees.
	cfg, err := clientcmd.Load(orig)
	if err != nil {
		t.Fatal(err)
	}
	for pad := 0; len(orig) < 4096-200; pad += 16 {
		cfg.Clusters["padding"] = &clientcmdapi.Cluster{Server: "https://padding", CertificateAuthorityData: bytes.Repeat([]byte{'p'}, pad)}
		if orig, err = clientcmd.Write(*cfg); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(path, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	filler, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	defer filler.Close()
	block := bytes.Repeat([]byte{'x'}, 512)
	for {
		if _, err := filler.Write(block); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill %s: %v", dir, err)
			}
			break
		}
	}
	return path, orig
}

// TestKubeconfigDiskFull: a write that cannot complete because the disk is
// full leaves the kubeconfig as it was (a temporary file renamed into
// place, never the file truncated and half rewritten).
func TestKubeconfigDiskFull(t *testing.T) {
	t.Run("tether-proxy kubeconfig", func(t *testing.T) {
		path, orig := fullFilesystem(t)
		_, err := runKubeconfig(t, "--kubeconfig", path)
		wantDiskFullRefusal(t, err, path, orig)
	})
	t.Run("tether-proxy", func(t *testing.T) {
		path, orig := fullFilesystem(t)
		_, err := proxyWrite(t, deadProxy, nil, "--kubeconfig", path)
		wantDiskFullRefusal(t, err, path, orig)
	})
}

func wantDiskFullRefusal(t *testing.T, err error, path string, orig []byte) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), path) || !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("got %v, want an error naming %s and ENOSPC", err, path)
	}
	if got := mustRead(t, path); !bytes.Equal(got, orig) {
		t.Errorf("the failed write changed %s (%d bytes, was %d):\n%s", path, len(got), len(orig), got)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	for _, e := range entries {
		if e.Name() != "config" && e.Name() != "filler" {
			t.Errorf("left behind in %s: %s", filepath.Dir(path), e.Name())
		}
	}
}

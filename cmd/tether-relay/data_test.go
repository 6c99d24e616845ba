package main

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runRelay runs tether-relay's root command with args and returns what it
// printed.
func runRelay(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCommand()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

// A read-only or managing command given a --data with no relay (a typo, or
// run from another directory) says so and creates nothing; cluster create
// creates the relay, directory included, and the same commands then work.
func TestCommandsRefuseAMissingDataFile(t *testing.T) {
	data := filepath.Join(t.TempDir(), "state", "relay.db")
	for _, args := range [][]string{{"ca"}, {"cluster", "list"}, {"cluster", "policy", "prod"}, {"cluster", "rotate", "prod"}} {
		out, err := runRelay(t, append([]string{"--data", data}, args...)...)
		if err == nil {
			t.Fatalf("tether-relay %s on a missing --data succeeded:\n%s", strings.Join(args, " "), out)
		}
		if !strings.Contains(err.Error(), "no relay state there") || !strings.Contains(err.Error(), data) {
			t.Errorf("tether-relay %s: the error does not say the --data file holds no relay: %v", strings.Join(args, " "), err)
		}
		if _, err := os.Stat(filepath.Dir(data)); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("tether-relay %s created %s: %v", strings.Join(args, " "), filepath.Dir(data), err)
		}
	}
	if out, err := runRelay(t, "--data", data, "cluster", "create", "prod"); err != nil {
		t.Fatalf("cluster create: %v\n%s", err, out)
	}
	out, err := runRelay(t, "--data", data, "ca")
	if err != nil || !strings.Contains(out, "BEGIN CERTIFICATE") {
		t.Fatalf("ca once the relay exists: %v\n%s", err, out)
	}
}

// The default --data is never in the working directory.
func TestDefaultDataFile(t *testing.T) {
	t.Setenv("STATE_DIRECTORY", "/var/lib/private/tether:/var/lib/other")
	if got := defaultDataFile(); got != "/var/lib/private/tether/relay.db" {
		t.Errorf("under systemd: %s", got)
	}
	t.Setenv("STATE_DIRECTORY", "")
	t.Setenv("XDG_STATE_HOME", "/home/u/.state")
	got := defaultDataFile()
	want := "/home/u/.state/tether-relay/relay.db"
	if os.Geteuid() == 0 {
		want = "/var/lib/tether-relay/relay.db"
	}
	if got != want {
		t.Errorf("default --data: %s, want %s", got, want)
	}
	if !filepath.IsAbs(got) {
		t.Errorf("default --data %s is relative to the working directory", got)
	}
}

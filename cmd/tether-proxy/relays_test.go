package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A relay remembered at login is what a later command without --relay
// uses; --relay NAME picks a remembered one; a --relay URL gets the CA
// remembered with it; an unknown name lists the remembered ones.
func TestRememberedRelays(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	t.Setenv("HOME", t.TempDir())
	var u, ca string
	if err := recallRelay(&u, &ca); err != nil || u != "" || ca != "" {
		t.Fatalf("nothing remembered: %q %q %v", u, ca, err)
	}
	caFile := filepath.Join(t.TempDir(), "prod-ca.pem")
	if name, err := rememberRelay("https://relay.prod.example:8443/", caFile); err != nil || name != "relay.prod.example:8443" {
		t.Fatalf("remember prod: %q %v", name, err)
	}
	if _, err := rememberRelay("https://relay.lab.example", ""); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct{ url, ca, wantURL, wantCA string }{
		"the default is the last logged in to": {"", "", "https://relay.lab.example", ""},
		"by name":                              {"relay.prod.example:8443", "", "https://relay.prod.example:8443", caFile},
		"a URL gets its CA":                    {"https://relay.prod.example:8443", "", "https://relay.prod.example:8443", caFile},
		"a given CA wins":                      {"relay.prod.example:8443", "/other.pem", "https://relay.prod.example:8443", "/other.pem"},
		"a URL not remembered stays as it is":  {"https://elsewhere.example", "", "https://elsewhere.example", ""},
	} {
		u, ca := tc.url, tc.ca
		if err := recallRelay(&u, &ca); err != nil || u != tc.wantURL || ca != tc.wantCA {
			t.Errorf("%s: %q %q %v, want %q %q", name, u, ca, err, tc.wantURL, tc.wantCA)
		}
	}
	u, ca = "relay.typo", ""
	if err := recallRelay(&u, &ca); err == nil || !strings.Contains(err.Error(), "remembered: relay.lab.example, relay.prod.example:8443") {
		t.Errorf("an unknown name: %v", err)
	}
	file, _ := relaysFile()
	if st, err := os.Stat(file); err != nil || st.Mode().Perm()&0o077 != 0 {
		t.Errorf("%s: %v, mode %v; want private", file, err, st.Mode())
	}
	if err := os.WriteFile(file, []byte("not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := recallRelay(&u, &ca); err == nil || !strings.Contains(err.Error(), "fix or delete it") {
		t.Errorf("a damaged file: %v", err)
	}
}

// TestMain keeps the tests away from the developer's own remembered relays
// and logins.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tether-proxy-test-config-")
	if err != nil {
		panic(err)
	}
	os.Setenv("XDG_CONFIG_HOME", dir)
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

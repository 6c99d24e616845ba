package tokensource_test

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-k8s/tether/core/tokensource"
)

func TestFileIsReadOnEveryCall(t *testing.T) {
	p := filepath.Join(t.TempDir(), "token")
	src := tokensource.File("--token-file", p)
	if _, err := src(); err == nil || !strings.Contains(err.Error(), "--token-file") {
		t.Fatalf("missing file: %v", err)
	}
	for _, want := range []string{"first", "second"} {
		if err := os.WriteFile(p, []byte("  "+want+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if got, err := src(); err != nil || got != want {
			t.Fatalf("src() = %q, %v; want %q", got, err, want)
		}
	}
	if err := os.WriteFile(p, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := src(); err == nil || !strings.Contains(err.Error(), "is empty") {
		t.Fatalf("empty file: %v", err)
	}
}

func TestEnv(t *testing.T) {
	src := tokensource.Env("--token-from env:CI_TOKEN", "CI_TOKEN")
	t.Setenv("CI_TOKEN", "")
	if _, err := src(); err == nil || !strings.Contains(err.Error(), "CI_TOKEN is empty or not set") {
		t.Fatalf("unset: %v", err)
	}
	t.Setenv("CI_TOKEN", " tok ")
	if got, err := src(); err != nil || got != "tok" {
		t.Fatalf("src() = %q, %v", got, err)
	}
}

func TestCommandIsCached(t *testing.T) {
	dir := t.TempDir()
	counter := filepath.Join(dir, "n")
	// Each run appends a line, so the number of lines counts the runs.
	src := tokensource.Command("--token-command", "echo x >> "+counter+"; echo tok")
	for range 3 {
		if got, err := src(); err != nil || got != "tok" {
			t.Fatalf("src() = %q, %v", got, err)
		}
	}
	b, _ := os.ReadFile(counter)
	if n := strings.Count(string(b), "\n"); n != 1 {
		t.Fatalf("the command ran %d times, want 1 (cached)", n)
	}
	if _, err := tokensource.Command("--token-command", "true")(); err == nil || !strings.Contains(err.Error(), "printed no token") {
		t.Fatalf("no output: %v", err)
	}
	if _, err := tokensource.Command("--token-command", "exit 3")(); err == nil || !strings.Contains(err.Error(), "--token-command") {
		t.Fatalf("failing command: %v", err)
	}
}

func TestUnverifiedExpiry(t *testing.T) {
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	exp := time.Unix(2000000000, 0)
	if got, ok := tokensource.UnverifiedExpiry(enc(`{}`) + "." + enc(`{"exp":2000000000}`) + ".sig"); !ok || !got.Equal(exp) {
		t.Fatalf("UnverifiedExpiry = %v, %v", got, ok)
	}
	for _, bad := range []string{"", "a.b", "....", "a." + enc(`{"exp":-1}`) + ".c", "a." + enc(`{"exp":"soon"}`) + ".c", "a.!!!.c", "a." + enc(`[]`) + ".c"} {
		if _, ok := tokensource.UnverifiedExpiry(bad); ok {
			t.Errorf("UnverifiedExpiry(%q) reported an expiry", bad)
		}
	}
}

// FuzzUnverifiedExpiry: raw tokens never make the unverified reader panic,
// and an expiry it reports is positive; the hint a refusal carries
// (ExpiredHint) says the token expired only when that expiry has passed,
// and never quotes the token or a control character.
func FuzzUnverifiedExpiry(f *testing.F) {
	f.Add("a.eyJleHAiOjF9.c")
	f.Add("....")
	f.Add(strings.Repeat(".", 1000))
	f.Add("a." + base64.RawURLEncoding.EncodeToString([]byte(`{"exp":9223372036854775807}`)) + ".c")
	f.Add("a." + base64.RawURLEncoding.EncodeToString([]byte(`{"exp":1e3}`)) + ".c")
	now := time.Unix(1_800_000_000, 0)
	f.Fuzz(func(t *testing.T, tok string) {
		exp, ok := tokensource.UnverifiedExpiry(tok)
		if ok && exp.Unix() <= 0 {
			t.Fatalf("expiry %v from %q", exp, tok)
		}
		hint := tokensource.ExpiredHint(tok, now)
		switch {
		case hint != "" && (!ok || exp.After(now)):
			t.Fatalf("hint %q for %q (expiry %v, %v)", hint, tok, exp, ok)
		case hint == "" && ok && !exp.After(now):
			t.Fatalf("no hint for %q, which expired at %v", tok, exp)
		case len(tok) >= 8 && strings.Contains(hint, tok), strings.ContainsFunc(hint, func(r rune) bool { return r < ' ' || r == 0x7f }):
			t.Fatalf("hint %q quotes the token or a control character", hint)
		}
	})
}

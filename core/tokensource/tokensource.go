package tokensource

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// Source returns the caller's current token. It is called for every new
// connection (or request), so a refreshed token is picked up.
type Source func() (string, error)

// Static returns tok on every call.
func Static(tok string) Source { return func() (string, error) { return tok, nil } }

// File reads the token in path on every call (surrounding white space
// trimmed), so a rotated token is picked up at once. what names the setting
// in errors (a flag, such as "--token-file").
func File(what, path string) Source {
	return func() (string, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("%s: %w", what, err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return "", fmt.Errorf("%s %s is empty", what, path)
		}
		return tok, nil
	}
}

// Env reads the environment variable name on every call. what names the
// setting in errors.
func Env(what, name string) Source {
	return func() (string, error) {
		tok := strings.TrimSpace(os.Getenv(name))
		if tok == "" {
			return "", fmt.Errorf("%s: the variable %s is empty or not set", what, name)
		}
		return tok, nil
	}
}

// CommandTTL is how long Command reuses a command's output.
const CommandTTL = time.Minute

// Command runs command with sh -c when a token is needed, and reuses its
// output for CommandTTL. what names the setting in errors.
func Command(what, command string) Source {
	var (
		mu     sync.Mutex
		cached string
		at     time.Time
	)
	return func() (string, error) {
		mu.Lock()
		defer mu.Unlock()
		if cached != "" && time.Since(at) < CommandTTL {
			return cached, nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "sh", "-c", command).Output()
		if err != nil {
			return "", fmt.Errorf("%s: %w", what, err)
		}
		tok := strings.TrimSpace(string(out))
		if tok == "" {
			return "", errors.New(what + " printed no token")
		}
		cached, at = tok, time.Now()
		return tok, nil
	}
}

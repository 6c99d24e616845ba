package login

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// ErrNotLoggedIn is returned when the cache holds no login for the issuer
// and client (or no login at all).
var ErrNotLoggedIn = errors.New("not logged in")

// Entry is one cached login. Its file holds secrets: the ID token and the
// refresh token.
type Entry struct {
	Issuer   string `json:"issuer"`
	ClientID string `json:"clientID"`
	// IssuerCA is the PEM bundle that verifies the issuer, if not the
	// system's roots.
	IssuerCA string `json:"issuerCA,omitempty"`
	// Scopes asked for at login, asked again at refresh.
	Scopes       []string  `json:"scopes,omitempty"`
	IDToken      string    `json:"idToken"`
	RefreshToken string    `json:"refreshToken,omitempty"`
	Expiry       time.Time `json:"expiry"`
	// IssuedAt is the ID token's iat (or when it was received); with
	// Expiry it gives the token's lifetime.
	IssuedAt time.Time `json:"issuedAt"`
	Subject  string    `json:"subject"`
	Email    string    `json:"email,omitempty"`
	// LoginCommand logs in again, for the error of an expired login.
	LoginCommand string `json:"loginCommand,omitempty"`
}

// Who names the logged-in user for messages: email, else subject.
func (e *Entry) Who() string {
	if e.Email != "" {
		return e.Email
	}
	return e.Subject
}

// current is the file naming the login used when no issuer is given.
const current = "current.json"

// Cache is the directory of cached logins.
type Cache struct{ Dir string }

// key names the files of an issuer and client.
func key(issuer, clientID string) string {
	h := sha256.Sum256([]byte(issuer + "\n" + clientID))
	return hex.EncodeToString(h[:12])
}

// Path is the cache file of issuer and clientID.
func (c Cache) Path(issuer, clientID string) string {
	return filepath.Join(c.Dir, key(issuer, clientID)+".json")
}

func (c Cache) lockPath(issuer, clientID string) string {
	return filepath.Join(c.Dir, key(issuer, clientID)+".lock")
}

// mkdir creates the cache directory, mode 0700.
func (c Cache) mkdir() error {
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return fmt.Errorf("login: token cache %s: %w", c.Dir, err)
	}
	return nil
}

// readPrivate reads a cache file, refusing one that group or others may
// read or write.
func readPrivate(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if err := checkPrivate(path, st); err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("login: the token cache file %s is not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxDocument+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxDocument {
		return nil, fmt.Errorf("login: %s is larger than %d bytes", path, maxDocument)
	}
	return b, nil
}

// Load returns the cached login of issuer and clientID, ErrNotLoggedIn if
// there is none.
func (c Cache) Load(issuer, clientID string) (*Entry, error) {
	path := c.Path(issuer, clientID)
	b, err := readPrivate(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("login: %w at %s (client %s)", ErrNotLoggedIn, issuer, clientID)
	}
	if err != nil {
		return nil, err
	}
	var e Entry
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("login: the token cache file %s is damaged (%w); log in again", path, err)
	}
	if e.Issuer != issuer || e.ClientID != clientID {
		return nil, fmt.Errorf("login: the token cache file %s holds another login (%s, %s)", path, e.Issuer, e.ClientID)
	}
	return &e, nil
}

// Current returns the issuer and client ID of the last login, for callers
// that name none.
func (c Cache) Current() (issuer, clientID string, err error) {
	b, err := readPrivate(filepath.Join(c.Dir, current))
	if errors.Is(err, fs.ErrNotExist) {
		return "", "", fmt.Errorf("login: %w (no login cached in %s)", ErrNotLoggedIn, c.Dir)
	}
	if err != nil {
		return "", "", err
	}
	var cur struct{ Issuer, ClientID string }
	if err := json.Unmarshal(b, &cur); err != nil || cur.Issuer == "" || cur.ClientID == "" {
		return "", "", fmt.Errorf("login: %s is damaged; log in again", filepath.Join(c.Dir, current))
	}
	return cur.Issuer, cur.ClientID, nil
}

// Store writes e to its cache file (0600, atomically: a temporary file
// renamed into place) and makes it the current login.
func (c Cache) Store(e *Entry) error {
	if err := c.store(e); err != nil {
		return err
	}
	cur, _ := json.Marshal(struct{ Issuer, ClientID string }{e.Issuer, e.ClientID})
	return writeAtomic(c.Dir, current, cur)
}

// store writes e to its cache file only.
func (c Cache) store(e *Entry) error {
	if err := c.mkdir(); err != nil {
		return err
	}
	b, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return fmt.Errorf("login: encode the cache entry: %w", err)
	}
	return writeAtomic(c.Dir, filepath.Base(c.Path(e.Issuer, e.ClientID)), b)
}

// Remove deletes the cached login of issuer and clientID (and makes no
// login current if it was). It reports whether there was one.
func (c Cache) Remove(issuer, clientID string) (bool, error) {
	err := os.Remove(c.Path(issuer, clientID))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("login: remove the cached login: %w", err)
	}
	// The lock file stays: removing it while another process waits on it
	// would let a third lock a new file beside the two.
	if i, cl, cerr := c.Current(); cerr == nil && i == issuer && cl == clientID {
		_ = os.Remove(filepath.Join(c.Dir, current))
	}
	return true, nil
}

// writeAtomic writes b to dir/name through a temporary file in dir, mode
// 0600, synced and renamed into place, so a reader sees the old file or the
// new one, never half of one.
func writeAtomic(dir, name string, b []byte) error {
	tmp, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return fmt.Errorf("login: write the token cache: %w", err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename, a no-op
	if err := tmp.Chmod(0o600); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("login: write the token cache: %w", err)
	}
	if _, err := tmp.Write(b); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("login: write the token cache: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("login: write the token cache: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("login: write the token cache: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("login: write the token cache: %w", err)
	}
	return nil
}

// lock takes an exclusive flock on the lock file of issuer and clientID,
// waiting for another process that holds it; unlock releases it.
func (c Cache) lock(issuer, clientID string) (unlock func(), err error) {
	if err := c.mkdir(); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(c.lockPath(issuer, clientID), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("login: the token cache's lock: %w", err)
	}
	if err := lockFile(f); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("login: lock the token cache: %w", err)
	}
	return func() {
		_ = unlockFile(f)
		_ = f.Close()
	}, nil
}

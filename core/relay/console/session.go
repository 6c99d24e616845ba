package console

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/tether-k8s/tether/core/identity"
)

// The console's cookies. The __Host- prefix makes browsers refuse them
// unless Secure, on Path=/ and without a Domain: no other host, and no
// page served over plain HTTP, can set or read them.
const (
	sessionCookie = "__Host-tether-console"
	loginCookie   = "__Host-tether-console-login"
)

// session is one signed-in person: who the ID token said, until it
// expires. The token itself is not kept.
type session struct {
	who     identity.Result
	expires time.Time
	// csrf is the logout form's token, bound to this session.
	csrf string
}

// sessions are the signed-in sessions, by the SHA-256 of their cookie.
type sessions struct {
	mu  sync.Mutex
	m   map[[32]byte]*session
	max int
}

func newSessions(max int) *sessions { return &sessions{m: map[[32]byte]*session{}, max: max} }

// errTooManySessions: the console holds Config.MaxSessions live sessions.
var errTooManySessions = errors.New("console: too many signed-in sessions on this relay")

// add keeps s and returns its cookie value.
func (ss *sessions) add(s *session, now time.Time) (string, error) {
	id := randomString(32)
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if len(ss.m) >= ss.max {
		for k, v := range ss.m {
			if !now.Before(v.expires) {
				delete(ss.m, k)
			}
		}
		if len(ss.m) >= ss.max {
			return "", errTooManySessions
		}
	}
	ss.m[sha256.Sum256([]byte(id))] = s
	return id, nil
}

// get returns the live session of cookie value id, or nil; an expired one
// is forgotten.
func (ss *sessions) get(id string, now time.Time) *session {
	k := sha256.Sum256([]byte(id))
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s := ss.m[k]
	if s == nil {
		return nil
	}
	if !now.Before(s.expires) {
		delete(ss.m, k)
		return nil
	}
	return s
}

func (ss *sessions) remove(id string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.m, sha256.Sum256([]byte(id)))
}

// sessionOf returns the request's live session, or nil.
func (c *Console) sessionOf(r *http.Request) *session {
	ck, err := r.Cookie(sessionCookie)
	if err != nil || ck.Value == "" || len(ck.Value) > 100 {
		return nil
	}
	return c.sessions.get(ck.Value, c.cfg.Now())
}

// setCookie sets (maxAge > 0) or clears (maxAge < 0) a console cookie:
// HttpOnly, so no script reads it; Secure; SameSite=Lax, so a cross-site
// POST does not carry it, while the issuer's redirect back to the
// callback (a top-level GET) does.
func setCookie(w http.ResponseWriter, name, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: value, Path: "/", MaxAge: maxAge, HttpOnly: true, Secure: true, SameSite: http.SameSiteLaxMode})
}

// pending is a sign-in in progress, sealed in loginCookie.
type pending struct {
	State    string    `json:"s"`
	Nonce    string    `json:"n"`
	Verifier string    `json:"v"`
	Expires  time.Time `json:"e"`
}

// sealer seals cookies with AES-256-GCM under a key of this process.
type sealer struct{ aead cipher.AEAD }

func newSealer(key []byte) (*sealer, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("console: cookie cipher: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("console: cookie cipher: %w", err)
	}
	return &sealer{aead: aead}, nil
}

// seal encrypts v (JSON) for the cookie called name: a sealed value opens
// only under the same name.
func (s *sealer) seal(name string, v any) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", fmt.Errorf("console: seal a cookie: %w", err)
	}
	nonce := make([]byte, s.aead.NonceSize())
	_, _ = rand.Read(nonce)
	return base64.RawURLEncoding.EncodeToString(s.aead.Seal(nonce, nonce, b, []byte(name))), nil
}

// open decrypts a value seal made for name into v.
func (s *sealer) open(name, value string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(value)
	if err != nil || len(b) < s.aead.NonceSize() {
		return errors.New("console: a cookie that is not the console's")
	}
	plain, err := s.aead.Open(nil, b[:s.aead.NonceSize()], b[s.aead.NonceSize():], []byte(name))
	if err != nil {
		return errors.New("console: a cookie the console did not seal (or sealed before the relay restarted)")
	}
	return json.Unmarshal(plain, v)
}

// randomString returns n random bytes from crypto/rand, base64url.
func randomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

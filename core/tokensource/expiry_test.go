package tokensource

import (
	"encoding/base64"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestExpiredHint(t *testing.T) {
	jwt := func(exp int64) string {
		return "e30." + base64.RawURLEncoding.EncodeToString([]byte(`{"exp":`+strconv.FormatInt(exp, 10)+`}`)) + ".c2ln"
	}
	now := time.Unix(1767225600, 0)
	if h := ExpiredHint(jwt(now.Unix()-60), now); !strings.Contains(h, "expired at 2025-12-31T23:59:00Z: log in again") {
		t.Errorf("an expired token: %q", h)
	}
	for name, tok := range map[string]string{"a live token": jwt(now.Unix() + 60), "not a JWT": "opaque-token", "no exp": "e30.e30.c2ln"} {
		if h := ExpiredHint(tok, now); h != "" {
			t.Errorf("%s: %q, want no hint", name, h)
		}
	}
}

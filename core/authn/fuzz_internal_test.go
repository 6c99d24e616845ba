package authn

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"github.com/tether-k8s/tether/core/identity"
)

// jwtOf is an unsigned token shape with the given claims.
func jwtOf(claims map[string]any) string {
	p, _ := json.Marshal(claims)
	return "eyJhbGciOiJFUzI1NiJ9." + base64.RawURLEncoding.EncodeToString(p) + ".c2ln"
}

func isBase64URL(s string) bool {
	return s != "" && strings.Trim(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") == ""
}

// FuzzTokenPrecheck feeds raw tokens to the checks made before any
// parsing: an accepted token is at most MaxTokenBytes, three non-empty
// base64url parts whose payload is a JSON object, its aud read as a string
// or an array, and its exp, when read as an integer, the one in the
// payload; no error quotes the token.
func FuzzTokenPrecheck(f *testing.F) {
	f.Add(jwtOf(map[string]any{"iss": "https://issuer.example", "sub": "alice", "aud": "cluster-a", "exp": 1700000000}))
	f.Add(jwtOf(map[string]any{"aud": []string{"a", "b"}, "exp": "soon"}))
	f.Add(jwtOf(map[string]any{"aud": 7, "exp": 1e300}))
	f.Add("a.b.c")
	f.Add("...")
	f.Add(strings.Repeat(".", 1000))
	f.Add("a.b.c.d")
	f.Add("eyJ9.bnVsbA.c2ln") // payload "null"
	const max = 512
	a := &Authenticator{cfg: Config{MaxTokenBytes: max}}
	f.Fuzz(func(t *testing.T, token string) {
		c, err := a.precheck(token)
		if err != nil {
			if len(token) >= 8 && strings.Contains(err.Error(), token) {
				t.Fatalf("the error quotes the token: %v", err)
			}
			return
		}
		parts := strings.Split(token, ".")
		if len(token) > max || len(parts) != 3 || !isBase64URL(parts[0]) || !isBase64URL(parts[1]) || !isBase64URL(parts[2]) {
			t.Fatalf("accepted %q", token)
		}
		payload, err := base64.RawURLEncoding.DecodeString(parts[1])
		var obj map[string]json.RawMessage
		if err != nil || json.Unmarshal(payload, &obj) != nil {
			if string(payload) != "null" {
				t.Fatalf("accepted a payload that is not a JSON object: %q", payload)
			}
		}
		if exp, err := c.Expiry.Int64(); err == nil && exp != 0 {
			var raw struct {
				Exp json.Number `json:"exp"`
			}
			if json.Unmarshal(payload, &raw) != nil || raw.Exp.String() != c.Expiry.String() {
				t.Fatalf("exp read as %d from %q", exp, payload)
			}
		}
	})
}

type recordingNext struct{ calls int }

func (n *recordingNext) AuthenticateToken(context.Context, string) (identity.Result, error) {
	n.calls++
	return identity.Result{Identity: identity.Identity{User: "oidc:alice"}}, nil
}

// FuzzServiceAccountPassthrough: a token is passed through unverified
// only when its shape is a JWT's, its iss is the cluster's service-account
// issuer and its sub names a service account (and then the sub is all the
// agent takes from it, to log); a token of another issuer goes to the
// next authenticator; a malformed one to neither. No error quotes the
// token.
func FuzzServiceAccountPassthrough(f *testing.F) {
	const saIssuer = "https://kubernetes.default.svc.cluster.local"
	f.Add(saIssuer, "system:serviceaccount:ns:deployer", "")
	f.Add(saIssuer, "alice", "")
	f.Add(saIssuer+"/", "system:serviceaccount:ns:x", "")
	f.Add("https://issuer.example", "system:serviceaccount:ns:x", "")
	f.Add("", "", "a.b.c")
	f.Add("", "", strings.Repeat("A", 600)+".e30.c2ln")
	f.Fuzz(func(t *testing.T, iss, sub, raw string) {
		token := raw
		if token == "" {
			token = jwtOf(map[string]any{"iss": iss, "sub": sub})
		}
		next := &recordingNext{}
		res, err := ServiceAccountPassthrough([]string{saIssuer}, 512, next).AuthenticateToken(context.Background(), token)
		shape := &Authenticator{cfg: Config{MaxTokenBytes: 512}}
		c, perr := shape.precheck(token)
		switch {
		case err != nil && len(token) >= 8 && strings.Contains(err.Error(), token):
			t.Fatalf("the error quotes the token: %v", err)
		case perr != nil && (err == nil || next.calls != 0):
			t.Fatalf("a malformed token (%v) was not refused outright: %+v, next called %d times", perr, res, next.calls)
		case res.Passthrough && (c.Issuer != saIssuer || !strings.HasPrefix(c.Subject, "system:serviceaccount:") || res.Identity.User != c.Subject ||
			len(res.Identity.Groups) != 0 || len(res.Identity.Extra) != 0 || next.calls != 0):
			t.Fatalf("passed through %+v for iss %q sub %q", res, c.Issuer, c.Subject)
		case perr == nil && c.Issuer == saIssuer && err == nil && !res.Passthrough:
			t.Fatalf("a service-account issuer's token was authenticated as %+v", res)
		case perr == nil && c.Issuer != saIssuer && next.calls != 1:
			t.Fatalf("another issuer's token (%q) did not go to the next authenticator", c.Issuer)
		}
	})
}

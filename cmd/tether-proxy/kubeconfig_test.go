package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	clientauthv1 "k8s.io/client-go/pkg/apis/clientauthentication/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/tether-k8s/tether/core/tokensource"
	"github.com/tether-k8s/tether/core/tunnel/tunneltest"
)

func jwt(payload string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256"}`)) + "." + enc([]byte(payload)) + ".c2ln"
}

func TestTokenExpiry(t *testing.T) {
	tests := []struct {
		name, token string
		want        time.Time
		ok          bool
		err         string
	}{
		{"a JWT with exp", jwt(`{"exp":1900000000,"sub":"a"}`), time.Unix(1900000000, 0), true, ""},
		{"exp as a float", jwt(`{"exp":1900000000.5}`), time.Unix(1900000000, 0), true, ""},
		{"no exp", jwt(`{"sub":"a"}`), time.Time{}, false, ""},
		{"not a JWT", "opaque-token", time.Time{}, false, ""},
		{"a token of dots", strings.Repeat(".", 1000), time.Time{}, false, ""},
		{"payload not base64url", "a.$$$.c", time.Time{}, false, "not base64url"},
		{"payload not JSON", "a." + base64.RawURLEncoding.EncodeToString([]byte("nope")) + ".c", time.Time{}, false, "not JSON"},
		{"exp a string", jwt(`{"exp":"soon"}`), time.Time{}, false, "not JSON"},
		{"exp negative", jwt(`{"exp":-5}`), time.Time{}, false, "not a time"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok, err := tokenExpiry(tc.token)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want one mentioning %q", err, tc.err)
				}
				return
			}
			if err != nil || ok != tc.ok || !got.Equal(tc.want) {
				t.Fatalf("got %v %v %v, want %v %v", got, ok, err, tc.want, tc.ok)
			}
		})
	}
}

func tokenOptions(t *testing.T, token string) *endpointOptions {
	t.Helper()
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o := &endpointOptions{relayURL: "https://relay.example.com:8443", cluster: "prod"}
	o.token.File = file
	return o
}

func TestPrintToken(t *testing.T) {
	now := time.Unix(1800000000, 0)
	t.Run("an ExecCredential with the token's expiry", func(t *testing.T) {
		tok := jwt(`{"exp":1800000600}`)
		var out bytes.Buffer
		if err := tokenOptions(t, tok).printToken(&out, now); err != nil {
			t.Fatal(err)
		}
		var cred clientauthv1.ExecCredential
		if err := json.Unmarshal(out.Bytes(), &cred); err != nil {
			t.Fatalf("%v: %s", err, out.String())
		}
		if cred.APIVersion != "client.authentication.k8s.io/v1" || cred.Kind != "ExecCredential" || cred.Status == nil ||
			cred.Status.Token != tok || cred.Status.ExpirationTimestamp == nil || !cred.Status.ExpirationTimestamp.Time.Equal(time.Unix(1800000600, 0)) {
			t.Fatalf("got %s", out.String())
		}
	})
	t.Run("an opaque token has no expiry", func(t *testing.T) {
		var out bytes.Buffer
		if err := tokenOptions(t, "opaque").printToken(&out, now); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out.String(), "expirationTimestamp") || !strings.Contains(out.String(), `"token":"opaque"`) {
			t.Fatalf("got %s", out.String())
		}
	})
	for _, tc := range []struct {
		name string
		o    func(t *testing.T) *endpointOptions
		want string
	}{
		{"expired", func(t *testing.T) *endpointOptions { return tokenOptions(t, jwt(`{"exp":1799999999}`)) }, "expired at 2027-01-15T07:59:59Z: get a new one"},
		{"missing token file", func(t *testing.T) *endpointOptions {
			o := tokenOptions(t, "x")
			o.token.File += ".gone"
			return o
		}, "cannot read your token: --token-file"},
		{"no relay", func(t *testing.T) *endpointOptions { o := tokenOptions(t, "x"); o.relayURL = ""; return o }, "--relay and --cluster are required"},
		{"plain http relay", func(t *testing.T) *endpointOptions { o := tokenOptions(t, "x"); o.relayURL = "http://r"; return o }, "want https://"},
		{"bad cluster", func(t *testing.T) *endpointOptions { o := tokenOptions(t, "x"); o.cluster = "../x"; return o }, "--cluster"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			err := tc.o(t).printToken(&out, now)
			if err == nil || !strings.Contains(err.Error(), tc.want) || out.Len() != 0 {
				t.Fatalf("got %v (printed %q), want an error mentioning %q and nothing printed", err, out.String(), tc.want)
			}
		})
	}
}

// TestWriteKubeconfig: the context is merged next to what the file held,
// with the relay's endpoint, the CA and the exec plugin carrying the token
// flags given; the current context changes only with --use.
func TestWriteKubeconfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config")
	existing := clientcmdapi.NewConfig()
	existing.Clusters["other"] = &clientcmdapi.Cluster{Server: "https://other:6443"}
	existing.AuthInfos["other"] = &clientcmdapi.AuthInfo{Token: "other-token"}
	existing.Contexts["other"] = &clientcmdapi.Context{Cluster: "other", AuthInfo: "other"}
	existing.CurrentContext = "other"
	if err := clientcmd.WriteToFile(*existing, path); err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(dir, "ca.pem")
	cert, _ := tunneltest.ServerCert(t, "relay.example.com")
	caPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}))
	if err := os.WriteFile(ca, []byte(caPEM), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := newKubeconfigCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"--relay", "https://relay.example.com:8443/", "--cluster", "prod", "--kubeconfig", path, "--relay-ca", ca,
		"--token-file", "relative/token", "--token-audience", "aud-1"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	got, err := clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.CurrentContext != "other" || got.AuthInfos["other"].Token != "other-token" {
		t.Fatalf("the existing entries changed: current %q, %+v", got.CurrentContext, got.AuthInfos["other"])
	}
	cl, user := got.Clusters["tether-prod"], got.AuthInfos["tether-prod"]
	if cl == nil || cl.Server != "https://relay.example.com:8443/v1/clusters/prod/k8s" || string(cl.CertificateAuthorityData) != caPEM {
		t.Fatalf("cluster %+v", cl)
	}
	if got.Contexts["tether-prod"] == nil || got.Contexts["tether-prod"].AuthInfo != "tether-prod" {
		t.Fatalf("context %+v", got.Contexts["tether-prod"])
	}
	abs, _ := filepath.Abs("relative/token")
	wantArgs := []string{"token", "--relay", "https://relay.example.com:8443/", "--cluster", "prod", "--token-audience=aud-1", "--token-file=" + abs}
	if user == nil || user.Exec == nil || user.Exec.APIVersion != "client.authentication.k8s.io/v1" || !filepath.IsAbs(user.Exec.Command) ||
		!slices.Equal(user.Exec.Args, wantArgs) || user.Exec.InteractiveMode != clientcmdapi.IfAvailableExecInteractiveMode || user.Token != "" {
		t.Fatalf("exec args %q, mode %q, command %q; want args %q", user.Exec.Args, user.Exec.InteractiveMode, user.Exec.Command, wantArgs)
	}
	if !strings.Contains(out.String(), "added context tether-prod in "+path) {
		t.Fatalf("printed %q", out.String())
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v", fi.Mode(), err)
	}

	cmd = newKubeconfigCommand()
	out.Reset()
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"--relay", "https://relay.example.com:8443", "--cluster", "prod", "--kubeconfig", path, "--token-command", "cat t", "--use"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	got, _ = clientcmd.LoadFromFile(path)
	if got.CurrentContext != "tether-prod" || !strings.Contains(out.String(), "replaced context tether-prod") ||
		!slices.Contains(got.AuthInfos["tether-prod"].Exec.Args, "--token-command=cat t") {
		t.Fatalf("with --use: current %q, printed %q, args %q", got.CurrentContext, out.String(), got.AuthInfos["tether-prod"].Exec.Args)
	}
}

// FuzzTokenExpiry reads the exp of fuzzed tokens as `tether-proxy token`
// does, unverified, to tell kubectl when to ask again: it never fails on a
// token that is not a JWT (kubectl keeps it), gives a time only for a
// JWT-shaped token whose exp is a positive number of seconds up to 2^40,
// agrees with the other unverified reader (tokensource.UnverifiedExpiry)
// whenever both read one, and never quotes the token in an error.
func FuzzTokenExpiry(f *testing.F) {
	f.Add(jwt(`{"exp":1700000000}`))
	f.Add(jwt(`{"exp":1.7e9}`))
	f.Add(jwt(`{"exp":"1700000000"}`))
	f.Add(jwt(`{"exp":-1}`))
	f.Add(jwt(`{"exp":1e300}`))
	f.Add(jwt(`{}`))
	f.Add(jwt(`null`))
	f.Add("not-a-jwt")
	f.Add("a.b.c.d")
	f.Add("a.!!.c")
	f.Fuzz(func(t *testing.T, tok string) {
		exp, ok, err := tokenExpiry(tok)
		if err != nil {
			if len(tok) >= 8 && strings.Contains(err.Error(), tok) {
				t.Fatalf("the error quotes the token: %v", err)
			}
			if strings.Count(tok, ".") != 2 {
				t.Fatalf("a token that is not a JWT failed: %v", err)
			}
			return
		}
		if !ok {
			return
		}
		if strings.Count(tok, ".") != 2 || len(tok) > maxTokenBytes || exp.Unix() <= 0 || exp.Unix() > 1<<40 {
			t.Fatalf("%q: exp %v", tok, exp)
		}
		if other, ok := tokensource.UnverifiedExpiry(tok); ok && !other.Equal(exp) {
			t.Fatalf("%q: exp %v here, %v in tokensource", tok, exp, other)
		}
	})
}

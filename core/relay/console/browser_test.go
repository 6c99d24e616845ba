package console_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/tether-k8s/tether/core/authn"
	"github.com/tether-k8s/tether/core/policy"
	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/relay"
	"github.com/tether-k8s/tether/core/relayapi"
)

// TestBrowser signs in to a real relay's console (relay.Start, as
// tether-relay serve assembles it) in a real headless Chromium, through
// the fixture OpenID provider (its binary, built from fixtures/op), with
// JavaScript switched off: alice sees the list, is refused staging (403),
// reads prod's commands and signs out; carol, an admin, sees the grants
// and the audit section. Screenshots go to
// .cache/artefacts/console/.
func TestBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the browser test starts Chromium")
	}
	chromium := findChromium()
	if chromium == "" {
		t.Skip("console browser test skipped: no chromium on PATH (make deps installs Debian's chromium)")
	}
	root := repoRoot(t)
	artefacts := filepath.Join(root, ".cache", "artefacts", "console")
	if err := os.MkdirAll(artefacts, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	opBin := filepath.Join(dir, "tether-fixture-op")
	build := exec.Command("go", "build", "-o", opBin, "./cmd/tether-fixture-op")
	build.Dir = filepath.Join(root, "fixtures", "op")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the fixture OP: %v\n%s", err, out)
	}

	opAddr, relayAddr := freeAddr(t), freeAddr(t)
	issuer, relayURL := "https://"+opAddr, "https://"+relayAddr
	users, _ := json.Marshal(map[string]any{"users": []map[string]any{
		{"subject": "alice", "password": "alice-pw", "groups": []string{"team-a"}},
		{"subject": "carol", "password": "carol-pw", "groups": []string{"admins"}},
	}})
	usersFile := filepath.Join(dir, "users.json")
	if err := os.WriteFile(usersFile, users, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	op := exec.CommandContext(ctx, opBin, "--listen", opAddr, "--issuer", issuer, "--users", usersFile, "--tls-dir", filepath.Join(dir, "op"),
		"--redirect-uri", relayURL+"/ui/callback")
	var opLog bytes.Buffer
	op.Stdout, op.Stderr = &opLog, &opLog
	if err := op.Start(); err != nil {
		t.Fatal(err)
	}
	opDone := make(chan struct{})
	go func() { _ = op.Wait(); close(opDone) }()
	t.Cleanup(func() { cancel(); <-opDone })
	caFile := filepath.Join(dir, "op", "ca.pem")
	waitFor(t, "the fixture OP", func() error {
		if _, err := os.Stat(caFile); err != nil {
			return err
		}
		c, err := net.Dial("tcp", opAddr)
		if err == nil {
			c.Close()
		}
		return err
	})
	opCA, _ := os.ReadFile(caFile)

	// The relay trusts the OP for the login's client (tether) and its own
	// audience; users are op:NAME.
	var caIndented strings.Builder
	for _, l := range strings.Split(strings.TrimSpace(string(opCA)), "\n") {
		caIndented.WriteString("      " + l + "\n")
	}
	ac, err := authn.LoadConfig(fmt.Appendf(nil, `apiVersion: apiserver.config.k8s.io/v1
kind: AuthenticationConfiguration
jwt:
- issuer:
    url: %s
    audiences: [tether, "tether:relay"]
    audienceMatchPolicy: MatchAny
    certificateAuthority: |
%s  claimMappings:
    username: {claim: sub, prefix: "op:"}
    groups: {claim: groups, prefix: "op:"}
`, issuer, caIndented.String()))
	if err != nil {
		t.Fatal(err)
	}
	r, err := relay.Start(ctx, relay.Options{Registry: registry.Config{Path: filepath.Join(dir, "relay.db")}, Authentication: ac,
		Hostnames: []string{"127.0.0.1"}, APIAddr: relayAddr, AgentAddr: "127.0.0.1:0", RelayID: "relay-console",
		Login:       relayapi.LoginSettings{Issuer: issuer, ClientID: "tether"},
		AdminGroups: []string{"op:admins"},
		Console:     &relay.ConsoleConfig{RedirectURL: relayURL + "/ui/callback"}})
	if err != nil {
		t.Fatalf("relay: %v\n--- op ---\n%s", err, opLog.String())
	}
	t.Cleanup(func() { _ = r.Close() })
	for _, id := range []string{"prod", "staging"} {
		if _, err := r.Registry().CreateCluster(id); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.Registry().UpdatePolicy("prod", func(p policy.Policy) (policy.Policy, error) {
		p.Groups = append(p.Groups, "op:team-a")
		return p, nil
	}); err != nil {
		t.Fatal(err)
	}

	// Chromium trusts exactly the relay's and the OP's keys (by SPKI
	// hash), nothing else, and runs no script.
	relayCA := x509.NewCertPool()
	relayCA.AddCert(r.Registry().CACertificate())
	opPool := x509.NewCertPool()
	opPool.AppendCertsFromPEM(opCA)
	spki := spkiHash(t, relayAddr, relayCA) + "," + spkiHash(t, opAddr, opPool)
	alloc, cancelAlloc := chromedp.NewExecAllocator(ctx, append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium), chromedp.NoSandbox, chromedp.WindowSize(1280, 900),
		chromedp.Flag("ignore-certificate-errors-spki-list", spki),
		chromedp.Flag("blink-settings", "scriptEnabled=false"),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(filepath.Join(dir, "chromium")))...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(alloc)
	defer cancelBrowser()
	bctx, cancelTimeout := context.WithTimeout(bctx, 2*time.Minute)
	defer cancelTimeout()
	begin := time.Now()
	if err := chromedp.Do(bctx, chromedp.Navigate("about:blank")); err != nil {
		t.Skipf("console browser test skipped: chromium (%s) cannot start: %v", chromium, err)
	}
	t.Logf("chromium started in %s", time.Since(begin).Round(time.Millisecond))

	shot := func(name string) {
		t.Helper()
		buf, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		p := filepath.Join(artefacts, name+".png")
		if err := os.WriteFile(p, buf, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s", p)
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(bctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("read %s: %v", sel, err)
		}
		return s
	}
	navigate := func(u string) int64 {
		t.Helper()
		resp, err := chromedp.Run(bctx, chromedp.NavigateResponse(u))
		if err != nil {
			t.Fatalf("navigate %s: %v", u, err)
		}
		return resp.Status
	}
	signIn := func(user, password string) {
		t.Helper()
		if status := navigate(relayURL + "/ui/"); status != http.StatusOK {
			t.Fatalf("/ui/ signed out: %d", status)
		}
		if err := chromedp.Do(bctx, chromedp.Click(chromedp.CSS("#signin")),
			chromedp.WaitVisible(chromedp.CSS(`input[name="username"]`))); err != nil {
			t.Fatalf("to the OP's login page: %v", err)
		}
		if err := chromedp.Do(bctx, chromedp.SendKeys(chromedp.CSS(`input[name="username"]`), user),
			chromedp.SendKeys(chromedp.CSS(`input[name="password"]`), password)); err != nil {
			t.Fatal(err)
		}
		shot("02-op-login-" + user)
		if err := chromedp.Do(bctx, chromedp.Click(chromedp.CSS("button")), chromedp.WaitVisible(chromedp.CSS("#user"))); err != nil {
			t.Fatalf("back at the console signed in: %v\n--- op ---\n%s", err, opLog.String())
		}
	}

	navigate(relayURL + "/ui/")
	shot("01-signed-out")
	signIn("alice", "alice-pw")
	if loc, _ := chromedp.Run(bctx, chromedp.Location()); loc != relayURL+"/ui/" {
		t.Errorf("after sign-in at %s, want %s/ui/", loc, relayURL)
	}
	if got := text("#user"); got != "op:alice" {
		t.Errorf("signed in as %q", got)
	}
	list := text("#clusters")
	if !strings.Contains(list, "prod") || strings.Contains(list, "staging") || !strings.Contains(list, "not connected") {
		t.Errorf("alice's list: %q", list)
	}
	shot("03-clusters")

	if status := navigate(relayURL + "/ui/clusters/staging"); status != http.StatusForbidden {
		t.Errorf("staging without a grant: %d, want 403", status)
	}
	if msg := text("#message"); !strings.Contains(msg, "may not reach cluster \"staging\"") {
		t.Errorf("refusal: %q", msg)
	}
	shot("04-refused-staging")

	if status := navigate(relayURL + "/ui/clusters/prod"); status != http.StatusOK {
		t.Errorf("prod: %d", status)
	}
	if cmds := text("#commands"); !strings.Contains(cmds, "tether-proxy kubeconfig --relay "+relayURL+" --cluster prod") ||
		!strings.Contains(cmds, "kubectl --context tether-prod") {
		t.Errorf("prod's commands: %q", cmds)
	}
	shot("05-cluster-prod")
	if status := navigate(relayURL + "/ui/admin"); status != http.StatusForbidden {
		t.Errorf("admin page for alice: %d, want 403", status)
	}

	// Sign out (a form POST, no script), then the list asks to sign in.
	if err := chromedp.Do(bctx, chromedp.Click(chromedp.CSS(`form[action="/ui/logout"] button`)),
		chromedp.WaitVisible(chromedp.CSS("#signin"))); err != nil {
		t.Fatalf("sign out: %v", err)
	}
	if status := navigate(relayURL + "/ui/clusters/prod"); status != http.StatusUnauthorized {
		t.Errorf("prod after sign-out: %d, want 401", status)
	}

	// carol, an admin, sees every cluster's grants.
	signIn("carol", "carol-pw")
	if status := navigate(relayURL + "/ui/admin"); status != http.StatusOK {
		t.Fatalf("admin page for carol: %d", status)
	}
	if g := text("#grants"); !strings.Contains(g, "prod") || !strings.Contains(g, "op:team-a") || !strings.Contains(g, "staging") {
		t.Errorf("grants: %q", g)
	}
	shot("06-admin")
	t.Logf("browser steps took %s", time.Since(begin).Round(time.Millisecond))
}

func spkiHash(t *testing.T, addr string, pool *x509.CertPool) string {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatalf("TLS to %s: %v", addr, err)
	}
	defer c.Close()
	h := sha256.Sum256(c.ConnectionState().PeerCertificates[0].RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(h[:])
}

func findChromium() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.HasPrefix(b, []byte("module github.com/tether-k8s/tether\n")) {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("not inside the tether module")
		}
		dir = parent
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func waitFor(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

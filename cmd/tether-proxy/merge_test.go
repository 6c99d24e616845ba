package main

import (
	"bytes"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// How tether-proxy (a context for its run) and tether-proxy kubeconfig (a
// context with no local process) merge into a user's kubeconfig: real files
// in t.TempDir, read back with clientcmd as kubectl reads them.

const testRelay = "https://relay.example.com:8443"

// writeUserKubeconfig writes a user's own kubeconfig: contexts work (user
// work) and work-ro (user work-admin, a bearer token) sharing cluster work.
func writeUserKubeconfig(t *testing.T, path string) []byte {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["work"] = &clientcmdapi.Cluster{Server: "https://work.example.com:6443"}
	cfg.AuthInfos["work"] = &clientcmdapi.AuthInfo{Token: "work-token"}
	cfg.AuthInfos["work-admin"] = &clientcmdapi.AuthInfo{Token: "work-admin-token"}
	cfg.Contexts["work"] = &clientcmdapi.Context{Cluster: "work", AuthInfo: "work", Namespace: "team-a"}
	cfg.Contexts["work-ro"] = &clientcmdapi.Context{Cluster: "work", AuthInfo: "work-admin"}
	cfg.CurrentContext = "work"
	b, err := clientcmd.Write(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return b
}

// resolve resolves a context of the kubeconfig files as kubectl does.
func resolve(t *testing.T, context string, files ...string) *rest.Config {
	t.Helper()
	rules := &clientcmd.ClientConfigLoadingRules{Precedence: files}
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: context}).ClientConfig()
	if err != nil {
		t.Fatalf("context %s of %v: %v", context, files, err)
	}
	return rc
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// proxyKubeconfig is what proxy.Proxy.Kubeconfig gives for a proxy at
// server whose local CA is caPEM.
func proxyKubeconfig(name, server string, caPEM []byte) *clientcmdapi.Config {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{ClientCertificateData: []byte("client-cert-" + name), ClientKeyData: []byte("client-key-" + name)}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name}
	cfg.CurrentContext = name
	return cfg
}

// deadProxy is the address of a proxy that no longer runs.
const deadProxy = "https://127.0.0.1:1"

// proxyWrite merges a proxy's context as tether-proxy does, with the
// kubeconfig flags args.
func proxyWrite(t *testing.T, server string, caPEM []byte, args ...string) (func(), error) {
	t.Helper()
	o := &options{relayURL: testRelay, cluster: "prod"}
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	o.addKubeconfigFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	if o.context == "" {
		o.context = "tether-prod"
	}
	return o.writeKubeconfig(proxyKubeconfig(o.context, server, caPEM))
}

// runKubeconfig runs tether-proxy kubeconfig with args (and a token file),
// returning what it printed.
func runKubeconfig(t *testing.T, args ...string) (string, error) {
	t.Helper()
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("tok\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := newKubeconfigCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(append([]string{"--relay", testRelay, "--cluster", "prod", "--token-file", tok}, args...))
	err := cmd.Execute()
	return out.String(), err
}

func wantRefusal(t *testing.T, err error, path string, orig []byte, words ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no refusal; the file became:\n%s", mustRead(t, path))
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("the refusal %q does not say %q", err, w)
		}
	}
	if got := mustRead(t, path); !bytes.Equal(got, orig) {
		t.Errorf("the refused write changed %s:\n%s\nwas:\n%s", path, got, orig)
	}
}

// TestProxyRefusesAUsersContext: tether-proxy --context work, where work
// is the user's own context, once overwrote the user's cluster and context
// and deleted them on exit.
func TestProxyRefusesAUsersContext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config")
	orig := writeUserKubeconfig(t, path)
	_, err := proxyWrite(t, deadProxy, nil, "--kubeconfig", path, "--context", "work")
	wantRefusal(t, err, path, orig, "context work in "+path, "was not written by tether", "also used by context work-ro", "--overwrite")
}

// TestKubeconfigRefusesAUsersContext: tether-proxy kubeconfig --context
// work once repointed cluster work at the relay, so context work-ro, which
// shares it, sent user work-admin's bearer token to the relay.
func TestKubeconfigRefusesAUsersContext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config")
	orig := writeUserKubeconfig(t, path)
	_, err := runKubeconfig(t, "--kubeconfig", path, "--context", "work")
	wantRefusal(t, err, path, orig, "context work in "+path, "was not written by tether", "also used by context work-ro", "--overwrite")
}

// TestKubeconfigNeverRepointsASharedCluster: a free context name whose
// cluster and user names are taken by the user's entries gets entries of
// its own; the user's contexts still reach their servers with their
// credentials.
func TestKubeconfigNeverRepointsASharedCluster(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config")
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["tether-prod"] = &clientcmdapi.Cluster{Server: "https://prod.example.com:6443"}
	cfg.AuthInfos["tether-prod"] = &clientcmdapi.AuthInfo{Token: "prod-admin-token"}
	cfg.Contexts["prod-direct"] = &clientcmdapi.Context{Cluster: "tether-prod", AuthInfo: "tether-prod"}
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	if _, err := runKubeconfig(t, "--kubeconfig", path); err != nil {
		t.Fatal(err)
	}
	direct := resolve(t, "prod-direct", path)
	if direct.Host != "https://prod.example.com:6443" || direct.BearerToken != "prod-admin-token" || direct.ExecProvider != nil {
		t.Fatalf("prod-direct now goes to %s with token %q, exec %v", direct.Host, direct.BearerToken, direct.ExecProvider)
	}
	via := resolve(t, "tether-prod", path)
	if via.Host != testRelay+"/v1/clusters/prod/k8s" || via.BearerToken != "" || via.ExecProvider == nil {
		t.Fatalf("tether-prod goes to %s with token %q", via.Host, via.BearerToken)
	}
}

// TestProxyKeepsTheEndpointContext: tether-proxy kubeconfig then
// tether-proxy (both tether-prod) once overwrote the no-process context,
// then deleted it on exit.
func TestProxyKeepsTheEndpointContext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config")
	if _, err := runKubeconfig(t, "--kubeconfig", path); err != nil {
		t.Fatal(err)
	}
	orig := mustRead(t, path)
	_, err := proxyWrite(t, deadProxy, nil, "--kubeconfig", path)
	wantRefusal(t, err, path, orig, "context tether-prod in "+path, "was written by tether-proxy kubeconfig", "--overwrite")
}

// TestProxyExitRemovesOnlyItsOwn: what the user changed or started using
// while the proxy ran stays when it exits.
func TestProxyExitRemovesOnlyItsOwn(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config")
	writeUserKubeconfig(t, path)
	remove, err := proxyWrite(t, deadProxy, nil, "--kubeconfig", path)
	if err != nil {
		t.Fatal(err)
	}
	// The user points a context of their own at the proxy's cluster entry
	// (kubectl config set-context mine --cluster tether-prod --user work).
	cfg, err := clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Contexts["mine"] = &clientcmdapi.Context{Cluster: "tether-prod", AuthInfo: "work"}
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	remove()
	got, err := clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Contexts["tether-prod"] != nil || got.AuthInfos["tether-prod"] != nil {
		t.Errorf("the proxy's context or user is still there: %+v %+v", got.Contexts["tether-prod"], got.AuthInfos["tether-prod"])
	}
	if got.Clusters["tether-prod"] == nil || got.Contexts["mine"] == nil {
		t.Errorf("the proxy's exit deleted the cluster entry context mine uses")
	}
	if got.Contexts["work"] == nil || got.Clusters["work"] == nil || got.AuthInfos["work-admin"] == nil || got.CurrentContext != "work" {
		t.Errorf("the user's entries changed: %+v", got)
	}

	// The context replaced while the proxy ran is not the proxy's to delete.
	remove, err = proxyWrite(t, deadProxy, nil, "--kubeconfig", path, "--context", "tether-2")
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ = clientcmd.LoadFromFile(path)
	cfg.Contexts["tether-2"] = &clientcmdapi.Context{Cluster: "work", AuthInfo: "work"}
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	remove()
	got, _ = clientcmd.LoadFromFile(path)
	if c := got.Contexts["tether-2"]; c == nil || c.Cluster != "work" {
		t.Errorf("the proxy's exit deleted or changed a context it no longer owned: %+v", c)
	}
}

// TestRefusesAFileThatIsNotAKubeconfig: a valid YAML file that is not a
// kubeconfig at $KUBECONFIG was once silently rewritten empty.
func TestRefusesAFileThatIsNotAKubeconfig(t *testing.T) {
	for _, tc := range []struct{ name, content, why string }{
		{"a YAML mapping of other keys", "foo: bar\nitems: [1, 2]\n", `"foo"`},
		{"a YAML list", "- a\n- b\n", "list"},
		{"a Deployment", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n", "Deployment"},
		{"a kubeconfig with a field tether would drop", "apiVersion: v1\nkind: Config\nclusters:\n- name: a\n  cluster: {server: https://a, colour: red}\n", `"colour"`},
		{"not YAML", "clusters: [\n", "YAML"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config")
			if err := os.WriteFile(path, []byte(tc.content), 0o644); err != nil {
				t.Fatal(err)
			}
			t.Setenv("KUBECONFIG", path)
			_, err := runKubeconfig(t)
			wantRefusal(t, err, path, []byte(tc.content), path, "is not a kubeconfig", tc.why)
			_, err = proxyWrite(t, deadProxy, nil)
			wantRefusal(t, err, path, []byte(tc.content), path, "is not a kubeconfig", tc.why)
		})
	}
}

// TestKubeconfigFileModes: a kubeconfig tether creates is 0600; an
// existing file keeps its mode, and tether-proxy refuses to put its run's
// client key in one that group or others may read.
func TestKubeconfigFileModes(t *testing.T) {
	dir := t.TempDir()
	created := filepath.Join(dir, "new", "config")
	if _, err := runKubeconfig(t, "--kubeconfig", created); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(created); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("created %v, %v; want 0600", fi.Mode(), err)
	}
	existing := filepath.Join(dir, "config")
	writeUserKubeconfig(t, existing)
	if err := os.Chmod(existing, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := runKubeconfig(t, "--kubeconfig", existing); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(existing); err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("existing %v, %v; want 0640 kept", fi.Mode(), err)
	}
	// The proxy's run puts its client key only in a private file.
	orig := mustRead(t, existing)
	_, err := proxyWrite(t, deadProxy, nil, "--kubeconfig", existing, "--context", "tether-run")
	wantRefusal(t, err, existing, orig, "has mode 0640", "chmod 600 "+existing)
	if err := os.Chmod(existing, 0o600); err != nil {
		t.Fatal(err)
	}
	remove, err := proxyWrite(t, deadProxy, nil, "--kubeconfig", existing, "--context", "tether-run")
	if err != nil {
		t.Fatal(err)
	}
	remove()
	if fi, err := os.Stat(existing); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("existing %v, %v; want 0600 kept", fi.Mode(), err)
	}
}

// TestKubeconfigMultipleFiles: with several files in $KUBECONFIG a new
// entry goes where kubectl would put it (the first file that exists, else
// the last), and an entry is changed in the file that holds it.
func TestKubeconfigMultipleFiles(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	writeUserKubeconfig(t, b)
	t.Setenv("KUBECONFIG", a+string(os.PathListSeparator)+b)
	if _, err := runKubeconfig(t); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(a); err == nil {
		t.Fatalf("%s was created; the entries belong in %s, the first file that exists", a, b)
	}
	if got, _ := clientcmd.LoadFromFile(b); got == nil || got.Contexts["tether-prod"] == nil || got.Contexts["work"] == nil {
		t.Fatalf("%s has no tether-prod next to work", b)
	}
	// Now a exists too: the entries in b are rewritten where they are.
	other := clientcmdapi.NewConfig()
	other.Clusters["other"] = &clientcmdapi.Cluster{Server: "https://other"}
	if err := clientcmd.WriteToFile(*other, a); err != nil {
		t.Fatal(err)
	}
	if _, err := runKubeconfig(t, "--use"); err != nil {
		t.Fatal(err)
	}
	ga, _ := clientcmd.LoadFromFile(a)
	if ga.Contexts["tether-prod"] != nil || ga.Clusters["tether-prod"] != nil || ga.AuthInfos["tether-prod"] != nil {
		t.Fatalf("tether-prod written again into %s while %s holds it: %+v", a, b, ga)
	}
	if rc := resolve(t, "tether-prod", a, b); rc.Host != testRelay+"/v1/clusters/prod/k8s" {
		t.Fatalf("tether-prod goes to %s", rc.Host)
	}
	// The proxy's run context: added to a (now the first that exists), and
	// removed from there on exit.
	remove, err := proxyWrite(t, deadProxy, nil, "--context", "tether-run")
	if err != nil {
		t.Fatal(err)
	}
	if ga, _ := clientcmd.LoadFromFile(a); ga.Contexts["tether-run"] == nil {
		t.Fatalf("the proxy's context is not in %s", a)
	}
	remove()
	for _, f := range []string{a, b} {
		if g, _ := clientcmd.LoadFromFile(f); g.Contexts["tether-run"] != nil || g.Clusters["tether-run"] != nil {
			t.Fatalf("the proxy's entries are still in %s", f)
		}
	}

	// Neither exists: the last file, as kubectl.
	c, d := filepath.Join(dir, "c"), filepath.Join(dir, "d")
	t.Setenv("KUBECONFIG", c+string(os.PathListSeparator)+d)
	if _, err := runKubeconfig(t); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c); err == nil {
		t.Fatalf("%s was created; kubectl writes new entries to the last file, %s", c, d)
	}
	if g, _ := clientcmd.LoadFromFile(d); g == nil || g.Contexts["tether-prod"] == nil {
		t.Fatalf("%s has no tether-prod", d)
	}
}

// TestProxyContextInUse: the context of a tether-proxy still running is
// not taken over; that of one that has gone (killed: its entries stayed) is.
func TestProxyContextInUse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config")
	running := httptest.NewTLSServer(http.NotFoundHandler())
	t.Cleanup(running.Close)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: running.Certificate().Raw})
	if _, err := proxyWrite(t, running.URL, caPEM, "--kubeconfig", path); err != nil {
		t.Fatal(err)
	}
	orig := mustRead(t, path)
	_, err := proxyWrite(t, deadProxy, nil, "--kubeconfig", path)
	wantRefusal(t, err, path, orig, "context tether-prod in "+path, "a tether-proxy that is running", "pid "+strconv.Itoa(os.Getpid()))
	_, err = runKubeconfig(t, "--kubeconfig", path)
	wantRefusal(t, err, path, orig, "a tether-proxy that is running")

	running.Close()
	remove, err := proxyWrite(t, deadProxy, nil, "--kubeconfig", path)
	if err != nil {
		t.Fatalf("a context left by a tether-proxy that has gone: %v", err)
	}
	if rc := resolve(t, "tether-prod", path); rc.Host != deadProxy {
		t.Fatalf("tether-prod goes to %s", rc.Host)
	}
	remove()
	if g, _ := clientcmd.LoadFromFile(path); len(g.Contexts) != 0 || len(g.Clusters) != 0 || len(g.AuthInfos) != 0 {
		t.Fatalf("left: %+v", g)
	}
}

// writesPerProcess is how many contexts each of TestConcurrentWriters'
// processes writes.
const writesPerProcess = 3

// writerEnv makes the test binary a kubeconfig writer, for
// TestConcurrentWriters.
const writerEnv = "TETHER_TEST_KUBECONFIG_WRITER"

// TestKubeconfigWriterProcess is one of TestConcurrentWriters' processes:
// it writes contexts NAME-0..2 into the file, alternating both commands.
func TestKubeconfigWriterProcess(t *testing.T) {
	spec := os.Getenv(writerEnv)
	if spec == "" {
		t.Skip("run by TestConcurrentWriters")
	}
	path, name, _ := strings.Cut(spec, "=")
	for i := range writesPerProcess {
		ctx := fmt.Sprintf("%s-%d", name, i)
		if i%2 == 0 {
			if out, err := runKubeconfig(t, "--kubeconfig", path, "--context", ctx); err != nil {
				t.Fatalf("%s: %v", out, err)
			}
		} else if _, err := proxyWrite(t, deadProxy, nil, "--kubeconfig", path, "--context", ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// TestConcurrentWriters: processes writing one kubeconfig at once lose
// nothing (clientcmd's lock file).
func TestConcurrentWriters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config")
	writeUserKubeconfig(t, path)
	const procs = 4
	var cmds []*exec.Cmd
	var outs []*bytes.Buffer
	for p := range procs {
		cmd := exec.Command(os.Args[0], "-test.run=^TestKubeconfigWriterProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s=w%d", writerEnv, path, p))
		out := &bytes.Buffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds, outs = append(cmds, cmd), append(outs, out)
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Errorf("writer %d: %v\n%s", i, err, outs[i])
		}
	}
	got, err := clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var lost []string
	for p := range procs {
		for i := range writesPerProcess {
			if name := fmt.Sprintf("w%d-%d", p, i); got.Contexts[name] == nil {
				lost = append(lost, name)
			}
		}
	}
	if len(lost) > 0 || got.Contexts["work-ro"] == nil {
		t.Fatalf("lost contexts %v (work-ro there: %v)", lost, got.Contexts["work-ro"] != nil)
	}
}

// TestProxyOverwrite: with --overwrite the proxy takes over the user's
// context for its run, with entries of its own (the user's cluster and
// user entries are not touched), and puts the context back on exit.
func TestProxyOverwrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config")
	orig := writeUserKubeconfig(t, path)
	remove, err := proxyWrite(t, deadProxy, nil, "--kubeconfig", path, "--context", "work", "--overwrite")
	if err != nil {
		t.Fatal(err)
	}
	if rc := resolve(t, "work", path); rc.Host != deadProxy || rc.BearerToken != "" || string(rc.CertData) != "client-cert-work" {
		t.Fatalf("work goes to %s with token %q", rc.Host, rc.BearerToken)
	}
	if rc := resolve(t, "work-ro", path); rc.Host != "https://work.example.com:6443" || rc.BearerToken != "work-admin-token" {
		t.Fatalf("work-ro goes to %s with token %q", rc.Host, rc.BearerToken)
	}
	got, _ := clientcmd.LoadFromFile(path)
	if c := got.Contexts["work"]; c.Cluster != "work-tether" || c.AuthInfo != "work-tether" || c.Namespace != "team-a" {
		t.Fatalf("context work: %+v", c)
	}
	if got.AuthInfos["work"].Token != "work-token" {
		t.Fatalf("the user's entry work changed: %+v", got.AuthInfos["work"])
	}
	remove()
	if b := mustRead(t, path); !bytes.Equal(b, orig) {
		t.Fatalf("after the proxy's exit:\n%s\nwant as before:\n%s", b, orig)
	}
}

// TestKubeconfigOverwrite: with --overwrite tether-proxy kubeconfig
// replaces the user's context, with entries of its own; run again, it
// replaces its own without --overwrite.
func TestKubeconfigOverwrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config")
	writeUserKubeconfig(t, path)
	out, err := runKubeconfig(t, "--kubeconfig", path, "--context", "work", "--overwrite")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"the cluster entry work is also used by context work-ro, so context work has one of its own, work-tether",
		"--overwrite: the context work replaced was not written by tether", "replaced context work in " + path} {
		if !strings.Contains(out, want) {
			t.Errorf("printed %q, want %q", out, want)
		}
	}
	check := func() {
		t.Helper()
		if rc := resolve(t, "work", path); rc.Host != testRelay+"/v1/clusters/prod/k8s" || rc.ExecProvider == nil || rc.BearerToken != "" {
			t.Fatalf("work goes to %s with token %q", rc.Host, rc.BearerToken)
		}
		if rc := resolve(t, "work-ro", path); rc.Host != "https://work.example.com:6443" || rc.BearerToken != "work-admin-token" {
			t.Fatalf("work-ro goes to %s with token %q", rc.Host, rc.BearerToken)
		}
	}
	check()
	if out, err = runKubeconfig(t, "--kubeconfig", path, "--context", "work"); err != nil || !strings.Contains(out, "replaced context work in "+path) {
		t.Fatalf("again, without --overwrite: %v, printed %q", err, out)
	}
	check()
	got, _ := clientcmd.LoadFromFile(path)
	if len(got.Clusters) != 2 || got.Clusters["work-tether"] == nil || len(got.AuthInfos) != 3 {
		t.Fatalf("entries after writing twice: clusters %d, users %d (want work and work-tether; work, work-admin, work-tether)", len(got.Clusters), len(got.AuthInfos))
	}
}

// TestProxyOverwriteOfTheEndpointContext: the proxy's run replaces the
// no-process context with --overwrite and puts it back on exit.
func TestProxyOverwriteOfTheEndpointContext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config")
	if _, err := runKubeconfig(t, "--kubeconfig", path, "--use"); err != nil {
		t.Fatal(err)
	}
	orig := mustRead(t, path)
	remove, err := proxyWrite(t, deadProxy, nil, "--kubeconfig", path, "--overwrite")
	if err != nil {
		t.Fatal(err)
	}
	if rc := resolve(t, "tether-prod", path); rc.Host != deadProxy {
		t.Fatalf("tether-prod goes to %s", rc.Host)
	}
	remove()
	if b := mustRead(t, path); !bytes.Equal(b, orig) {
		t.Fatalf("after the proxy's exit:\n%s\nwant as before:\n%s", b, orig)
	}
}

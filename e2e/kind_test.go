package e2e

// The kind provider (E2E_PROVIDER=kind): a kind cluster, tether's images
// built with `make images` and loaded into it, the relay and agent charts
// installed with Helm's Go SDK, and the real kubectl and tether-proxy on the
// host reaching the cluster through the relay's pod and the agents' pods.
//
// NOT EXECUTED where this was written: that machine has no Docker engine
// (`docker info` fails), so only the fallback to the local provider ran
// there. This code compiles and is vetted; the GitHub Actions workflow
// .github/workflows/e2e-kind.yml is its first real run. It needs Linux with a
// Docker engine (the host must reach the kind node's IP, and the pods the
// host at the kind network's gateway, which Docker Desktop's VM does not
// give), kind (installed with `go install` by e2e-framework when missing),
// and `make build` and `make fixtures` (kubectl).

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/e2e-framework/klient"
	"sigs.k8s.io/e2e-framework/support/kind"

	"github.com/tether-k8s/tether/fixtures/cluster"
	"github.com/tether-k8s/tether/fixtures/issuer"
	"github.com/tether-k8s/tether/fixtures/stack"
)

const (
	// kindName is E2E_PROVIDER's value for the kind provider.
	kindName = "kind"
	// kindLabel marks the specs that run on the kind provider; the suite
	// runs only those there, and only the others on the local provider.
	kindLabel = "kind"
)

// chooseProvider returns the provider the suite runs on for E2E_PROVIDER
// requested, and a line to print when it is not the one requested.
// docker reports whether a Docker engine answers, and if not, why.
func chooseProvider(requested string, docker func() (ok bool, why string)) (name, note string, err error) {
	switch requested {
	case "", "local":
		return "local", "", nil
	case kindName:
		if ok, why := docker(); !ok {
			return "local", fmt.Sprintf("e2e: E2E_PROVIDER=kind: skipped the kind provider because no Docker engine answers (%s); the local provider runs instead", why), nil
		}
		return kindName, "", nil
	default:
		return "", "", fmt.Errorf("E2E_PROVIDER=%q: want %q or %q", requested, "local", kindName)
	}
}

// dockerAnswers runs `docker info` and reports whether the engine answered,
// and if not, the first line of why.
func dockerAnswers() (bool, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := exec.LookPath("docker"); err != nil {
		return false, "no docker command"
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "docker", "info", "--format", "{{.ServerVersion}}")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err == nil && len(bytes.TrimSpace(out)) > 0 {
		return true, ""
	}
	why := strings.TrimSpace(stderr.String())
	if why == "" && err != nil {
		why = err.Error()
	}
	if i := strings.IndexByte(why, '\n'); i >= 0 {
		why = why[:i]
	}
	return false, "docker info: " + why
}

// kindEnv is tether installed in a kind cluster by its charts.
type kindEnv struct {
	provider   *kind.Cluster
	kubeconfig string
	kubectlBin string
	root, dir  string
	issuer     *issuer.Issuer
	helm       *helmInstaller
	// cluster is the kind cluster's name at the relay.
	cluster string
	// relayURL is the relay's API as the host reaches it.
	relayURL string
	relayCA  []byte
	// proxyKubeconfig holds the context tether-proxy wrote, proxyContext.
	proxyKubeconfig, proxyContext string
	user, group                   string
}

// kc is the suite's kind environment, when the kind provider runs.
var kc *kindEnv

const (
	kindRelayNS   = "tether-relay"
	kindAgentNS   = "tether-system"
	kindImageRepo = "ghcr.io/tether-k8s"
	kindImageTag  = "e2e"
	// kindVersion's default node image is Kubernetes v1.36.1, one minor
	// version from the fixture's kubectl (v1.35), within kubectl's skew.
	kindVersion    = "v0.32.0"
	kindAgentSA    = "tether-agent"
	kindCredential = "tether-agent-credential"
	// kindWorkloadImage has a shell and head, for exec; it is the Kubernetes
	// project's own e2e image, on registry.k8s.io.
	kindWorkloadImage = "registry.k8s.io/e2e-test-images/busybox:1.36.1-1"
)

// kubectl runs the fixture's kubectl (or the one on PATH) on the host with
// kubeconfig.
func (k *kindEnv) kubectlWith(ctx context.Context, kubeconfig string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, k.kubectlBin, append([]string{"--kubeconfig", kubeconfig}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	return cmd
}

// admin runs kubectl as the kind cluster's admin and returns its standard
// output, failing the spec on error.
func (k *kindEnv) admin(ctx context.Context, stdin io.Reader, args ...string) string {
	GinkgoHelper()
	cmd := k.kubectlWith(ctx, k.kubeconfig, args...)
	cmd.Stdin = stdin
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	Expect(err).NotTo(HaveOccurred(), "kubectl %s (kind admin):\n%s%s", strings.Join(args, " "), out, stderr.String())
	return string(out)
}

// tokenKubeconfig writes a kubeconfig for the kind API server that
// authenticates with token only, and returns its path.
func (k *kindEnv) tokenKubeconfig(token string) string {
	GinkgoHelper()
	admin, err := clientcmd.LoadFromFile(k.kubeconfig)
	Expect(err).NotTo(HaveOccurred())
	cl := admin.Clusters[admin.Contexts[admin.CurrentContext].Cluster]
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kind"] = &clientcmdapi.Cluster{Server: cl.Server, CertificateAuthorityData: cl.CertificateAuthorityData}
	cfg.AuthInfos["token"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["token"] = &clientcmdapi.Context{Cluster: "kind", AuthInfo: "token"}
	cfg.CurrentContext = "token"
	path := filepath.Join(GinkgoT().TempDir(), "token.kubeconfig")
	Expect(clientcmd.WriteToFile(*cfg, path)).To(Succeed())
	return path
}

// relay runs tether-relay in the relay's pod, against the running relay's
// admin socket.
func (k *kindEnv) relay(ctx context.Context, args ...string) string {
	GinkgoHelper()
	return k.admin(ctx, nil, append([]string{"exec", "-n", kindRelayNS, "deploy/tether-relay", "--",
		"/usr/local/bin/tether-relay", "--data=/var/lib/tether-relay/relay.db"}, args...)...)
}

// run runs a command on the host, its output to the spec's log.
func run(ctx context.Context, dir, name string, args ...string) {
	GinkgoHelper()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = GinkgoWriter, GinkgoWriter
	Expect(cmd.Run()).To(Succeed(), "%s %s", name, strings.Join(args, " "))
}

// setupKind creates the kind cluster and installs tether in it: images,
// relay chart, a cluster at the relay, agent chart, and tether-proxy on the
// host. It sets client and kc; everything is undone in DeferCleanup.
func setupKind(ctx context.Context) {
	GinkgoHelper()
	root, err := filepath.Abs("..")
	Expect(err).NotTo(HaveOccurred())
	k := &kindEnv{root: root, dir: GinkgoT().TempDir(), cluster: "kind-e2e", user: "kind-user", group: "kind-team"}
	k.kubectlBin = "kubectl"
	if bin, err := cluster.DefaultBinDir(); err == nil {
		if _, err := os.Stat(filepath.Join(bin, "kubectl")); err == nil {
			k.kubectlBin = filepath.Join(bin, "kubectl")
		}
	}

	setUp := false
	begin := time.Now()
	k.provider = kind.NewCluster("tether-e2e")
	k.provider.SetDefaults()
	// Installed with go install when no kind is on PATH.
	k.provider.WithVersion(kindVersion)
	k.kubeconfig, err = k.provider.Create(ctx)
	Expect(err).NotTo(HaveOccurred(), "create the kind cluster")
	DeferCleanup(func(ctx context.Context) {
		if anyFailed || !setUp {
			dir := filepath.Join(root, "e2e", "artifacts", "kind-logs")
			if err := k.provider.ExportLogs(ctx, dir); err == nil {
				GinkgoWriter.Printf("kind logs exported to %s\n", dir)
			}
		}
		Expect(k.provider.Destroy(ctx)).To(Succeed(), "delete the kind cluster")
	})
	client, err = klient.New(k.provider.KubernetesRestConfig())
	Expect(err).NotTo(HaveOccurred())
	Expect(k.provider.WaitForControlPlane(ctx, client)).To(Succeed())
	GinkgoWriter.Printf("kind: cluster up in %s\n", time.Since(begin).Round(time.Second))

	// The images, built from this checkout and loaded into the node.
	begin = time.Now()
	run(ctx, root, "make", "images", "IMAGE_REPO="+kindImageRepo, "IMAGE_TAG="+kindImageTag)
	for _, b := range []string{"relay", "agent"} {
		Expect(k.provider.LoadImage(ctx, kindImageRepo+"/tether-"+b+":"+kindImageTag)).To(Succeed())
	}
	GinkgoWriter.Printf("kind: images built and loaded in %s\n", time.Since(begin).Round(time.Second))

	// The issuer runs in this process; the relay's and agents' pods fetch
	// its keys at the kind network's gateway, which is this host.
	gw := kindGateway(ctx)
	l, err := net.Listen("tcp", net.JoinHostPort("0.0.0.0", "0"))
	Expect(err).NotTo(HaveOccurred())
	k.issuer, err = issuer.Start(l, gw)
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(k.issuer.Close)
	authn := yamlToJSON(k.issuer.AuthenticationConfig(stack.Audience))

	k.helm = buildHelmInstaller(ctx, func(ctx context.Context, args ...string) *exec.Cmd {
		return exec.CommandContext(ctx, args[0], args[1:]...)
	}, k.kubeconfig)

	// The relay: its API certificate names the node's IP (the host's way in,
	// through the NodePort) and the Service's name (the agents' way in).
	nodeIP := k.admin(ctx, nil, "get", "nodes", "-o", `jsonpath={.items[0].status.addresses[?(@.type=="InternalIP")].address}`)
	relaySvc := "tether-relay." + kindRelayNS + ".svc"
	k.admin(ctx, nil, "create", "namespace", kindRelayNS)
	k.helm.install(ctx, kindRelayNS, "tether-relay", "tether-relay", map[string]any{
		"hostnames":            []string{nodeIP, relaySvc},
		"authenticationConfig": authn,
		"service":              map[string]any{"type": "NodePort"},
		"image":                map[string]any{"repository": kindImageRepo + "/tether-relay", "tag": kindImageTag},
		"drainTimeoutSeconds":  5,
	}, 3*time.Minute)
	nodePort := k.admin(ctx, nil, "get", "service", "tether-relay", "-n", kindRelayNS, "-o", `jsonpath={.spec.ports[?(@.name=="api")].nodePort}`)
	k.relayURL = "https://" + net.JoinHostPort(nodeIP, nodePort)
	k.relayCA = []byte(k.relay(ctx, "ca"))
	token := strings.TrimSpace(k.relay(ctx, "cluster", "create", k.cluster))
	k.relay(ctx, "cluster", "grant", k.cluster, "--group", "oidc:"+k.group)

	// The agents, as docs/install.md installs them.
	k.admin(ctx, nil, "create", "namespace", kindAgentNS)
	k.admin(ctx, nil, "create", "secret", "generic", "join-token", "-n", kindAgentNS, "--from-literal=token="+token)
	k.helm.install(ctx, kindAgentNS, "tether-agent", "tether-agent", map[string]any{
		"cluster":                 k.cluster,
		"relay":                   map[string]any{"url": "https://" + net.JoinHostPort(relaySvc, "8443"), "caPEM": string(k.relayCA)},
		"existingJoinTokenSecret": "join-token",
		"authenticationConfig":    authn,
		"image":                   map[string]any{"repository": kindImageRepo + "/tether-agent", "tag": kindImageTag},
	}, 3*time.Minute)

	// tether-proxy on the host, as a user's laptop runs it.
	tok, err := k.issuer.Token(k.user, []string{k.group}, stack.Audience, time.Hour)
	Expect(err).NotTo(HaveOccurred())
	tokFile, caFile := filepath.Join(k.dir, "user.token"), filepath.Join(k.dir, "relay-ca.pem")
	Expect(os.WriteFile(tokFile, []byte(tok), 0o600)).To(Succeed())
	Expect(os.WriteFile(caFile, k.relayCA, 0o600)).To(Succeed())
	k.proxyKubeconfig, k.proxyContext = filepath.Join(k.dir, "laptop.kubeconfig"), "tether-"+k.cluster
	logFile, err := os.Create(filepath.Join(k.dir, "proxy.log"))
	Expect(err).NotTo(HaveOccurred())
	proxy := exec.Command(filepath.Join(root, "bin", "tether-proxy"), "--relay", k.relayURL, "--relay-ca", caFile,
		"--cluster", k.cluster, "--port", fmt.Sprint(stack.ProxyPort), "--kubeconfig", k.proxyKubeconfig, "--token-file", tokFile)
	proxy.Stdout, proxy.Stderr = logFile, logFile
	Expect(proxy.Start()).To(Succeed(), "start tether-proxy (make build)")
	DeferCleanup(func() {
		_ = proxy.Process.Kill()
		_ = proxy.Wait()
		_ = logFile.Close()
		if anyFailed || !setUp {
			b, _ := os.ReadFile(logFile.Name())
			GinkgoWriter.Printf("--- tether-proxy log ---\n%s\n", b)
		}
	})
	Eventually(func() error {
		if _, err := os.Stat(k.proxyKubeconfig); err != nil {
			return err
		}
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", stack.ProxyPort), time.Second)
		if err == nil {
			_ = c.Close()
		}
		return err
	}).WithTimeout(60*time.Second).Should(Succeed(), "tether-proxy listening and its kubeconfig written")
	kc, setUp = k, true
}

// kindGateway returns the IPv4 gateway of Docker's "kind" network: the
// host, as the kind node and its pods reach it.
func kindGateway(ctx context.Context) string {
	GinkgoHelper()
	out, err := exec.CommandContext(ctx, "docker", "network", "inspect", "kind", "--format", "{{range .IPAM.Config}}{{.Gateway}} {{end}}").Output()
	Expect(err).NotTo(HaveOccurred(), "docker network inspect kind")
	for _, gw := range strings.Fields(string(out)) {
		if ip := net.ParseIP(gw); ip != nil && ip.To4() != nil {
			return gw
		}
	}
	Fail(fmt.Sprintf("the kind network has no IPv4 gateway: %q", out))
	return ""
}

var _ = Describe("tether in a kind cluster, from its charts", Label(kindLabel), Ordered, func() {
	var wl, pod string

	// via runs the real kubectl on the host through tether-proxy.
	via := func(ctx context.Context) func(stdin io.Reader, args ...string) (string, error) {
		return func(stdin io.Reader, args ...string) (string, error) {
			cmd := kc.kubectlWith(ctx, kc.proxyKubeconfig, append([]string{"--context", kc.proxyContext}, args...)...)
			cmd.Stdin = stdin
			out, err := cmd.CombinedOutput()
			return string(out), err
		}
	}

	BeforeAll(func(ctx SpecContext) {
		wl = randomName("kind")
		kc.admin(ctx, nil, "create", "namespace", wl)
		DeferCleanup(func(ctx SpecContext) { kc.admin(ctx, nil, "delete", "namespace", wl, "--wait=false") })
		kc.admin(ctx, nil, "create", "rolebinding", "caller", "-n", wl, "--clusterrole=admin", "--group=oidc:"+kc.group)
		kc.admin(ctx, nil, "create", "deployment", "sleeper", "-n", wl, "--image="+kindWorkloadImage, "--", "sleep", "3600")
		kc.admin(ctx, nil, "rollout", "status", "-n", wl, "deployment/sleeper", "--timeout=180s")
		pod = kc.admin(ctx, nil, "get", "pods", "-n", wl, "-l", "app=sleeper", "-o", "jsonpath={.items[0].metadata.name}")
	}, NodeTimeout(4*time.Minute))

	It("runs the agent chart's pods Ready, each holding its relay sessions", func(ctx SpecContext) {
		Expect(kc.admin(ctx, nil, "get", "deployment", "tether-agent", "-n", kindAgentNS, "-o", "jsonpath={.status.readyReplicas}")).To(Equal("2"))
		Eventually(func() map[string]string {
			return relayClusterRow(kc.relay(ctx, "cluster", "list"), kc.cluster)
		}).WithTimeout(30*time.Second).Should(HaveKeyWithValue("SESSIONS", "4"), "2 agents × --sessions=2")
	})

	It("carries kubectl from the host as the OIDC user: get, list, create, exec, and RBAC still decides", func(ctx SpecContext) {
		coreSmoke(via(ctx), kc.user, wl, pod)
	})

	It("refuses the user's token sent straight to the API server: only the agent's impersonation gets it in", func(ctx SpecContext) {
		// The kind API server does not trust the test issuer.
		tok, err := kc.issuer.Token(kc.user, []string{kc.group}, stack.Audience, time.Hour)
		Expect(err).NotTo(HaveOccurred())
		out, err := kc.kubectlWith(ctx, kc.tokenKubeconfig(tok), "get", "pods", "-n", wl).CombinedOutput()
		Expect(err).To(HaveOccurred(), "%s", out)
		Expect(string(out)).To(ContainSubstring("Unauthorized"))
	})

	It("has a service account that may only impersonate (and keep its credential Secret)", func(ctx SpecContext) {
		token := strings.TrimSpace(kc.admin(ctx, nil, "create", "token", kindAgentSA, "-n", kindAgentNS, "--duration=1h"))
		path := kc.tokenKubeconfig(token)
		asAgent := func(args ...string) (string, error) {
			out, err := kc.kubectlWith(ctx, path, append([]string{"--request-timeout=10s"}, args...)...).CombinedOutput()
			return string(out), err
		}
		expectOnlyImpersonate(asAgent, kindAgentNS, kindAgentSA, kindCredential, wl)
	})
})

// TestChooseProvider checks E2E_PROVIDER's handling without Docker or a
// cluster.
func TestChooseProvider(t *testing.T) {
	up := func() (bool, string) { return true, "" }
	down := func() (bool, string) { return false, "docker info: Cannot connect to the Docker daemon" }
	for _, tc := range []struct {
		requested string
		docker    func() (bool, string)
		want      string
		note      bool
		err       bool
	}{
		{"", down, "local", false, false},
		{"local", up, "local", false, false},
		{"kind", up, kindName, false, false},
		{"kind", down, "local", true, false},
		{"kinder", up, "", false, true},
	} {
		name, note, err := chooseProvider(tc.requested, tc.docker)
		if name != tc.want || (note != "") != tc.note || (err != nil) != tc.err {
			t.Errorf("chooseProvider(%q): %q, %q, %v; want %q, a note %v, an error %v", tc.requested, name, note, err, tc.want, tc.note, tc.err)
		}
		if tc.note && (strings.Contains(note, "\n") || !strings.Contains(note, "no Docker engine answers") || !strings.Contains(note, "Cannot connect") || !strings.Contains(note, "local provider runs instead")) {
			t.Errorf("chooseProvider(%q) note: %q, want one line naming the cause and the fallback", tc.requested, note)
		}
	}
}

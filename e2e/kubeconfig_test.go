package e2e

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/tether-k8s/tether/fixtures/cluster"
	"github.com/tether-k8s/tether/fixtures/netns"
	"github.com/tether-k8s/tether/fixtures/stack"
)

// The no-local-process mode: `tether-proxy kubeconfig` writes a context
// whose server is the relay's endpoint for the cluster and whose user runs
// `tether-proxy token`; kubectl talks to the relay, which forwards each
// request to the agent. No tether-proxy runs while these specs do.
var _ = Describe("kubectl through the relay's cluster endpoint, with no local process", Ordered, func() {
	var (
		dir, kubeconfig, tokenFile, ctxName, ns, pod string
	)
	lap := func() *netns.Host { return lc.Host(cluster.HostLaptop) }
	// viaRelay runs the real kubectl on the laptop with the written
	// kubeconfig.
	viaRelay := func(ctx context.Context, stdin io.Reader, args ...string) (string, error) {
		cmd := lc.KubectlOn(ctx, lap(), kubeconfig, append([]string{"--context", ctxName}, args...)...)
		cmd.Stdin = stdin
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	mustViaRelay := func(ctx context.Context, stdin io.Reader, args ...string) string {
		GinkgoHelper()
		out, err := viaRelay(ctx, stdin, args...)
		Expect(err).NotTo(HaveOccurred(), "kubectl %s (through the relay's cluster endpoint):\n%s", strings.Join(args, " "), out)
		return out
	}
	// writeKubeconfig runs tether-proxy kubeconfig on the laptop for a
	// token file and context name.
	writeKubeconfig := func(ctx context.Context, token, context string) string {
		GinkgoHelper()
		cmd := exec.CommandContext(ctx, filepath.Join(ts.BinDir(), "tether-proxy"), "kubeconfig", "--relay", ts.RelayURL(lap()),
			"--relay-ca", ts.RelayCAFile(), "--cluster", lc.Name(), "--kubeconfig", kubeconfig, "--context", context, "--token-file", token)
		cmd.Env = append(os.Environ(), "TETHER_TOKEN=")
		out, err := cmd.CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), "tether-proxy kubeconfig:\n%s", out)
		return string(out)
	}
	userToken := func(name, subject string, groups ...string) string {
		GinkgoHelper()
		tok, err := ts.UserToken(subject, groups)
		Expect(err).NotTo(HaveOccurred())
		path := filepath.Join(dir, name)
		Expect(os.WriteFile(path, []byte(tok), 0o600)).To(Succeed())
		return path
	}

	BeforeAll(func(ctx SpecContext) {
		Expect(ts.StopProxy()).To(Succeed(), "stop the stack's tether-proxy")
		DeferCleanup(func(ctx SpecContext) { Expect(ts.RestartProxy(ctx)).To(Succeed(), "restart the stack's tether-proxy") })
		var err error
		dir, err = os.MkdirTemp(lc.WorkDir(), "kubeconfig-")
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(func() { _ = os.RemoveAll(dir) })
		kubeconfig = filepath.Join(dir, "config")
		ctxName = "tether-" + lc.Name()
		tokenFile = userToken("demo.token", "demo-user", stack.DemoGroup)
		out := writeKubeconfig(ctx, tokenFile, ctxName)
		GinkgoWriter.Print(out)
		Expect(out).To(ContainSubstring("added context " + ctxName + " in " + kubeconfig))

		ns = namespaceFor(ctx, stack.DemoGroup, "admin")
		mustViaRelay(ctx, strings.NewReader(deploymentYAML), "apply", "-n", ns, "-f", "-")
		mustViaRelay(ctx, nil, "rollout", "status", "-n", ns, "deployment/web", "--timeout=90s")
		pods := strings.Fields(mustViaRelay(ctx, nil, "get", "pods", "-n", ns, "-l", "app=web", "-o", "name"))
		Expect(pods).NotTo(BeEmpty())
		pod = strings.TrimPrefix(pods[0], "pod/")
	})

	It("wrote a context whose server is the relay and whose user is tether-proxy token, and no tether-proxy runs", func(ctx SpecContext) {
		kc, err := clientcmd.LoadFromFile(kubeconfig)
		Expect(err).NotTo(HaveOccurred())
		Expect(kc.Clusters[ctxName].Server).To(Equal(ts.RelayURL(lap()) + "/v1/clusters/" + lc.Name() + "/k8s"))
		Expect(kc.Clusters[ctxName].CertificateAuthorityData).To(Equal([]byte(readFile(ts.RelayCAFile()))))
		exe := kc.AuthInfos[ctxName].Exec
		Expect(exe).NotTo(BeNil())
		Expect(exe.Command).To(Equal(filepath.Join(ts.BinDir(), "tether-proxy")))
		Expect(exe.Args).To(Equal([]string{"token", "--relay", ts.RelayURL(lap()), "--cluster", lc.Name(), "--token-file=" + tokenFile}))
		Expect(kc.AuthInfos[ctxName].Token).To(BeEmpty(), "the token is not stored in the kubeconfig")
		Expect(cluster.ProbeTCP(ctx, lap(), fmt.Sprintf("127.0.0.1:%d", stack.ProxyPort), time.Second)).NotTo(Succeed(),
			"the stack's tether-proxy still listens on the laptop")
	})

	It("cannot reach the API server directly, so everything below went through the relay", func(ctx SpecContext) {
		cmd := lc.KubectlOn(ctx, lap(), lc.Kubeconfig(), "--server", "https://"+lc.APIServerAddr().String(), "--request-timeout=3s", "get", "--raw", "/version")
		out, err := cmd.CombinedOutput()
		Expect(err).To(HaveOccurred(), "direct access from the laptop: %s", out)
	})

	It("gets and lists, as the caller", func(ctx SpecContext) {
		Expect(mustViaRelay(ctx, nil, "get", "nodes")).To(ContainSubstring("kwok-node-0"))
		Expect(mustViaRelay(ctx, nil, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")).To(Equal("oidc:demo-user"))
		Expect(mustViaRelay(ctx, nil, "get", "pods", "-n", ns, "-o", "name")).To(ContainSubstring("pod/" + pod))
	})

	It("answers kubectl get --raw, at the API server's root paths too", func(ctx SpecContext) {
		Expect(mustViaRelay(ctx, nil, "get", "--raw", "/version")).To(ContainSubstring(`"gitVersion"`))
		Expect(mustViaRelay(ctx, nil, "get", "--raw", "/api")).To(ContainSubstring(`"APIVersions"`))
		Expect(mustViaRelay(ctx, nil, "get", "--raw", "/readyz")).To(Equal("ok"))
		Expect(mustViaRelay(ctx, nil, "get", "--raw", "/api/v1/namespaces/"+ns+"/pods")).To(ContainSubstring(pod))
	})

	It("says the cluster is not connected while its agent is away, and works again when it is back", func(ctx SpecContext) {
		Expect(ts.StopAgent()).To(Succeed())
		restarted := false
		DeferCleanup(func(ctx SpecContext) {
			if !restarted {
				Expect(ts.StartAgent(ctx)).To(Succeed())
			}
		})
		eventuallyNotConnected(func() (string, error) { return viaRelay(ctx, nil, "get", "pods", "-n", ns) })
		Expect(ts.StartAgent(ctx)).To(Succeed())
		restarted = true
		Expect(mustViaRelay(ctx, nil, "get", "pods", "-n", ns, "-o", "name")).To(ContainSubstring("pod/" + pod))
	})

	It("delivers a watch event", func(ctx SpecContext) {
		r := streamFrom(lc.KubectlOn(ctx, lap(), kubeconfig, "--context", ctxName, "get", "configmaps", "-n", ns, "-w", "-o", "name"))
		Eventually(r.text).WithTimeout(20 * time.Second).Should(ContainSubstring("kube-root-ca.crt"))
		name := randomName("event")
		kubectl(ctx, nil, "create", "configmap", name, "-n", ns)
		Eventually(r.text).WithTimeout(20 * time.Second).Should(ContainSubstring("configmap/" + name))
	})

	It("execs with stdin", func(ctx SpecContext) {
		payload := randomName("payload")
		out := mustViaRelay(ctx, strings.NewReader(payload+"\nline two\nline three\n"), "exec", "-i", "-n", ns, pod, "--", "head", "-n", "2")
		Expect(out).To(Equal(payload + "\nline two\n"))
	})

	It("port-forwards 10 MB intact", func(ctx SpecContext) {
		portForward10MB(ctx, lc, lap(), kubeconfig, ns, pod, "--context", ctxName)
	})

	It("follows logs (logs -f)", func(ctx SpecContext) {
		before, after := randomName("before"), randomName("after")
		Expect(lc.AppendPodLog(before)).To(Succeed())
		r := streamFrom(lc.KubectlOn(ctx, lap(), kubeconfig, "--context", ctxName, "logs", "-f", "-n", ns, pod))
		Eventually(r.text).WithTimeout(20 * time.Second).Should(ContainSubstring(before))
		Expect(lc.AppendPodLog(after)).To(Succeed())
		Eventually(r.text).WithTimeout(20 * time.Second).Should(ContainSubstring(after))
	})

	It("refuses kubectl --as at the relay", func(ctx SpecContext) {
		out, err := viaRelay(ctx, nil, "--as=system:admin", "get", "secrets", "-A")
		Expect(err).To(HaveOccurred())
		// The relay's words (the agent says "sets the identity").
		Expect(out).To(ContainSubstring("the Impersonate-User header is not accepted: tether sets your identity from your token"))
		Expect(readFile(ts.LogFile("relay"))).To(ContainSubstring("relay: cluster request with an impersonation header refused"))
	})

	It("refuses, at the relay, a valid user the cluster does not grant", func(ctx SpecContext) {
		other := ctxName + "-mallory"
		writeKubeconfig(ctx, userToken("mallory.token", "mallory", "contractors"), other)
		cmd := lc.KubectlOn(ctx, lap(), kubeconfig, "--context", other, "get", "pods", "-n", ns)
		out, err := cmd.CombinedOutput()
		Expect(err).To(HaveOccurred())
		Expect(string(out)).To(ContainSubstring("Forbidden"))
		Expect(string(out)).To(ContainSubstring("oidc:mallory may not reach cluster " + lc.Name()))
	})

	It("links the relay's audit line to the API server's, which shows the impersonated caller, and logs no token", func(ctx SpecContext) {
		mustViaRelay(ctx, nil, "get", "configmaps", "-n", ns, "-o", "name")
		path := "/api/v1/namespaces/" + ns + "/configmaps"
		var reqID string
		Eventually(func() string {
			m := regexp.MustCompile(`msg="relay: cluster request" audit=true request=(\S+) cluster=`+regexp.QuoteMeta(lc.Name())+
				` user=oidc:demo-user \S+ verb=GET path=`+regexp.QuoteMeta(path)+` status=200 `).FindAllStringSubmatch(readFile(ts.LogFile("relay")), -1)
			if len(m) == 0 {
				return ""
			}
			reqID = m[len(m)-1][1]
			return reqID
		}).WithTimeout(10*time.Second).ShouldNot(BeEmpty(), "the relay's audit line for %s", path)

		// The relay's request ID is the agent's: the API server's audit
		// event carries it, made by the agent impersonating the caller.
		Eventually(func() error { return impersonatedInAuditLog(reqID, "oidc:demo-user", path) }).WithTimeout(10 * time.Second).Should(Succeed())

		// Connections to the agent are pooled per token: kubectl's requests
		// (discovery, then the call) share streams.
		ids := regexp.MustCompile(`msg="relay: cluster request" audit=true request=(\w+)\.\d+ `).FindAllStringSubmatch(readFile(ts.LogFile("relay")), -1)
		streams := map[string]bool{}
		for _, m := range ids {
			streams[m[1]] = true
		}
		GinkgoWriter.Printf("the relay forwarded %d requests on %d streams to the agent\n", len(ids), len(streams))
		Expect(len(streams)).To(BeNumerically("<", len(ids)))

		tok := strings.TrimSpace(readFile(tokenFile))
		Expect(tok).NotTo(BeEmpty())
		for _, name := range []string{"relay", "agent"} {
			Expect(readFile(ts.LogFile(name))).NotTo(ContainSubstring(tok), "the caller's token in the %s log", name)
		}
	})
})

// Beside a user's own kubeconfig, with the real kubectl reading it: what
// tether-proxy and tether-proxy kubeconfig write never repoints an entry
// another context uses (which would send that context's credential to the
// relay), and a tether-proxy's exit removes only what it wrote, putting back
// what it replaced.
var _ = Describe("tether's kubeconfig entries beside a user's own", func() {
	const proxyName = "kubeconfig-proxy"
	port := stack.ProxyPort + 50
	var file, original, adminToken string
	lap := func() *netns.Host { return lc.Host(cluster.HostLaptop) }
	// userServer is the user's own cluster: nothing listens there, so
	// kubectl's error names it when a request goes to it.
	const userServer = "https://127.0.0.1:9"
	// tetherProxy runs tether-proxy to its end, which a refused proxy
	// reaches at once (one that is not refused is stopped after 30 s).
	tetherProxy := func(ctx context.Context, args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		cmd := lap().Command(ctx, filepath.Join(ts.BinDir(), "tether-proxy"), args...)
		cmd.Env = append(os.Environ(), "TETHER_TOKEN=")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	proxyFlags := func(extra ...string) []string {
		return append([]string{"--relay", ts.RelayURL(lap()), "--relay-ca", ts.RelayCAFile(), "--cluster", lc.Name(),
			"--port", fmt.Sprint(port), "--token-file", ts.UserTokenFile(), "--kubeconfig", file}, extra...)
	}
	kubeconfigFlags := func(extra ...string) []string {
		return append([]string{"kubeconfig", "--relay", ts.RelayURL(lap()), "--relay-ca", ts.RelayCAFile(), "--cluster", lc.Name(),
			"--token-file", ts.UserTokenFile(), "--kubeconfig", file}, extra...)
	}
	kubectlOn := func(ctx context.Context, args ...string) (string, error) {
		out, err := lc.KubectlOn(ctx, lap(), file, args...).CombinedOutput()
		return string(out), err
	}
	// view is the whole kubeconfig as kubectl reads it.
	view := func(ctx context.Context) string {
		GinkgoHelper()
		out, err := kubectlOn(ctx, "config", "view", "--raw", "-o", "json")
		Expect(err).NotTo(HaveOccurred(), out)
		return out
	}
	serverOf := func(ctx context.Context, context string) string {
		GinkgoHelper()
		out, err := kubectlOn(ctx, "--context", context, "config", "view", "--minify", "--raw", "-o", "jsonpath={.clusters[0].cluster.server}")
		Expect(err).NotTo(HaveOccurred(), out)
		return out
	}
	// startProxy starts tether-proxy with flags and waits for its port.
	startProxy := func(ctx context.Context, flags ...string) {
		GinkgoHelper()
		Expect(ts.StartProcess(proxyName, lap(), nil, filepath.Join(ts.BinDir(), "tether-proxy"), proxyFlags(flags...)...)).To(Succeed())
		DeferCleanup(func() { _ = ts.StopProcess(proxyName) })
		Expect(ts.WaitForProcess(ctx, proxyName, func() error {
			return cluster.ProbeTCP(ctx, lap(), fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		})).To(Succeed())
	}

	BeforeEach(func(ctx SpecContext) {
		dir, err := os.MkdirTemp(lc.WorkDir(), "user-kubeconfig-")
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(func() { _ = os.RemoveAll(dir) })
		file = filepath.Join(dir, "config")
		adminToken = randomName("work-admin-token")
		cfg := clientcmdapi.NewConfig()
		cfg.Clusters["work"] = &clientcmdapi.Cluster{Server: userServer}
		cfg.AuthInfos["work"] = &clientcmdapi.AuthInfo{Token: randomName("work-token")}
		cfg.AuthInfos["work-admin"] = &clientcmdapi.AuthInfo{Token: adminToken}
		cfg.Contexts["work"] = &clientcmdapi.Context{Cluster: "work", AuthInfo: "work", Namespace: "team-a"}
		cfg.Contexts["work-ro"] = &clientcmdapi.Context{Cluster: "work", AuthInfo: "work-admin"}
		cfg.CurrentContext = "work"
		Expect(clientcmd.WriteToFile(*cfg, file)).To(Succeed())
		original = view(ctx)
	})

	It("tether-proxy kubeconfig refuses to repoint a cluster another context shares; with --overwrite the context gets entries of its own", func(ctx SpecContext) {
		before := readFile(file)
		out, err := tetherProxy(ctx, kubeconfigFlags("--context", "work")...)
		Expect(err).To(HaveOccurred(), "tether-proxy kubeconfig --context work:\n%s", out)
		Expect(out).To(ContainSubstring("context work in " + file + " was not written by tether"))
		Expect(out).To(ContainSubstring("also used by context work-ro"))
		Expect(readFile(file)).To(Equal(before), "the refused command changed the file")

		out, err = tetherProxy(ctx, kubeconfigFlags("--context", "work", "--overwrite")...)
		Expect(err).NotTo(HaveOccurred(), out)
		GinkgoWriter.Print(out)
		Expect(serverOf(ctx, "work")).To(Equal(ts.RelayURL(lap()) + "/v1/clusters/" + lc.Name() + "/k8s"))
		Expect(serverOf(ctx, "work-ro")).To(Equal(userServer), "work-ro's cluster was repointed")

		// work goes through the relay as the caller; work-ro still sends
		// work-admin's token to its own server, not to the relay.
		out, err = kubectlOn(ctx, "--context", "work", "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(out).To(Equal("oidc:demo-user"))
		out, err = kubectlOn(ctx, "--context", "work-ro", "--request-timeout=5s", "get", "--raw", "/version")
		Expect(err).To(HaveOccurred(), out)
		Expect(out).To(ContainSubstring("127.0.0.1:9"), "work-ro's request went elsewhere than its own server")
		Expect(readFile(ts.LogFile("relay"))).NotTo(ContainSubstring(adminToken))
	})

	It("tether-proxy refuses a user's context; with --overwrite it puts the context back when it exits", func(ctx SpecContext) {
		before := readFile(file)
		out, err := tetherProxy(ctx, proxyFlags("--context", "work")...)
		Expect(err).To(HaveOccurred(), "tether-proxy --context work:\n%s", out)
		Expect(out).To(ContainSubstring("context work in " + file + " was not written by tether"))
		Expect(readFile(file)).To(Equal(before), "the refused proxy changed the file")

		startProxy(ctx, "--context", "work", "--overwrite")
		Expect(serverOf(ctx, "work")).To(Equal(fmt.Sprintf("https://127.0.0.1:%d", port)))
		Expect(serverOf(ctx, "work-ro")).To(Equal(userServer), "work-ro's cluster was repointed")
		out, err = kubectlOn(ctx, "--context", "work", "get", "nodes")
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(out).To(ContainSubstring("kwok-node-0"))

		Expect(ts.StopProcess(proxyName)).To(Succeed())
		Expect(view(ctx)).To(MatchJSON(original), "the user's kubeconfig after the proxy exited")
		Expect(readFile(ts.LogFile(proxyName))).To(ContainSubstring("tether-proxy: put back context work as it was; removed cluster work-tether, user work-tether in " + file))
	})

	It("tether-proxy refuses the context tether-proxy kubeconfig wrote; with --overwrite it puts it back when it exits", func(ctx SpecContext) {
		ctxName := "tether-" + lc.Name()
		out, err := tetherProxy(ctx, kubeconfigFlags()...)
		Expect(err).NotTo(HaveOccurred(), out)
		written := view(ctx)
		out, err = tetherProxy(ctx, proxyFlags()...)
		Expect(err).To(HaveOccurred(), "tether-proxy over the context tether-proxy kubeconfig wrote:\n%s", out)
		Expect(out).To(ContainSubstring("context " + ctxName + " in " + file + " was written by tether-proxy kubeconfig"))
		Expect(view(ctx)).To(MatchJSON(written))

		startProxy(ctx, "--overwrite")
		Expect(serverOf(ctx, ctxName)).To(Equal(fmt.Sprintf("https://127.0.0.1:%d", port)))
		Expect(ts.StopProcess(proxyName)).To(Succeed())
		Expect(view(ctx)).To(MatchJSON(written), "the kubeconfig after the proxy exited")
		out, err = kubectlOn(ctx, "--context", ctxName, "get", "nodes")
		Expect(err).NotTo(HaveOccurred(), "the relay's cluster endpoint after the proxy exited: %s", out)
		Expect(out).To(ContainSubstring("kwok-node-0"))
	})
})

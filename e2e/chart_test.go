package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/tether-k8s/tether/fixtures/cluster"
	"github.com/tether-k8s/tether/fixtures/netns"
	"github.com/tether-k8s/tether/fixtures/stack"
)

// The agent chart, installed with Helm's Go SDK into the local cluster, and
// its Deployment's container run as its pod would: the real tether-agent
// binary with the rendered args and env, the ConfigMap and Secret the
// release created written as mounted files, the chart's ServiceAccount's
// token, and the chart's user and groups, inside the firewalled cluster
// host. (kwok also "runs" the Deployment's pod, but runs nothing in it: the
// process below is the one that serves.) A new cluster at the relay and a
// second tether-proxy on the laptop carry the real kubectl to it.
var _ = Describe("the agent chart, installed with Helm's SDK and run as its pod would run", Ordered, func() {
	const (
		release   = "tether-agent"
		proxyPort = stack.ProxyPort + 1
		group     = "chart-team"
	)
	var (
		name, agentNS, wl, pod, user string
		helm                         *helmInstaller
		res                          *helmResult
		agent                        *podProcess
		proxy                        *stack.Proxy
		uninstalled                  bool
	)
	clusterHost := func() *netns.Host { return lc.Host(cluster.HostCluster) }

	BeforeAll(func(ctx SpecContext) {
		begin := time.Now()
		helm = buildHelmInstaller(ctx, func(ctx context.Context, args ...string) *exec.Cmd {
			// As an installer in the cluster would: from inside the firewalled
			// host, with the admin kubeconfig.
			return clusterHost().Command(ctx, args[0], args[1:]...)
		}, lc.Kubeconfig())
		GinkgoWriter.Printf("built charts/test/cmd/helminstall (Helm's Go SDK) in %s\n", time.Since(begin).Round(time.Millisecond))
	}, NodeTimeout(10*time.Minute))

	BeforeAll(func(ctx SpecContext) {
		begin := time.Now()
		name, agentNS, user = randomName("chart"), randomName("tether-chart"), randomName("chart-user")
		kubectl(ctx, nil, "create", "namespace", agentNS)
		DeferCleanup(func(ctx SpecContext) { kubectl(ctx, nil, "delete", "namespace", agentNS, "--wait=false") })

		// The operator's steps (docs/install.md): a cluster at the relay, its
		// join token in a Secret, then helm install.
		token, err := ts.RelayCommand(ctx, "cluster", "create", name).Output()
		Expect(err).NotTo(HaveOccurred(), "tether-relay cluster create %s", name)
		DeferCleanup(func(ctx SpecContext) {
			out, err := ts.RelayCommand(ctx, "cluster", "delete", name).CombinedOutput()
			Expect(err).NotTo(HaveOccurred(), "tether-relay cluster delete %s: %s", name, out)
		})
		// A new cluster admits no one at the relay until granted.
		out, err := ts.RelayCommand(ctx, "cluster", "grant", name, "--group", "oidc:"+group).CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), "tether-relay cluster grant %s: %s", name, out)
		kubectl(ctx, nil, "create", "secret", "generic", "join-token", "-n", agentNS, "--from-literal=token="+strings.TrimSpace(string(token)))
		ca, err := os.ReadFile(ts.RelayCAFile())
		Expect(err).NotTo(HaveOccurred())

		res = helm.install(ctx, agentNS, release, "tether-agent", map[string]any{
			"cluster":                 name,
			"relay":                   map[string]any{"url": ts.RelayURL(clusterHost()), "caPEM": string(ca)},
			"existingJoinTokenSecret": "join-token",
			"authenticationConfig":    yamlToJSON(ts.Issuer().AuthenticationConfig(stack.Audience)),
			// One replica: the one this spec runs.
			"replicas": 1,
		}, 0)
		DeferCleanup(func(ctx SpecContext) {
			if !uninstalled {
				helm.uninstall(ctx, agentNS, release)
			}
		})
		GinkgoWriter.Printf("helm install %s in %s: %s revision %d, objects: %s\n", release, agentNS, res.Status, res.Revision, strings.Join(res.Objects, ", "))

		agent = startAsPod(ctx, res.Deployment, agentNS, "chart-agent")
		DeferCleanup(func() { Expect(ts.StopProcess(agent.name)).To(Succeed()) })
		GinkgoWriter.Printf("the chart's container runs: tether-agent %s\n", strings.Join(agent.args, " "))

		tokFile := filepath.Join(GinkgoT().TempDir(), "user.token")
		tok, err := ts.UserToken(user, []string{group})
		Expect(err).NotTo(HaveOccurred())
		Expect(os.WriteFile(tokFile, []byte(tok), 0o600)).To(Succeed())
		proxy, err = ts.StartProxy(ctx, "chart-proxy", name, proxyPort, tokFile)
		Expect(err).NotTo(HaveOccurred(), "a second tether-proxy, for cluster %s", name)
		DeferCleanup(func() { Expect(ts.StopProcess(proxy.Name)).To(Succeed()) })

		wl = namespaceFor(ctx, group, "admin")
		kubectl(ctx, strings.NewReader(deploymentYAML), "apply", "-n", wl, "-f", "-")
		kubectl(ctx, nil, "rollout", "status", "-n", wl, "deployment/web", "--timeout=90s")
		pod = kubectl(ctx, nil, "get", "pods", "-n", wl, "-l", "app=web", "-o", "jsonpath={.items[0].metadata.name}")
		GinkgoWriter.Printf("chart installed, agent ready, proxy up in %s\n", time.Since(begin).Round(time.Millisecond))
	}, NodeTimeout(2*time.Minute))

	It("holds relay sessions for its own cluster, with the credential it stored through the chart's Role", func(ctx SpecContext) {
		out, err := ts.RelayCommand(ctx, "cluster", "list").CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), "%s", out)
		row := relayClusterRow(string(out), name)
		Expect(row).To(HaveKeyWithValue("CREDENTIALS", "1"), "cluster %s: one credential", name)
		Expect(row).To(HaveKeyWithValue("SESSIONS", "2"), "cluster %s: the chart's --sessions=2", name)
		typ := kubectl(ctx, nil, "get", "secret", agent.credentialSecret, "-n", agentNS, "-o", "jsonpath={.type}")
		Expect(typ).To(Equal("kubernetes.io/tls"))
	})

	It("carries kubectl from the laptop as the OIDC user: get, list, create, exec, and RBAC still decides", func(ctx SpecContext) {
		via := func(stdin io.Reader, args ...string) (string, error) {
			cmd := proxy.Kubectl(ctx, args...)
			cmd.Stdin = stdin
			out, err := cmd.CombinedOutput()
			return string(out), err
		}
		coreSmoke(via, user, wl, pod)
		// The chart's agent served it: its own counters moved.
		metrics, err := agent.get(ctx, "/metrics")
		Expect(err).NotTo(HaveOccurred())
		Expect(metrics).To(MatchRegexp(`tether_agent_requests_total\{code="200",refused="false"\} [1-9]`))
		Expect(metrics).To(MatchRegexp(`tether_agent_requests_total\{code="403",refused="false"\} [1-9]`))
		Expect(metrics).To(ContainSubstring("tether_agent_relay_sessions 2"))
	})

	It("has a service account that may only impersonate (and keep its credential Secret)", func(ctx SpecContext) {
		asAgent := func(args ...string) (string, error) {
			out, err := lc.KubectlOn(ctx, clusterHost(), agent.kubeconfig, append([]string{"--request-timeout=10s"}, args...)...).CombinedOutput()
			return string(out), err
		}
		expectOnlyImpersonate(asAgent, agentNS, agent.serviceAccount, agent.credentialSecret, wl)
	})

	It("uninstalls with Helm's SDK, leaving only the credential Secret", func(ctx SpecContext) {
		Expect(ts.StopProcess(proxy.Name)).To(Succeed())
		Expect(ts.StopProcess(agent.name)).To(Succeed())
		helm.uninstall(ctx, agentNS, release)
		uninstalled = true
		for _, obj := range []string{"deployment/" + res.Deployment.Name, "serviceaccount/" + agent.serviceAccount, "configmap/" + res.Deployment.Name} {
			out, err := lc.KubectlOutput(ctx, "get", obj, "-n", agentNS)
			Expect(err).To(HaveOccurred(), "%s survived helm uninstall: %s", obj, out)
			Expect(out).To(ContainSubstring("NotFound"))
		}
		roles := kubectl(ctx, nil, "get", "clusterroles,clusterrolebindings", "-o", "name")
		Expect(roles).NotTo(ContainSubstring(agentNS), "the release's ClusterRole and binding are gone")
		Expect(kubectl(ctx, nil, "get", "secret", agent.credentialSecret, "-n", agentNS, "-o", "name")).To(ContainSubstring(agent.credentialSecret))
	})
})

// relayClusterRow returns the row of `tether-relay cluster list` for
// cluster, by column name.
func relayClusterRow(list, cluster string) map[string]string {
	GinkgoHelper()
	lines := strings.Split(strings.TrimSpace(list), "\n")
	header := strings.Fields(lines[0])
	Expect(header).To(ContainElement("NAME"), "the header of tether-relay cluster list:\n%s", list)
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) == len(header) && f[0] == cluster {
			row := map[string]string{}
			for i, h := range header {
				row[h] = f[i]
			}
			return row
		}
	}
	Fail(fmt.Sprintf("no cluster %s in tether-relay cluster list:\n%s", cluster, list))
	return nil
}

// coreSmoke runs the core kubectl flows through a tether-proxy (via runs
// kubectl with its context) as the OIDC user, who administers namespace wl,
// where pod runs: get, list, create, exec with stdin, and a Forbidden from
// the API server elsewhere, proving the agent impersonated the caller.
func coreSmoke(via func(stdin io.Reader, args ...string) (string, error), user, wl, pod string) {
	GinkgoHelper()
	must := func(stdin io.Reader, args ...string) string {
		GinkgoHelper()
		out, err := via(stdin, args...)
		Expect(err).NotTo(HaveOccurred(), "kubectl %s (through tether):\n%s", strings.Join(args, " "), out)
		return out
	}
	Expect(must(nil, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")).To(Equal("oidc:" + user))
	Expect(must(nil, "get", "pods", "-n", wl, "-o", "name")).To(ContainSubstring("pod/" + pod))
	cm := randomName("smoke")
	must(nil, "create", "configmap", cm, "-n", wl, "--from-literal=k=v")
	Expect(must(nil, "get", "configmap", cm, "-n", wl, "-o", "jsonpath={.data.k}")).To(Equal("v"))
	Expect(must(nil, "get", "configmaps", "-n", wl, "-o", "name")).To(ContainSubstring("configmap/" + cm))
	must(nil, "delete", "configmap", cm, "-n", wl)
	payload := randomName("payload")
	Expect(must(strings.NewReader(payload+"\nline two\nline three\n"), "exec", "-i", "-n", wl, pod, "--", "head", "-n", "2")).To(Equal(payload + "\nline two\n"))
	out, err := via(nil, "get", "pods", "-n", "kube-system")
	Expect(err).To(HaveOccurred(), "the user has no rights in kube-system: %s", out)
	Expect(out).To(ContainSubstring(`User "oidc:` + user + `" cannot list resource "pods"`))
	GinkgoWriter.Printf("through tether as oidc:%s: whoami, get, list, create, delete, exec -i; Forbidden in kube-system\n", user)
}

// canI is one row of `kubectl auth can-i --list`.
type canI struct{ resource, nonResourceURLs, resourceNames, verbs string }

var canIRow = regexp.MustCompile(`^(\S*)\s+\[([^\]]*)\]\s+\[([^\]]*)\]\s+\[([^\]]*)\]\s*$`)

func parseCanIList(out string) []canI {
	GinkgoHelper()
	var rows []canI
	for i, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		if i == 0 {
			Expect(line).To(HavePrefix("Resources"), "the header of kubectl auth can-i --list")
			continue
		}
		m := canIRow.FindStringSubmatch(line)
		Expect(m).NotTo(BeNil(), "a row of kubectl auth can-i --list: %q", line)
		rows = append(rows, canI{m[1], m[2], m[3], m[4]})
	}
	return rows
}

// expectOnlyImpersonate checks, with the agent's own service-account token
// (asAgent runs kubectl with it, directly against the API server), that the
// account can read nothing, and that everything it may do is impersonation,
// its credential Secret in its namespace, and what every authenticated user
// may do (self-reviews, discovery).
func expectOnlyImpersonate(asAgent func(args ...string) (string, error), agentNS, sa, credSecret, otherNS string) {
	GinkgoHelper()
	must := func(args ...string) string {
		GinkgoHelper()
		out, err := asAgent(args...)
		Expect(err).NotTo(HaveOccurred(), "kubectl %s (as the agent's service account):\n%s", strings.Join(args, " "), out)
		return out
	}
	forbidden := func(want string, args ...string) {
		GinkgoHelper()
		out, err := asAgent(args...)
		Expect(err).To(HaveOccurred(), "kubectl %s as the agent's service account must be refused:\n%s", strings.Join(args, " "), out)
		Expect(out).To(And(ContainSubstring("Forbidden"), ContainSubstring(want)))
	}
	self := "system:serviceaccount:" + agentNS + ":" + sa
	// The token works: the account is who it should be, and may read its
	// own credential Secret...
	Expect(must("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")).To(Equal(self))
	Expect(must("get", "secret", credSecret, "-n", agentNS, "-o", "name")).To(Equal("secret/" + credSecret + "\n"))
	// ...and nothing else.
	forbidden(`cannot list resource "secrets" in API group "" at the cluster scope`, "get", "secrets", "-A")
	forbidden(`cannot list resource "secrets" in API group "" in the namespace "`+agentNS+`"`, "get", "secrets", "-n", agentNS)
	forbidden(`cannot list resource "pods" in API group "" in the namespace "`+otherNS+`"`, "get", "pods", "-n", otherNS)
	forbidden(`cannot list resource "pods" in API group "" in the namespace "`+agentNS+`"`, "get", "pods", "-n", agentNS)
	forbidden(`cannot list resource "nodes"`, "get", "nodes")
	Expect(must("auth", "can-i", "impersonate", "users")).To(Equal("yes\n"))
	out, err := asAgent("auth", "can-i", "create", "pods", "-n", otherNS)
	Expect(err).To(HaveOccurred())
	Expect(out).To(Equal("no\n"))

	everyone := map[string]bool{
		"selfsubjectreviews.authentication.k8s.io":      true,
		"selfsubjectaccessreviews.authorization.k8s.io": true,
		"selfsubjectrulesreviews.authorization.k8s.io":  true,
	}
	for _, ns := range []string{agentNS, otherNS} {
		listing := must("auth", "can-i", "--list", "-n", ns)
		GinkgoWriter.Printf("kubectl auth can-i --list -n %s, as %s:\n%s", ns, self, listing)
		impersonates, secrets := map[string]bool{}, 0
		for _, r := range parseCanIList(listing) {
			switch {
			case r.resource == "":
				Expect(r.verbs).To(Equal("get"), "non-resource URLs %s: only get", r.nonResourceURLs)
			case r.verbs == "impersonate":
				Expect(r.resourceNames).To(BeEmpty())
				impersonates[r.resource] = true
			case everyone[r.resource]:
				Expect(r.verbs).To(Equal("create"), "%s", r.resource)
			case r.resource == "secrets" && ns == agentNS && r.resourceNames == "" && r.verbs == "create",
				r.resource == "secrets" && ns == agentNS && r.resourceNames == credSecret && r.verbs == "get update":
				secrets++
			default:
				Fail(fmt.Sprintf("the agent's service account may %s %s (names %q) in namespace %s: more than impersonation", r.verbs, r.resource, r.resourceNames, ns))
			}
		}
		for _, res := range []string{"users", "groups", "serviceaccounts", "uids.authentication.k8s.io", "userextras.authentication.k8s.io/tether.io/request-id"} {
			Expect(impersonates).To(HaveKey(res), "may impersonate %s", res)
		}
		if ns == agentNS {
			Expect(secrets).To(Equal(2), "create secrets, get and update its credential Secret")
		}
	}
}

// yamlToJSON turns a YAML document into JSON, for a chart value.
func yamlToJSON(doc string) json.RawMessage {
	GinkgoHelper()
	b, err := utilyaml.ToJSON([]byte(doc))
	Expect(err).NotTo(HaveOccurred())
	return b
}

// helmResult is what charts/test/cmd/helminstall prints after an install.
type helmResult struct {
	Release    string             `json:"release"`
	Namespace  string             `json:"namespace"`
	Revision   int                `json:"revision"`
	Status     string             `json:"status"`
	Objects    []string           `json:"objects"`
	Manifest   string             `json:"manifest"`
	Deployment *appsv1.Deployment `json:"deployment"`
}

// helmInstaller runs charts/test/cmd/helminstall, which installs and
// uninstalls the charts with Helm's Go SDK. The program lives in the nested
// module charts/test so the main module never depends on Helm.
type helmInstaller struct {
	bin, chartsDir, kubeconfig string
	command                    func(ctx context.Context, args ...string) *exec.Cmd
}

// buildHelmInstaller builds helminstall into .cache/charts-test (go build
// leaves an up-to-date binary alone). command runs it where the cluster's
// admin kubeconfig works.
func buildHelmInstaller(ctx context.Context, command func(ctx context.Context, args ...string) *exec.Cmd, kubeconfig string) *helmInstaller {
	GinkgoHelper()
	root, err := filepath.Abs("..")
	Expect(err).NotTo(HaveOccurred())
	bin := filepath.Join(root, ".cache", "charts-test", "helminstall")
	cmd := exec.CommandContext(ctx, "go", "build", "-buildvcs=false", "-o", bin, "./cmd/helminstall")
	cmd.Dir = filepath.Join(root, "charts", "test")
	cmd.Env = append(os.Environ(), "GOWORK=off")
	out, err := cmd.CombinedOutput()
	Expect(err).NotTo(HaveOccurred(), "go build ./cmd/helminstall in charts/test:\n%s", out)
	return &helmInstaller{bin: bin, chartsDir: filepath.Join(root, "charts"), kubeconfig: kubeconfig, command: command}
}

// install installs chart (a directory of charts/) as release in namespace,
// with vals, waiting up to wait for its resources (0: not at all).
func (h *helmInstaller) install(ctx context.Context, namespace, release, chart string, vals map[string]any, wait time.Duration) *helmResult {
	GinkgoHelper()
	b, err := json.Marshal(vals)
	Expect(err).NotTo(HaveOccurred())
	valuesFile := filepath.Join(GinkgoT().TempDir(), release+"-values.json")
	Expect(os.WriteFile(valuesFile, b, 0o600)).To(Succeed())
	stdout := h.run(ctx, "install", "-kubeconfig", h.kubeconfig, "-namespace", namespace, "-release", release,
		"-chart", filepath.Join(h.chartsDir, chart), "-values", valuesFile, "-wait", wait.String())
	var res helmResult
	Expect(json.Unmarshal(stdout, &res)).To(Succeed(), "helminstall's output: %s", stdout)
	Expect(res.Status).To(Equal("deployed"))
	Expect(res.Deployment).NotTo(BeNil())
	return &res
}

// uninstall uninstalls release from namespace.
func (h *helmInstaller) uninstall(ctx context.Context, namespace, release string) {
	GinkgoHelper()
	h.run(ctx, "uninstall", "-kubeconfig", h.kubeconfig, "-namespace", namespace, "-release", release)
}

func (h *helmInstaller) run(ctx context.Context, args ...string) []byte {
	GinkgoHelper()
	cmd := h.command(ctx, append([]string{h.bin}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	GinkgoWriter.Print(stderr.String())
	Expect(err).NotTo(HaveOccurred(), "helminstall %s:\n%s", strings.Join(args, " "), stderr.String())
	return stdout.Bytes()
}

// podProcess is a Deployment's container run by startAsPod.
type podProcess struct {
	// name is the stack process's name.
	name string
	// args are the container's args as run, paths rewritten.
	args []string
	// kubeconfig holds the pod's service-account token (tokenFile) and the
	// API server's address inside the cluster.
	kubeconfig       string
	serviceAccount   string
	credentialSecret string
	// probePort is the port of the readiness probe, on the cluster host.
	probePort int
}

// get fetches path from the container's probe port, from inside the
// cluster host, as the kubelet would.
func (p *podProcess) get(ctx context.Context, path string) (string, error) {
	client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DialContext: lc.Host(cluster.HostCluster).DialContext}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:"+strconv.Itoa(p.probePort)+path, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return string(body), fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return string(body), nil
}

// imagePath is PATH in tether's images (images/*.Dockerfile).
const imagePath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// startAsPod runs dep's only container as a kubelet would run its pod, in
// the cluster host, as stack process procName, and waits until its
// readiness probe passes. What it does as the kubelet:
//   - the image's entrypoint is the binary of the same name in bin/;
//   - env: the container's, with fieldRef metadata.name/namespace, plus the
//     variables a kubelet adds (HOSTNAME, KUBERNETES_SERVICE_*); $(VAR) in
//     env and args expanded as Kubernetes does;
//   - each ConfigMap and Secret volume mounted is read from the API server
//     (the objects the release created) and written with its items, modes
//     and fsGroup; args naming a mount path are rewritten to those files;
//   - the service account token: TokenRequest for the pod's service account
//     (kubectl create token), with ca.crt and namespace, as the kubelet
//     projects it; since rest.InClusterConfig reads fixed paths, a
//     --kubeconfig with that tokenFile and the API server's in-cluster
//     address is added to the args;
//   - the container's runAsUser, runAsGroup and the pod's fsGroup (setpriv),
//     with no capabilities and no_new_privs (allowPrivilegeEscalation:
//     false). A read-only root file system is not emulated.
func startAsPod(ctx context.Context, dep *appsv1.Deployment, ns, procName string) *podProcess {
	GinkgoHelper()
	spec := dep.Spec.Template.Spec
	Expect(spec.Containers).To(HaveLen(1), "one container")
	Expect(spec.InitContainers).To(BeEmpty())
	c := spec.Containers[0]
	Expect(c.Command).To(BeEmpty(), "the image's entrypoint runs")
	image := path.Base(c.Image)
	image = strings.SplitN(strings.SplitN(image, "@", 2)[0], ":", 2)[0]
	bin := filepath.Join(ts.BinDir(), image)
	Expect(bin).To(BeAnExistingFile(), "the binary of image %s", c.Image)

	suffix := make([]byte, 3)
	_, _ = rand.Read(suffix)
	podName := dep.Name + "-" + hex.EncodeToString(suffix)
	uid, gid, fsGroup := securityIDs(spec, c)
	dir, err := os.MkdirTemp("", "tether-pod-")
	Expect(err).NotTo(HaveOccurred())
	Expect(os.Chmod(dir, 0o755)).To(Succeed())
	DeferCleanup(func() { _ = os.RemoveAll(dir) })
	writeFile := func(name string, data []byte, mode os.FileMode) {
		GinkgoHelper()
		Expect(os.MkdirAll(filepath.Dir(name), 0o755)).To(Succeed())
		Expect(os.WriteFile(name, data, mode)).To(Succeed())
		Expect(os.Chmod(name, mode)).To(Succeed())
		if fsGroup >= 0 {
			Expect(os.Chown(name, 0, int(fsGroup))).To(Succeed())
		}
	}

	// Env, as the kubelet builds it.
	apiAddr := lc.APIServerAddr()
	vars := map[string]string{
		"KUBERNETES_SERVICE_HOST": apiAddr.Addr().String(),
		"KUBERNETES_SERVICE_PORT": strconv.Itoa(int(apiAddr.Port())),
	}
	env := []string{imagePath, "HOSTNAME=" + podName,
		"KUBERNETES_SERVICE_HOST=" + vars["KUBERNETES_SERVICE_HOST"], "KUBERNETES_SERVICE_PORT=" + vars["KUBERNETES_SERVICE_PORT"]}
	for _, e := range c.Env {
		v := expandK8s(e.Value, vars)
		if e.ValueFrom != nil {
			Expect(e.ValueFrom.FieldRef).NotTo(BeNil(), "env %s: only fieldRef is emulated", e.Name)
			switch e.ValueFrom.FieldRef.FieldPath {
			case "metadata.name":
				v = podName
			case "metadata.namespace":
				v = ns
			default:
				Fail("env " + e.Name + ": fieldRef " + e.ValueFrom.FieldRef.FieldPath + " is not emulated")
			}
		}
		vars[e.Name] = v
		env = append(env, e.Name+"="+v)
	}

	// Volumes: the release's ConfigMaps and Secrets, read back from the API
	// server.
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		v, ok := volumes[m.Name]
		Expect(ok).To(BeTrue(), "volume %s is mounted but not defined", m.Name)
		local := filepath.Join(dir, "volumes", m.Name)
		Expect(os.MkdirAll(local, 0o755)).To(Succeed())
		mounts[m.MountPath] = local
		var data map[string][]byte
		var items []corev1.KeyToPath
		var mode *int32
		switch {
		case v.ConfigMap != nil:
			var cm corev1.ConfigMap
			Expect(client.Resources(ns).Get(ctx, v.ConfigMap.Name, ns, &cm)).To(Succeed(), "ConfigMap %s of volume %s", v.ConfigMap.Name, m.Name)
			data = map[string][]byte{}
			for k, s := range cm.Data {
				data[k] = []byte(s)
			}
			items, mode = v.ConfigMap.Items, v.ConfigMap.DefaultMode
		case v.Secret != nil:
			var sec corev1.Secret
			err := client.Resources(ns).Get(ctx, v.Secret.SecretName, ns, &sec)
			if apierrors.IsNotFound(err) && v.Secret.Optional != nil && *v.Secret.Optional {
				continue
			}
			Expect(err).NotTo(HaveOccurred(), "Secret %s of volume %s", v.Secret.SecretName, m.Name)
			data, items, mode = sec.Data, v.Secret.Items, v.Secret.DefaultMode
		default:
			Fail("volume " + m.Name + ": only ConfigMap and Secret volumes are emulated")
		}
		fileMode := os.FileMode(0o644)
		if mode != nil {
			fileMode = os.FileMode(*mode)
		}
		if len(items) == 0 {
			for k := range data {
				items = append(items, corev1.KeyToPath{Key: k, Path: k})
			}
		}
		for _, it := range items {
			b, ok := data[it.Key]
			Expect(ok).To(BeTrue(), "volume %s: key %s missing", m.Name, it.Key)
			fm := fileMode
			if it.Mode != nil {
				fm = os.FileMode(*it.Mode)
			}
			writeFile(filepath.Join(local, it.Path), b, fm)
		}
	}

	// The service account's token, as the kubelet projects it.
	Expect(spec.AutomountServiceAccountToken).To(HaveValue(BeTrue()), "the pod mounts its service account token")
	sa := spec.ServiceAccountName
	token := kubectl(ctx, nil, "create", "token", sa, "-n", ns, "--duration=1h")
	saDir := filepath.Join(dir, "serviceaccount")
	writeFile(filepath.Join(saDir, "token"), []byte(strings.TrimSpace(token)), 0o640)
	writeFile(filepath.Join(saDir, "ca.crt"), clusterCA(), 0o644)
	writeFile(filepath.Join(saDir, "namespace"), []byte(ns), 0o644)
	kc := clientcmdapi.NewConfig()
	kc.Clusters["in-cluster"] = &clientcmdapi.Cluster{Server: "https://" + apiAddr.String(), CertificateAuthority: filepath.Join(saDir, "ca.crt")}
	kc.AuthInfos["sa"] = &clientcmdapi.AuthInfo{TokenFile: filepath.Join(saDir, "token")}
	kc.Contexts["in-cluster"] = &clientcmdapi.Context{Cluster: "in-cluster", AuthInfo: "sa", Namespace: ns}
	kc.CurrentContext = "in-cluster"
	kubeconfig := filepath.Join(saDir, "kubeconfig")
	kcBytes, err := clientcmd.Write(*kc)
	Expect(err).NotTo(HaveOccurred())
	writeFile(kubeconfig, kcBytes, 0o640)

	// Args: expanded, mount paths rewritten, every file they name present.
	p := &podProcess{name: procName, kubeconfig: kubeconfig, serviceAccount: sa}
	for _, a := range c.Args {
		a = expandK8s(a, vars)
		for mp, local := range mounts {
			a = strings.ReplaceAll(a, strings.TrimSuffix(mp, "/")+"/", local+"/")
		}
		Expect(a).NotTo(HavePrefix("--kubeconfig"), "the chart's agent uses its in-cluster configuration")
		if _, v, ok := strings.Cut(a, "="); ok && strings.HasPrefix(v, "/") {
			Expect(v).To(BeAnExistingFile(), "arg %s names a file the pod does not mount", a)
		}
		if v, ok := strings.CutPrefix(a, "--credential-secret="); ok {
			secretNS, secret, _ := strings.Cut(v, "/")
			Expect(secretNS).To(Equal(ns), "the credential Secret is in the release's namespace")
			p.credentialSecret = secret
		}
		p.args = append(p.args, a)
	}
	Expect(p.credentialSecret).NotTo(BeEmpty(), "--credential-secret")
	p.args = append(p.args, "--kubeconfig="+kubeconfig)

	probe := c.ReadinessProbe
	Expect(probe).NotTo(BeNil())
	Expect(probe.HTTPGet).NotTo(BeNil())
	p.probePort = probe.HTTPGet.Port.IntValue()
	if probe.HTTPGet.Port.StrVal != "" {
		for _, port := range c.Ports {
			if port.Name == probe.HTTPGet.Port.StrVal {
				p.probePort = int(port.ContainerPort)
			}
		}
	}
	Expect(p.probePort).To(BeNumerically(">", 0), "the readiness probe's port")

	setpriv, err := exec.LookPath("setpriv")
	Expect(err).NotTo(HaveOccurred(), "setpriv (util-linux) runs the container as its user")
	run := []string{"--reuid=" + strconv.FormatInt(uid, 10), "--regid=" + strconv.FormatInt(gid, 10)}
	if fsGroup >= 0 {
		run = append(run, "--groups="+strconv.FormatInt(fsGroup, 10))
	} else {
		run = append(run, "--clear-groups")
	}
	run = append(run, "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--", bin)
	Expect(ts.StartProcess(procName, lc.Host(cluster.HostCluster), env, setpriv, append(run, p.args...)...)).To(Succeed())
	err = ts.WaitForProcess(ctx, procName, func() error {
		_, err := p.get(ctx, probe.HTTPGet.Path)
		return err
	})
	if err != nil {
		_ = ts.StopProcess(procName)
	}
	Expect(err).NotTo(HaveOccurred(), "the container's readiness probe (%s on port %d)", probe.HTTPGet.Path, p.probePort)
	// It runs as the pod's user and groups, with no capabilities.
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", ts.ProcessPID(procName)))
	Expect(err).NotTo(HaveOccurred())
	Expect(string(status)).To(And(
		MatchRegexp(fmt.Sprintf(`(?m)^Name:\s+%s$`, regexp.QuoteMeta(image[:min(len(image), 15)]))),
		MatchRegexp(fmt.Sprintf(`(?m)^Uid:\s+%[1]d\s+%[1]d\s+%[1]d\s+%[1]d$`, uid)),
		MatchRegexp(fmt.Sprintf(`(?m)^Gid:\s+%[1]d\s+%[1]d\s+%[1]d\s+%[1]d$`, gid)),
		MatchRegexp(`(?m)^CapEff:\s+0+$`), MatchRegexp(`(?m)^NoNewPrivs:\s+1$`)), "/proc/PID/status of the container's process")
	if live := c.LivenessProbe; live != nil && live.HTTPGet != nil {
		_, err := p.get(ctx, live.HTTPGet.Path)
		Expect(err).NotTo(HaveOccurred(), "the liveness probe")
	}
	return p
}

// securityIDs returns the user, group and fsGroup (-1: none) the pod's
// container runs with; it must be non-root.
func securityIDs(spec corev1.PodSpec, c corev1.Container) (uid, gid, fsGroup int64) {
	GinkgoHelper()
	uid, gid, fsGroup = -1, -1, -1
	if psc := spec.SecurityContext; psc != nil {
		if psc.RunAsUser != nil {
			uid = *psc.RunAsUser
		}
		if psc.RunAsGroup != nil {
			gid = *psc.RunAsGroup
		}
		if psc.FSGroup != nil {
			fsGroup = *psc.FSGroup
		}
	}
	if sc := c.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			uid = *sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			gid = *sc.RunAsGroup
		}
		Expect(sc.AllowPrivilegeEscalation).To(HaveValue(BeFalse()))
	}
	Expect(uid).To(BeNumerically(">", 0), "the container runs as a non-root user")
	if gid < 0 {
		gid = uid
	}
	return uid, gid, fsGroup
}

// clusterCA returns the CA certificate of the admin kubeconfig's cluster.
func clusterCA() []byte {
	GinkgoHelper()
	cfg, err := clientcmd.LoadFromFile(lc.Kubeconfig())
	Expect(err).NotTo(HaveOccurred())
	kctx := cfg.Contexts[cfg.CurrentContext]
	Expect(kctx).NotTo(BeNil())
	cl := cfg.Clusters[kctx.Cluster]
	Expect(cl).NotTo(BeNil())
	if len(cl.CertificateAuthorityData) > 0 {
		return cl.CertificateAuthorityData
	}
	ca := cl.CertificateAuthority
	if !filepath.IsAbs(ca) {
		ca = filepath.Join(filepath.Dir(lc.Kubeconfig()), ca)
	}
	b, err := os.ReadFile(ca)
	Expect(err).NotTo(HaveOccurred())
	return b
}

var k8sVarRef = regexp.MustCompile(`\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)`)

// expandK8s expands $(VAR) as Kubernetes does in a container's args and
// env: defined variables are replaced, undefined ones left as written, and
// $$ is a literal $.
func expandK8s(s string, vars map[string]string) string {
	return k8sVarRef.ReplaceAllStringFunc(s, func(m string) string {
		if m == "$$" {
			return "$"
		}
		if v, ok := vars[m[2:len(m)-1]]; ok {
			return v
		}
		return m
	})
}

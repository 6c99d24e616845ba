package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tether-k8s/tether/fixtures/cluster"
	"github.com/tether-k8s/tether/fixtures/stack"
)

// impersonatedInAuditLog returns nil if the API server's audit log has the
// event with tether.io/request-id reqID, made by the agent's service
// account impersonating user, for a URI under path.
func impersonatedInAuditLog(reqID, user, path string) error {
	type event struct {
		User             struct{ Username string } `json:"user"`
		ImpersonatedUser *struct {
			Username string              `json:"username"`
			Extra    map[string][]string `json:"extra"`
		} `json:"impersonatedUser"`
		RequestURI string `json:"requestURI"`
	}
	for _, line := range strings.Split(readFile(lc.AuditLog()), "\n") {
		var e event
		if json.Unmarshal([]byte(line), &e) != nil || e.ImpersonatedUser == nil {
			continue
		}
		if slices.Contains(e.ImpersonatedUser.Extra["tether.io/request-id"], reqID) {
			if e.User.Username != "system:serviceaccount:tether-system:tether-agent" || e.ImpersonatedUser.Username != user ||
				!strings.HasPrefix(e.RequestURI, path) {
				return fmt.Errorf("audit event for %s: %+v", reqID, e)
			}
			return nil
		}
	}
	return fmt.Errorf("no API server audit event with tether.io/request-id %s", reqID)
}

// readFile returns a file's content, or "" if it cannot be read.
func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// viaTether runs the real kubectl on the laptop, through tether-proxy, the
// relay and the agent, and returns its combined output and error.
func viaTether(ctx context.Context, stdin io.Reader, args ...string) (string, error) {
	cmd := ts.Kubectl(ctx, args...)
	cmd.Stdin = stdin
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// mustViaTether is viaTether failing the spec on error.
func mustViaTether(ctx context.Context, stdin io.Reader, args ...string) string {
	GinkgoHelper()
	out, err := viaTether(ctx, stdin, args...)
	Expect(err).NotTo(HaveOccurred(), "kubectl %s (through tether):\n%s", strings.Join(args, " "), out)
	return out
}

// eventuallyNotConnected waits until kubectl (run) fails saying the
// cluster is not connected: the relay's reason, not only "the server is
// currently unable to handle the request".
func eventuallyNotConnected(run func() (string, error)) {
	GinkgoHelper()
	Eventually(func() string {
		out, err := run()
		if err == nil {
			return "kubectl succeeded with no agent: " + out
		}
		return out
	}).WithTimeout(30 * time.Second).Should(ContainSubstring("cluster " + lc.Name() + " is not connected"))
}

// namespaceFor creates a namespace (as admin, inside the cluster) where the
// given OpenID group (without the oidc: prefix) is granted role.
func namespaceFor(ctx context.Context, group, role string) string {
	GinkgoHelper()
	ns := randomName("tether")
	kubectl(ctx, nil, "create", "namespace", ns)
	DeferCleanup(func(ctx SpecContext) { kubectl(ctx, nil, "delete", "namespace", ns, "--wait=false") })
	kubectl(ctx, nil, "create", "rolebinding", "caller", "-n", ns, "--clusterrole="+role, "--group=oidc:"+group)
	return ns
}

// asUser makes the proxy present a token for subject in groups until the
// spec ends (tether-proxy re-reads its token file for every request).
func asUser(subject string, groups ...string) {
	GinkgoHelper()
	tok, err := ts.UserToken(subject, groups)
	Expect(err).NotTo(HaveOccurred())
	old, err := os.ReadFile(ts.UserTokenFile())
	Expect(err).NotTo(HaveOccurred())
	Expect(os.WriteFile(ts.UserTokenFile(), []byte(tok), 0o600)).To(Succeed())
	DeferCleanup(func() { Expect(os.WriteFile(ts.UserTokenFile(), old, 0o600)).To(Succeed()) })
}

var _ = Describe("kubectl through tether, from the laptop", Ordered, func() {
	var ns, pod string

	BeforeAll(func(ctx SpecContext) {
		ns = namespaceFor(ctx, stack.DemoGroup, "admin")
		mustViaTether(ctx, strings.NewReader(deploymentYAML), "apply", "-n", ns, "-f", "-")
		mustViaTether(ctx, nil, "rollout", "status", "-n", ns, "deployment/web", "--timeout=90s")
		pod = strings.TrimPrefix(strings.TrimSpace(mustViaTether(ctx, nil, "get", "pods", "-n", ns, "-l", "app=web", "-o", "name")), "pod/")
		pod = strings.Fields(pod)[0]
		pod = strings.TrimPrefix(pod, "pod/")
	})

	It("cannot reach the API server directly, so everything below went through tether", func(ctx SpecContext) {
		cmd := lc.KubectlOn(ctx, lc.Host(cluster.HostLaptop), lc.Kubeconfig(), "--server", "https://"+lc.APIServerAddr().String(), "--request-timeout=3s", "get", "--raw", "/version")
		out, err := cmd.CombinedOutput()
		Expect(err).To(HaveOccurred(), "direct access from the laptop: %s", out)
	})

	It("gets, lists, applies and deletes, as the caller", func(ctx SpecContext) {
		Expect(mustViaTether(ctx, nil, "get", "nodes")).To(ContainSubstring("kwok-node-0"))
		Expect(mustViaTether(ctx, nil, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")).To(Equal("oidc:demo-user"))
		mustViaTether(ctx, nil, "create", "configmap", "c1", "-n", ns, "--from-literal=k=v")
		Expect(mustViaTether(ctx, nil, "get", "configmap", "c1", "-n", ns, "-o", "jsonpath={.data.k}")).To(Equal("v"))
		Expect(mustViaTether(ctx, nil, "get", "configmaps", "-n", ns, "-o", "name")).To(ContainSubstring("configmap/c1"))
		mustViaTether(ctx, nil, "delete", "configmap", "c1", "-n", ns)
		_, err := viaTether(ctx, nil, "get", "configmap", "c1", "-n", ns)
		Expect(err).To(HaveOccurred())
	})

	It("refuses kubectl --as", func(ctx SpecContext) {
		out, err := viaTether(ctx, nil, "--as=system:admin", "get", "secrets", "-A")
		Expect(err).To(HaveOccurred())
		Expect(out).To(ContainSubstring("--as and --as-group are not supported"))
	})

	It("follows logs (logs -f)", func(ctx SpecContext) {
		before, after := randomName("before"), randomName("after")
		Expect(lc.AppendPodLog(before)).To(Succeed())
		r := streamFrom(ts.Kubectl(ctx, "logs", "-f", "-n", ns, pod))
		Eventually(r.text).WithTimeout(20 * time.Second).Should(ContainSubstring(before))
		Expect(lc.AppendPodLog(after)).To(Succeed())
		Eventually(r.text).WithTimeout(20 * time.Second).Should(ContainSubstring(after))
	})

	It("execs with stdin", func(ctx SpecContext) {
		payload := randomName("payload")
		out := mustViaTether(ctx, strings.NewReader(payload+"\nline two\nline three\n"), "exec", "-i", "-n", ns, pod, "--", "head", "-n", "2")
		Expect(out).To(Equal(payload + "\nline two\n"))
	})

	It("execs with stdin and a TTY", func(ctx SpecContext) {
		done := ttyShell(ts.Kubectl(ctx, "exec", "-it", "-n", ns, pod, "--", "sh"), "exit")
		Eventually(done).WithTimeout(20 * time.Second).Should(BeClosed())
	})

	It("port-forwards 10 MB intact", func(ctx SpecContext) {
		portForward10MB(ctx, lc, lc.Host(cluster.HostLaptop), ts.Kubeconfig(), ns, pod, "--context", ts.Context())
	})

	It("copies a file out of a pod (kubectl cp)", func(ctx SpecContext) {
		content := bytes.Repeat([]byte(randomName("cp")+"\n"), 20000)
		src := filepath.Join(lc.ExecDir(), randomName("src"))
		Expect(os.WriteFile(src, content, 0o644)).To(Succeed())
		DeferCleanup(func() { _ = os.Remove(src) })
		dst := filepath.Join(GinkgoT().TempDir(), "copied")
		mustViaTether(ctx, nil, "cp", ns+"/"+pod+":"+src, dst)
		got, err := os.ReadFile(dst)
		Expect(err).NotTo(HaveOccurred())
		Expect(sha256.Sum256(got)).To(Equal(sha256.Sum256(content)))
	})

	It("lets RBAC decide: a user bound to one namespace is allowed there and forbidden elsewhere", func(ctx SpecContext) {
		mine := namespaceFor(ctx, "team-a", "edit")
		other := namespaceFor(ctx, "team-b", "edit")
		asUser("alice", stack.GrantedGroup)
		mustViaTether(ctx, nil, "create", "configmap", "mine", "-n", mine, "--from-literal=k=v")
		out, err := viaTether(ctx, nil, "get", "configmaps", "-n", other)
		Expect(err).To(HaveOccurred())
		Expect(out).To(ContainSubstring(`User "oidc:alice" cannot list resource "configmaps"`))
	})

	It("delivers a watch event after two idle minutes", func(ctx SpecContext) {
		r := streamFrom(ts.Kubectl(ctx, "get", "configmaps", "-n", ns, "-w", "-o", "name"))
		Eventually(r.text).WithTimeout(20 * time.Second).Should(ContainSubstring("kube-root-ca.crt"))
		time.Sleep(2*time.Minute + 5*time.Second)
		name := randomName("late")
		kubectl(ctx, nil, "create", "configmap", name, "-n", ns)
		Eventually(r.text).WithTimeout(20 * time.Second).Should(ContainSubstring("configmap/" + name))
	}, SpecTimeout(4*time.Minute))

	It("lists the clusters the caller may reach (tether-proxy clusters) and says who it is (tether-proxy whoami)", func(ctx SpecContext) {
		lap := lc.Host(cluster.HostLaptop)
		run := func(args ...string) string {
			GinkgoHelper()
			cmd := lap.Command(ctx, filepath.Join(ts.BinDir(), "tether-proxy"),
				append(args, "--relay", ts.RelayURL(lap), "--relay-ca", ts.RelayCAFile(), "--token-file", ts.UserTokenFile())...)
			cmd.Env = append(os.Environ(), "TETHER_TOKEN=")
			out, err := cmd.CombinedOutput()
			Expect(err).NotTo(HaveOccurred(), "tether-proxy %s:\n%s", strings.Join(args, " "), out)
			return string(out)
		}
		out := run("clusters")
		GinkgoWriter.Print(out)
		Expect(out).To(MatchRegexp(`(?m)^` + regexp.QuoteMeta(lc.Name()) + `\s+yes\s+2\s+tether-agent \S+`))
		var listed []struct {
			Cluster  string `json:"cluster"`
			Sessions int    `json:"sessions"`
		}
		Expect(json.Unmarshal([]byte(run("clusters", "-o", "json")), &listed)).To(Succeed())
		Expect(listed).To(ContainElement(HaveField("Cluster", lc.Name())))
		Expect(run("whoami")).To(And(ContainSubstring("user:      oidc:demo-user"), ContainSubstring("groups:    oidc:"+stack.DemoGroup)))
		// A user no cluster grants sees none, and is told who grants access.
		asUser("nobody-"+randomName("u"), "no-such-group")
		Expect(run("clusters")).To(ContainSubstring("no cluster admits oidc:nobody-"))
	})

	It("exposes Prometheus metrics on the relay and the agent", func(ctx SpecContext) {
		relayMetrics, err := ts.Metrics(ctx, "relay")
		Expect(err).NotTo(HaveOccurred())
		Expect(relayMetrics).To(MatchRegexp(`tether_relay_tunnels_total\{result="opened"\} [1-9]`))
		Expect(relayMetrics).To(MatchRegexp(`tether_relay_agent_sessions 2`))
		Expect(relayMetrics).To(ContainSubstring(`tether_relay_cluster_agent_sessions{cluster="` + lc.Name() + `"} 2`))
		agentMetrics, err := ts.Metrics(ctx, "agent")
		Expect(err).NotTo(HaveOccurred())
		Expect(agentMetrics).To(MatchRegexp(`tether_agent_requests_total\{code="200",refused="false"\} [1-9]`))
		// The RBAC spec's Forbidden came from the API server, not the agent.
		Expect(agentMetrics).To(MatchRegexp(`tether_agent_requests_total\{code="403",refused="false"\} [1-9]`))
		Expect(agentMetrics).To(ContainSubstring("tether_agent_relay_sessions 2"))
		// Every binary says what it is, and has the runtime's collectors.
		for name, m := range map[string]string{"tether-relay": relayMetrics, "tether-agent": agentMetrics} {
			Expect(m).To(MatchRegexp(`tether_build_info\{binary="`+name+`",goversion="go[^"]+",version="[^"]+"\} 1`), name)
			Expect(m).To(MatchRegexp(`(?m)^go_goroutines [1-9]`), name)
			Expect(m).To(MatchRegexp(`(?m)^process_open_fds [1-9]`), name)
		}
	})

	It("keeps the agent's credential in its Secret, so a restarted agent needs no new join token", func(ctx SpecContext) {
		typ := kubectl(ctx, nil, "get", "secret", stack.CredentialSecret, "-n", "tether-system", "-o", "jsonpath={.type}")
		Expect(typ).To(Equal("kubernetes.io/tls"))
		Expect(ts.StopAgent()).To(Succeed())
		// While no agent is connected, kubectl says so: the relay's reason,
		// not only "the server is currently unable to handle the request".
		eventuallyNotConnected(func() (string, error) { return viaTether(ctx, nil, "get", "pods", "-n", ns) })
		Expect(ts.StartAgent(ctx)).To(Succeed(), "restart the agent (its join token is spent)")
		Eventually(func() error {
			_, err := viaTether(ctx, nil, "get", "pods", "-n", ns)
			return err
		}).WithTimeout(30 * time.Second).Should(Succeed())
		Expect(ts.Tail("agent", 40)).To(ContainSubstring("using the stored credential"))
	})

	It("carries the agent over WebSocket when the cluster's egress passes only the relay's HTTPS port", func(ctx SpecContext) {
		Expect(ts.StopAgent()).To(Succeed())
		lift, err := ts.BlockAgentEndpoint(ctx)
		Expect(err).NotTo(HaveOccurred())
		lifted := false
		DeferCleanup(func(ctx SpecContext) {
			if !lifted {
				_, _ = lift()
			}
			Expect(ts.StopAgent()).To(Succeed())
			Expect(ts.StartAgent(ctx)).To(Succeed(), "restart the agent over TCP")
		})
		Expect(ts.StartAgent(ctx, "--relay-transport", "websocket")).To(Succeed())
		Expect(mustViaTether(ctx, nil, "get", "pods", "-n", ns, "-o", "name")).To(ContainSubstring("pod/" + pod))
		Expect(mustViaTether(ctx, nil, "exec", "-n", ns, pod, "--", "echo", "over-websocket")).To(ContainSubstring("over-websocket"))
		dropped, err := lift()
		lifted = true
		Expect(err).NotTo(HaveOccurred())
		GinkgoWriter.Printf("egress to the agent endpoint dropped %d packets; the agent used the API port's WebSocket\n", dropped)
	})

	It("refuses, at the relay, a valid user the cluster does not grant; a grant lets them in at once", func(ctx SpecContext) {
		asUser("mallory", "contractors")
		out, err := viaTether(ctx, nil, "get", "pods", "-n", ns)
		Expect(err).To(HaveOccurred())
		Expect(out).To(ContainSubstring("oidc:mallory may not reach cluster " + lc.Name()))
		relayCmd := func(ctx context.Context, args ...string) {
			GinkgoHelper()
			b, err := ts.RelayCommand(ctx, args...).CombinedOutput()
			Expect(err).NotTo(HaveOccurred(), "tether-relay %s:\n%s", strings.Join(args, " "), b)
		}
		relayCmd(ctx, "cluster", "grant", lc.Name(), "--rule", `user.username == "oidc:mallory"`)
		DeferCleanup(func(ctx SpecContext) {
			relayCmd(ctx, "cluster", "revoke", lc.Name(), "--rule", `user.username == "oidc:mallory"`)
		})
		// Admitted by the relay; the cluster's RBAC grants mallory nothing.
		out, err = viaTether(ctx, nil, "get", "pods", "-n", ns)
		Expect(err).To(HaveOccurred())
		Expect(out).To(ContainSubstring(`User "oidc:mallory" cannot list resource "pods"`))
		Expect(out).NotTo(ContainSubstring("may not reach"))
	})

	It("links the relay's, the agent's and the API server's audit lines by one request ID, and logs no token", func(ctx SpecContext) {
		mustViaTether(ctx, nil, "get", "configmaps", "-n", ns, "-o", "name")
		path := "/api/v1/namespaces/" + ns + "/configmaps"
		var reqID string
		Eventually(func() string {
			m := regexp.MustCompile(`msg="impersonate: request" audit=true requestID=(\S+) user=oidc:demo-user .*path=`+regexp.QuoteMeta(path)+` `).
				FindAllStringSubmatch(readFile(ts.LogFile("agent")), -1)
			if len(m) == 0 {
				return ""
			}
			reqID = m[len(m)-1][1]
			return reqID
		}).WithTimeout(10*time.Second).ShouldNot(BeEmpty(), "the agent's audit line for %s", path)
		tunnelID, _, ok := strings.Cut(reqID, ".")
		Expect(ok).To(BeTrue(), "request ID %q is <tunnel>.<n>", reqID)
		Expect(readFile(ts.LogFile("relay"))).To(MatchRegexp(`msg="relay: tunnel opened" audit=true request=` + tunnelID + ` cluster=` + lc.Name() + ` user=oidc:demo-user`))

		// The API server's own audit log names the agent's service account,
		// impersonating the caller, with the same request ID as an extra.
		Eventually(func() error { return impersonatedInAuditLog(reqID, "oidc:demo-user", path) }).WithTimeout(10 * time.Second).Should(Succeed())

		tok, err := os.ReadFile(ts.UserTokenFile())
		Expect(err).NotTo(HaveOccurred())
		for _, name := range []string{"relay", "agent", "proxy"} {
			Expect(readFile(ts.LogFile(name))).NotTo(ContainSubstring(strings.TrimSpace(string(tok))), "the caller's token in the %s log", name)
		}
	})

	It("manages clusters on the running relay, through its admin socket", func(ctx SpecContext) {
		relayCmd := func(args ...string) string {
			GinkgoHelper()
			out, err := ts.RelayCommand(ctx, args...).CombinedOutput()
			Expect(err).NotTo(HaveOccurred(), "tether-relay %s:\n%s", strings.Join(args, " "), out)
			return string(out)
		}
		Expect(relayCmd("cluster", "list")).To(MatchRegexp(`(?m)^`+lc.Name()+`\s+\S+\s+[1-9]\s+3\s+2$`), "the cluster, its credential, 3 grants (oidc:tether-demo, oidc:team-a, op:team-a) and its 2 live sessions")
		Expect(relayCmd("cluster", "create", "extra")).To(MatchRegexp(`tether-join\.\S+`))
		Expect(relayCmd("cluster", "list")).To(MatchRegexp(`(?m)^extra\s+\S+\s+0\s+0\s+0$`))
		Expect(relayCmd("cluster", "delete", "extra")).To(ContainSubstring("0 live agent session(s) ended"))
		Expect(relayCmd("cluster", "list")).NotTo(ContainSubstring("extra"))
	})

	It("drains on SIGTERM: agents are told to move, and the tunnels in flight get the drain's grace", func(ctx SpecContext) {
		r := streamFrom(ts.Kubectl(ctx, "get", "configmaps", "-n", ns, "-w", "-o", "name"))
		Eventually(r.text).WithTimeout(20 * time.Second).Should(ContainSubstring("kube-root-ca.crt"))

		took, err := ts.DrainRelay()
		Expect(err).NotTo(HaveOccurred())
		GinkgoWriter.Printf("the relay drained and exited in %s (--drain-timeout %s, a watch open)\n", took.Round(time.Millisecond), stack.RelayDrainTimeout)
		// The open watch holds the drain to its timeout, no longer.
		Expect(took).To(BeNumerically(">=", stack.RelayDrainTimeout-500*time.Millisecond))
		Expect(took).To(BeNumerically("<", stack.RelayDrainTimeout+4*time.Second))
		Expect(ts.Tail("relay", 60)).To(ContainSubstring("told the agent to move (GoAway)"))
		Expect(ts.Tail("agent", 60)).To(ContainSubstring("the relay is draining this session (GoAway)"))
		Eventually(r.done).WithTimeout(10*time.Second).Should(BeClosed(), "kubectl's watch outlived the relay")

		Expect(ts.StartRelay(ctx)).To(Succeed())
		Eventually(func() error {
			_, err := viaTether(ctx, nil, "get", "configmaps", "-n", ns, "-o", "name")
			return err
		}).WithTimeout(30 * time.Second).WithPolling(500 * time.Millisecond).Should(Succeed())
	})

	It("ends a watch promptly when the relay dies, and works again once it is back", func(ctx SpecContext) {
		r := streamFrom(ts.Kubectl(ctx, "get", "configmaps", "-n", ns, "-w", "-o", "name"))
		Eventually(r.text).WithTimeout(20 * time.Second).Should(ContainSubstring("kube-root-ca.crt"))

		killed := time.Now()
		Expect(ts.StopRelay()).To(Succeed())
		Eventually(r.done).WithTimeout(30*time.Second).Should(BeClosed(), "kubectl's watch still hangs after the relay died")
		GinkgoWriter.Printf("watch ended %s after the relay died\n", time.Since(killed).Round(time.Millisecond))

		Expect(ts.StartRelay(ctx)).To(Succeed())
		back := time.Now()
		Eventually(func() error {
			_, err := viaTether(ctx, nil, "get", "configmaps", "-n", ns, "-o", "name")
			return err
		}).WithTimeout(30 * time.Second).WithPolling(500 * time.Millisecond).Should(Succeed())
		GinkgoWriter.Printf("kubectl worked again %s after the relay came back\n", time.Since(back).Round(time.Millisecond))
	})
})

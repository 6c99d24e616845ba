package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/creack/pty"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/e2e-framework/klient/k8s/resources"

	"github.com/tether-k8s/tether/fixtures/cluster"
	"github.com/tether-k8s/tether/fixtures/netns"
)

// kubectl runs the real kubectl inside the cluster host with the admin
// kubeconfig and returns its combined output, failing the spec on error.
func kubectl(ctx context.Context, stdin io.Reader, args ...string) string {
	GinkgoHelper()
	cmd := lc.Kubectl(ctx, args...)
	cmd.Stdin = stdin
	out, err := cmd.CombinedOutput()
	Expect(err).NotTo(HaveOccurred(), "kubectl %s:\n%s", strings.Join(args, " "), out)
	return string(out)
}

func randomName(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// lineReader collects the lines a command prints, for Eventually.
type lineReader struct {
	mu    sync.Mutex
	lines []string
	// done is closed when the command's output ends (it exited), when the
	// reader comes from streamFrom.
	done chan struct{}
}

func (r *lineReader) read(rd io.Reader) {
	sc := bufio.NewScanner(rd)
	for sc.Scan() {
		r.mu.Lock()
		r.lines = append(r.lines, sc.Text())
		r.mu.Unlock()
	}
}

func (r *lineReader) text() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.lines, "\n")
}

// streamFrom starts cmd and returns what it prints, line by line. The command
// is killed and waited for when the spec ends.
func streamFrom(cmd *exec.Cmd) *lineReader {
	GinkgoHelper()
	out, err := cmd.StdoutPipe()
	Expect(err).NotTo(HaveOccurred())
	cmd.Stderr = cmd.Stdout
	Expect(cmd.Start()).To(Succeed())
	r := &lineReader{done: make(chan struct{})}
	go func() { defer close(r.done); r.read(out) }()
	DeferCleanup(func() {
		_ = cmd.Process.Kill()
		<-r.done
		_ = cmd.Wait()
	})
	return r
}

// ttyShell runs cmd (kubectl exec -it ... -- sh) under a pseudo-terminal,
// checks that the shell has a TTY and runs what is typed, then types
// exitLine. It returns a channel closed when kubectl's output ends.
func ttyShell(cmd *exec.Cmd, exitLine string) <-chan struct{} {
	GinkgoHelper()
	term, err := pty.Start(cmd)
	Expect(err).NotTo(HaveOccurred())
	r := &lineReader{done: make(chan struct{})}
	go func() { defer close(r.done); r.read(term) }()
	DeferCleanup(func() { _ = cmd.Process.Kill(); _ = term.Close(); <-r.done; _ = cmd.Wait() })
	marker := randomName("tty")
	_, err = io.WriteString(term, "tty; echo "+marker+"-$((6*7))\n")
	Expect(err).NotTo(HaveOccurred())
	// The shell's tty(1) names a pseudo-terminal, and $((6*7)) was
	// evaluated: a shell with a TTY ran what was typed.
	Eventually(r.text).WithTimeout(20 * time.Second).Should(And(MatchRegexp(`/dev/pts/\d+`), ContainSubstring(marker+"-42")))
	_, err = io.WriteString(term, exitLine+"\n")
	Expect(err).NotTo(HaveOccurred())
	return r.done
}

// portForward10MB serves 10 MB of random bytes behind every pod port, runs
// kubectl port-forward to pod of cluster c in host h with kubeconfig (and
// extra flags), fetches the bytes through it and checks their SHA-256. It
// returns the port-forward, still running, and how long the 10 MB took.
func portForward10MB(ctx context.Context, c *cluster.Cluster, h *netns.Host, kubeconfig, ns, pod string, extra ...string) (*cluster.PortForward, time.Duration) {
	GinkgoHelper()
	const size = 10 << 20
	blob := make([]byte, size)
	var seed [32]byte
	_, _ = rand.Read(seed[:])
	_, _ = mrand.NewChaCha8(seed).Read(blob)
	want := sha256.Sum256(blob)
	stop, err := c.ServePodBackend(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(size))
		_, _ = w.Write(blob)
	}))
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(stop)
	pf, err := c.StartPortForward(ctx, h, kubeconfig, ns, "pod/"+pod, 8080, extra...)
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(pf.Stop)
	start := time.Now()
	got, err := pf.Get(ctx, h, "/blob")
	Expect(err).NotTo(HaveOccurred())
	took := time.Since(start)
	Expect(got).To(HaveLen(size))
	Expect(sha256.Sum256(got)).To(Equal(want), "sha256 of what came through the port-forward")
	GinkgoWriter.Printf("port-forward from %s moved 10 MB in %s (%.1f MB/s)\n", h.Name, took.Round(time.Millisecond), 10/math.Max(took.Seconds(), 1e-9))
	return pf, took
}

const deploymentYAML = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: registry.example/web:1.0
        ports:
        - containerPort: 8080
`

var _ = Describe("the local cluster fixture", func() {
	It("runs the pinned Kubernetes version, with Ready kwok nodes", func(ctx SpecContext) {
		out := kubectl(ctx, nil, "version", "-o", "json")
		Expect(out).To(MatchRegexp(`"serverVersion": \{[^}]*"gitVersion": "v1\.35\.\d+"`), "server version")
		Expect(out).To(MatchRegexp(`"clientVersion": \{[^}]*"gitVersion": "v1\.35\.\d+"`), "kubectl version")

		nodes := kubectl(ctx, nil, "get", "nodes", "-o", `jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
		Expect(nodes).To(ContainSubstring("kwok-node-0=True"))
	})

	Context("with a Deployment", Ordered, func() {
		var ns, pod string

		BeforeAll(func(ctx SpecContext) {
			ns = randomName("fixture")
			kubectl(ctx, nil, "create", "namespace", ns)
			DeferCleanup(func(ctx SpecContext) { kubectl(ctx, nil, "delete", "namespace", ns, "--wait=false") })

			kubectl(ctx, strings.NewReader(deploymentYAML), "apply", "-n", ns, "-f", "-")
			kubectl(ctx, nil, "rollout", "status", "-n", ns, "deployment/web", "--timeout=90s")

			var pods corev1.PodList
			Expect(client.Resources(ns).List(ctx, &pods, resources.WithLabelSelector("app=web"))).To(Succeed())
			Expect(pods.Items).To(HaveLen(2))
			for _, p := range pods.Items {
				Expect(p.Status.Phase).To(Equal(corev1.PodRunning), "pod %s", p.Name)
				Expect(p.Spec.NodeName).To(HavePrefix("kwok-node-"))
			}
			pod = pods.Items[0].Name
		})

		It("execs with stdin", func(ctx SpecContext) {
			// head exits after two lines by itself: kwok v0.8.0 never closes
			// a process's stdin when the client's ends (see docs/testing.md).
			payload := randomName("stdin-payload")
			out := kubectl(ctx, strings.NewReader(payload+"\nsecond line\nthird line\n"), "exec", "-i", "-n", ns, pod, "--", "head", "-n", "2")
			Expect(out).To(Equal(payload + "\nsecond line\n"))
		})

		It("execs with stdin and a TTY", func(ctx SpecContext) {
			cmd := lc.Kubectl(ctx, "exec", "-it", "-n", ns, pod, "--", "sh")
			done := ttyShell(cmd, "exit 7")
			Eventually(done).WithTimeout(20 * time.Second).Should(BeClosed())
			// The shell's failure reaches kubectl. kwok v0.8.0 reports every
			// failure as exit code 1, not the command's own (docs/testing.md).
			var ee *exec.ExitError
			Expect(errors.As(cmd.Wait(), &ee)).To(BeTrue(), "kubectl exec should fail when the shell exits 7")
			Expect(ee.ExitCode()).NotTo(BeZero())
		})

		It("follows logs as they are written (logs -f)", func(ctx SpecContext) {
			before, after := randomName("before"), randomName("after")
			Expect(lc.AppendPodLog(before)).To(Succeed())
			r := streamFrom(lc.Kubectl(ctx, "logs", "-f", "-n", ns, pod))
			Eventually(r.text).WithTimeout(20 * time.Second).Should(ContainSubstring(before))
			Consistently(r.text).WithTimeout(time.Second).ShouldNot(ContainSubstring(after))
			Expect(lc.AppendPodLog(after)).To(Succeed())
			Eventually(r.text).WithTimeout(20 * time.Second).Should(ContainSubstring(after))
		})

		It("attaches to a running container", func(ctx SpecContext) {
			line := randomName("attached")
			r := streamFrom(lc.Kubectl(ctx, "attach", "-n", ns, pod))
			// Give attach time to connect, then write: the line must arrive
			// over the attached stream.
			Eventually(func() error {
				if err := lc.AppendPodLog(line); err != nil {
					return err
				}
				if !strings.Contains(r.text(), line) {
					return fmt.Errorf("not yet seen; kubectl attach printed %q", r.text())
				}
				return nil
			}).WithTimeout(30 * time.Second).WithPolling(2 * time.Second).Should(Succeed())
		})

		It("port-forwards 10 MB intact", func(ctx SpecContext) {
			portForward10MB(ctx, lc, lc.Host(cluster.HostCluster), lc.Kubeconfig(), ns, pod)
		})
	})

	Describe("the firewall in front of the cluster", func() {
		var apiAddr string
		BeforeEach(func() { apiAddr = lc.APIServerAddr().String() })

		// dropped reads the firewall's drop counter in the cluster host.
		dropped := func(ctx context.Context) int {
			out, err := lc.Host(cluster.HostCluster).Command(ctx, "nft", "list", "table", "inet", netns.FirewallTable).CombinedOutput()
			Expect(err).NotTo(HaveOccurred(), "%s", out)
			m := regexp.MustCompile(`counter packets (\d+) bytes \d+ drop`).FindSubmatch(out)
			Expect(m).NotTo(BeNil(), "drop counter in:\n%s", out)
			n, _ := strconv.Atoi(string(m[1]))
			return n
		}

		It("lets the cluster host itself connect to the API server's public address", func(ctx SpecContext) {
			Expect(cluster.ProbeTCP(ctx, lc.Host(cluster.HostCluster), apiAddr, 5*time.Second)).To(Succeed())
			out := kubectl(ctx, nil, "--server", "https://"+apiAddr, "--request-timeout=10s", "get", "--raw", "/version")
			Expect(out).To(ContainSubstring(`"gitVersion"`))
		})

		It("drops a direct connection from the laptop, which has a route to it", func(ctx SpecContext) {
			laptop := lc.Host(cluster.HostLaptop)
			// The laptop reaches the router (the internet) fine...
			Expect(laptop.Command(ctx, "ip", "route", "get", lc.Host(cluster.HostCluster).Addr.String()).Run()).To(Succeed())

			// ...but its SYNs to the API server are dropped: a timeout, and
			// the firewall's drop counter moves.
			before := dropped(ctx)
			err := cluster.ProbeTCP(ctx, laptop, apiAddr, 3*time.Second)
			var ne net.Error
			Expect(errors.As(err, &ne) && ne.Timeout()).To(BeTrue(), "dial %s from the laptop: want a timeout, got %v", apiAddr, err)
			Expect(dropped(ctx)).To(BeNumerically(">", before))

			// The real kubectl, given the admin credentials, fails the same way.
			cmd := lc.KubectlOn(ctx, laptop, lc.Kubeconfig(), "--server", "https://"+apiAddr, "--request-timeout=5s", "get", "--raw", "/version")
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			Expect(cmd.Run()).NotTo(Succeed(), "kubectl from the laptop must not reach the API server")
			Expect(out.String()).To(Or(ContainSubstring("i/o timeout"), ContainSubstring("deadline exceeded"), ContainSubstring("Timeout exceeded")), "kubectl's error: %s", out.String())
		})
	})
})

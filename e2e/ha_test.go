package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tether-k8s/tether/core/relayapi"
	"github.com/tether-k8s/tether/fixtures/cluster"
	"github.com/tether-k8s/tether/fixtures/stack"
)

// haReplicas is how many relay replicas the HA specs run.
const haReplicas = 3

// The HA specs' own cluster and stack: three relay replicas on a 3-member
// etcd (TLS), behind HAProxy, each piece in its own network namespace.
var (
	hc *cluster.Cluster
	hs *stack.Stack
)

// haKubectl runs the real kubectl on the laptop through the HA stack's
// tether-proxy, the load balancer, the replicas and the agent.
func haKubectl(ctx context.Context, stdin io.Reader, args ...string) (string, error) {
	cmd := hs.Kubectl(ctx, args...)
	cmd.Stdin = stdin
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func mustHAKubectl(ctx context.Context, stdin io.Reader, args ...string) string {
	GinkgoHelper()
	out, err := haKubectl(ctx, stdin, args...)
	Expect(err).NotTo(HaveOccurred(), "kubectl %s (through the HA relay):\n%s", strings.Join(args, " "), out)
	return out
}

// haAdmin runs kubectl as admin inside the HA cluster's host.
func haAdmin(ctx context.Context, stdin io.Reader, args ...string) string {
	GinkgoHelper()
	out, err := hc.KubectlInput(ctx, stdin, args...)
	Expect(err).NotTo(HaveOccurred(), "kubectl %s (admin, in the HA cluster):\n%s", strings.Join(args, " "), out)
	return out
}

// haRelay runs a tether-relay admin command on the etcd store through
// replica i's host, and returns its combined output and error.
func haRelay(ctx context.Context, i int, args ...string) (string, error) {
	out, err := hs.RelayReplicaCommand(ctx, i, args...).CombinedOutput()
	return string(out), err
}

func mustHARelay(ctx context.Context, i int, args ...string) string {
	GinkgoHelper()
	out, err := haRelay(ctx, i, args...)
	Expect(err).NotTo(HaveOccurred(), "tether-relay %s (via replica %d):\n%s", strings.Join(args, " "), i, out)
	return out
}

// replicaMetric returns metric name (summed over the series with labels)
// on replica i, or -1 when the replica does not answer.
func replicaMetric(ctx context.Context, i int, name string, labels map[string]string) float64 {
	m, err := hs.RelayReplicaMetrics(ctx, i)
	if err != nil {
		return -1
	}
	v, _ := stack.MetricValue(m, name, labels)
	return v
}

// agentSessions returns, per replica, how many of the HA cluster's agent
// sessions it holds (-1: the replica does not answer).
func agentSessions(ctx context.Context) []int {
	out := make([]int, haReplicas)
	for i := range haReplicas {
		out[i] = int(replicaMetric(ctx, i, "tether_relay_cluster_agent_sessions", map[string]string{"cluster": hc.Name()}))
	}
	return out
}

// sessionsTotal sums agentSessions over the replicas that answer.
func sessionsTotal(s []int) int {
	n := 0
	for _, v := range s {
		if v > 0 {
			n += v
		}
	}
	return n
}

// onTwoReplicas reports whether the agent holds two sessions, on two
// replicas.
func onTwoReplicas(s []int) bool {
	holding := 0
	for _, v := range s {
		if v == 1 {
			holding++
		}
		if v > 1 {
			return false
		}
	}
	return holding == 2
}

// waitTwoReplicas waits until the agent holds its sessions on two
// replicas, and returns how long that took.
func waitTwoReplicas(ctx context.Context, within time.Duration) time.Duration {
	GinkgoHelper()
	start := time.Now()
	Eventually(func() []int { return agentSessions(ctx) }).WithTimeout(within).WithPolling(100 * time.Millisecond).Should(Satisfy(onTwoReplicas))
	return time.Since(start)
}

// opened returns each replica's tunnels_total{result="opened"}: the
// callers' tunnels it opened as the entry replica.
func opened(ctx context.Context) []float64 {
	out := make([]float64, haReplicas)
	for i := range haReplicas {
		out[i] = replicaMetric(ctx, i, "tether_relay_tunnels_total", map[string]string{"result": "opened"})
	}
	return out
}

// entryReplica runs one kubectl get and returns the replica whose opened
// tunnels grew: where the proxy's connection landed (-1: none, or more
// than one).
func entryReplica(ctx context.Context, ns string) int {
	GinkgoHelper()
	before := opened(ctx)
	mustHAKubectl(ctx, nil, "get", "configmaps", "-n", ns, "-o", "name")
	// tether-proxy may open the tunnel that replaces the one kubectl used
	// a moment later: look for up to 3 s.
	for deadline := time.Now().Add(3 * time.Second); ; {
		after := opened(ctx)
		entry, grew := -1, 0
		for i := range haReplicas {
			if after[i] > before[i] {
				entry, grew = i, grew+1
			}
		}
		if grew == 1 {
			return entry
		}
		if grew > 1 || time.Now().After(deadline) {
			return -1
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// shortLoad runs `kubectl get` through the HA relay in a loop until stop
// is called, and counts the requests, the failures and the longest time
// between two successes.
type shortLoad struct {
	ns       string
	mu       sync.Mutex
	total    int
	failed   int
	failures []string
	lastOK   time.Time
	longest  time.Duration
	cancel   context.CancelFunc
	done     chan struct{}
	interval time.Duration
}

func startShortLoad(ctx context.Context, ns string) *shortLoad {
	ctx, cancel := context.WithCancel(ctx)
	l := &shortLoad{ns: ns, cancel: cancel, done: make(chan struct{}), lastOK: time.Now(), interval: 100 * time.Millisecond}
	go func() {
		defer close(l.done)
		for ctx.Err() == nil {
			out, err := haKubectl(ctx, nil, "get", "configmap", "probe", "-n", ns, "-o", "name", "--request-timeout=20s")
			if ctx.Err() != nil {
				return
			}
			now := time.Now()
			l.mu.Lock()
			l.total++
			if err != nil {
				l.failed++
				l.failures = append(l.failures, now.Format("15:04:05.000")+" "+strings.TrimSpace(out))
			} else {
				if gap := now.Sub(l.lastOK); gap > l.longest {
					l.longest = gap
				}
				l.lastOK = now
			}
			l.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(l.interval):
			}
		}
	}()
	DeferCleanup(l.stop)
	return l
}

// stop ends the loop, waits for it, and returns its counts.
func (l *shortLoad) stop() (total, failed int, longest time.Duration, failures []string) {
	l.cancel()
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total, l.failed, l.longest, append([]string(nil), l.failures...)
}

func (l *shortLoad) counts() (total, failed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total, l.failed
}

// report prints and records a measured number.
func report(name string, value any) {
	GinkgoWriter.Printf("MEASURED %s: %v\n", name, value)
	AddReportEntry(name, fmt.Sprint(value))
}

// watchEvent is one line of a raw watch.
type watchEvent struct {
	Type   string `json:"type"`
	Object struct {
		Metadata struct {
			Name            string `json:"name"`
			ResourceVersion string `json:"resourceVersion"`
		} `json:"metadata"`
	} `json:"object"`
}

// configMapWatcher keeps a watch of a namespace's ConfigMaps open through
// the HA relay, as client-go's reflector does: first `kubectl get -w`,
// then, each time the watch ends, a new one from the last resourceVersion
// it saw. It records every name seen and how each watch ended.
type configMapWatcher struct {
	ns      string
	mu      sync.Mutex
	seen    map[string]bool
	rv      string
	ends    []string
	cancel  context.CancelFunc
	done    chan struct{}
	running *exec.Cmd
}

func startWatcher(ctx context.Context, ns, rv string) *configMapWatcher {
	ctx, cancel := context.WithCancel(ctx)
	w := &configMapWatcher{ns: ns, seen: map[string]bool{}, rv: rv, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		first := true
		for ctx.Err() == nil {
			var cmd *exec.Cmd
			if first {
				// kubectl get -w prints "NAME RV" per event.
				cmd = hs.Kubectl(ctx, "get", "configmaps", "-n", ns, "-w", "--watch-only", "-o",
					`jsonpath={.metadata.name} {.metadata.resourceVersion}{"\n"}`)
			} else {
				w.mu.Lock()
				from := w.rv
				w.mu.Unlock()
				cmd = hs.Kubectl(ctx, "get", "--raw", fmt.Sprintf("/api/v1/namespaces/%s/configmaps?watch=true&resourceVersion=%s", ns, from))
			}
			begin := time.Now()
			code, errText := w.run(cmd, first)
			if ctx.Err() != nil {
				return
			}
			w.mu.Lock()
			kind := "raw watch from resourceVersion " + w.rv
			if first {
				kind = "kubectl get -w"
			}
			w.ends = append(w.ends, fmt.Sprintf("%s ended after %s with exit code %d %s", kind, time.Since(begin).Round(time.Millisecond), code, errText))
			w.mu.Unlock()
			first = false
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	DeferCleanup(w.stop)
	return w
}

// run runs one watch command until it ends, recording what it prints.
func (w *configMapWatcher) run(cmd *exec.Cmd, lines bool) (int, string) {
	out, err := cmd.StdoutPipe()
	if err != nil {
		return -1, err.Error()
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return -1, err.Error()
	}
	w.mu.Lock()
	w.running = cmd
	w.mu.Unlock()
	if lines {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) == 2 {
				w.record(f[0], f[1])
			}
		}
	} else {
		dec := json.NewDecoder(out)
		for {
			var ev watchEvent
			if err := dec.Decode(&ev); err != nil {
				break
			}
			if ev.Type == "ERROR" {
				continue
			}
			w.record(ev.Object.Metadata.Name, ev.Object.Metadata.ResourceVersion)
		}
	}
	_, _ = io.Copy(io.Discard, out)
	err = cmd.Wait()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	}
	return code, strings.TrimSpace(stderr.String())
}

func (w *configMapWatcher) record(name, rv string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.seen[name] = true
	w.rv = rv
}

func (w *configMapWatcher) stop() {
	w.cancel()
	<-w.done
}

func (w *configMapWatcher) missing(names []string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, n := range names {
		if !w.seen[n] {
			out = append(out, n)
		}
	}
	return out
}

var _ = Describe("the relay, highly available: three replicas on etcd behind HAProxy", Label("ha"), Ordered, func() {
	var ns, pod string

	BeforeAll(func(ctx SpecContext) {
		begin := time.Now()
		var err error
		hc, err = cluster.Start(ctx, cluster.Config{Name: "tether-ha", RelayReplicas: haReplicas,
			Logger: slog.New(slog.NewTextHandler(GinkgoWriter, nil))})
		Expect(err).NotTo(HaveOccurred(), "start the HA specs' cluster")
		DeferCleanup(func() { Expect(hc.Stop()).To(Succeed(), "stop the HA cluster") })
		hs, err = stack.Start(ctx, stack.Config{Cluster: hc, Replicas: haReplicas, Logger: slog.New(slog.NewTextHandler(GinkgoWriter, nil))})
		Expect(err).NotTo(HaveOccurred(), "start the HA stack")
		DeferCleanup(func() {
			if CurrentSpecReport().Failed() || anyFailed {
				for _, name := range []string{"relay0", "relay1", "relay2", "haproxy", "agent", "proxy"} {
					GinkgoWriter.Printf("--- %s log (last lines) ---\n%s\n", name, hs.Tail(name, 40))
				}
			}
			Expect(hs.Stop()).To(Succeed(), "stop the HA stack")
		})
		report("HA cluster and stack start", time.Since(begin).Round(time.Millisecond))

		ns = randomName("ha")
		haAdmin(ctx, nil, "create", "namespace", ns)
		haAdmin(ctx, nil, "create", "rolebinding", "caller", "-n", ns, "--clusterrole=admin", "--group=oidc:"+stack.DemoGroup)
		haAdmin(ctx, nil, "create", "configmap", "probe", "-n", ns, "--from-literal=k=v")
		mustHAKubectl(ctx, strings.NewReader(deploymentYAML), "apply", "-n", ns, "-f", "-")
		mustHAKubectl(ctx, nil, "rollout", "status", "-n", ns, "deployment/web", "--timeout=90s")
		pod = strings.TrimPrefix(strings.Fields(mustHAKubectl(ctx, nil, "get", "pods", "-n", ns, "-l", "app=web", "-o", "name"))[0], "pod/")
		waitTwoReplicas(ctx, 30*time.Second)
	}, NodeTimeout(8*time.Minute))

	It("runs kubectl get, apply, watch, logs -f, exec, port-forward and cp with the caller on one replica and the agent's sessions on the others", func(ctx SpecContext) {
		// The agent's two sessions are on two replicas; the third holds
		// none. Put every caller's tunnel there: the balancer's API backend
		// sends new connections only to it (the agent backend is left as
		// is), and a restarted proxy has no pooled tunnel elsewhere.
		sessions := agentSessions(ctx)
		GinkgoWriter.Printf("agent sessions per replica: %v\n", sessions)
		free := -1
		for i, v := range sessions {
			if v == 0 {
				free = i
			}
		}
		Expect(free).NotTo(Equal(-1), "a replica without an agent session: %v", sessions)
		for i := range haReplicas {
			if i != free {
				Expect(hs.SetLBServerState(stack.LBBackendAPI, i, "maint")).To(Succeed())
				DeferCleanup(func() { Expect(hs.SetLBServerState(stack.LBBackendAPI, i, "ready")).To(Succeed()) })
			}
		}
		Expect(hs.StopProxy()).To(Succeed())
		Expect(hs.RestartProxy(ctx)).To(Succeed())
		Expect(entryReplica(ctx, ns)).To(Equal(free), "the caller's tunnels open on the replica without agent sessions (sessions %v)", sessions)
		report("caller's entry replica / agent sessions per replica", fmt.Sprintf("relay%d / %v", free, sessions))
		openedBefore := opened(ctx)

		before := make([]float64, haReplicas)
		for i := range haReplicas {
			before[i] = replicaMetric(ctx, i, "tether_relay_tunnel_bytes_total", nil)
		}
		forwardedBefore := forwardedLines()

		// get, apply
		Expect(mustHAKubectl(ctx, nil, "get", "nodes")).To(ContainSubstring("kwok-node-0"))
		cm := randomName("applied")
		mustHAKubectl(ctx, strings.NewReader(fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: %s}\ndata: {k: v1}\n", cm)), "apply", "-n", ns, "-f", "-")
		mustHAKubectl(ctx, strings.NewReader(fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: %s}\ndata: {k: v2}\n", cm)), "apply", "-n", ns, "-f", "-")
		Expect(mustHAKubectl(ctx, nil, "get", "configmap", cm, "-n", ns, "-o", "jsonpath={.data.k}")).To(Equal("v2"))
		// watch
		w := streamFrom(hs.Kubectl(ctx, "get", "configmaps", "-n", ns, "-w", "-o", "name"))
		Eventually(w.text).WithTimeout(20 * time.Second).Should(ContainSubstring("configmap/probe"))
		late := randomName("watched")
		haAdmin(ctx, nil, "create", "configmap", late, "-n", ns)
		Eventually(w.text).WithTimeout(20 * time.Second).Should(ContainSubstring("configmap/" + late))
		// logs -f
		first, second := randomName("before"), randomName("after")
		Expect(hc.AppendPodLog(first)).To(Succeed())
		logs := streamFrom(hs.Kubectl(ctx, "logs", "-f", "-n", ns, pod))
		Eventually(logs.text).WithTimeout(20 * time.Second).Should(ContainSubstring(first))
		Expect(hc.AppendPodLog(second)).To(Succeed())
		Eventually(logs.text).WithTimeout(20 * time.Second).Should(ContainSubstring(second))
		// exec with stdin
		payload := randomName("payload")
		Expect(mustHAKubectl(ctx, strings.NewReader(payload+"\nline two\nline three\n"), "exec", "-i", "-n", ns, pod, "--", "head", "-n", "2")).To(Equal(payload + "\nline two\n"))
		// port-forward, 10 MB with a checksum
		haPortForward10MB(ctx, ns, pod)
		// cp out of the pod
		content := bytes.Repeat([]byte(randomName("cp")+"\n"), 20000)
		src := filepath.Join(hc.ExecDir(), randomName("src"))
		Expect(os.WriteFile(src, content, 0o644)).To(Succeed())
		DeferCleanup(func() { _ = os.Remove(src) })
		dst := filepath.Join(GinkgoT().TempDir(), "copied")
		mustHAKubectl(ctx, nil, "cp", ns+"/"+pod+":"+src, dst)
		got, err := os.ReadFile(dst)
		Expect(err).NotTo(HaveOccurred())
		Expect(sha256.Sum256(got)).To(Equal(sha256.Sum256(content)), "sha256 of the file kubectl cp copied")

		// The entry replica holds no session: every one of these streams
		// went on to another replica, which spliced it.
		// A tunnel's bytes are counted when it closes: the port-forward's
		// closed when haPortForward10MB stopped it.
		Expect(agentSessions(ctx)[free]).To(Equal(0))
		after := make([]float64, haReplicas)
		owners := func() float64 {
			var n float64
			for i := range haReplicas {
				after[i] = replicaMetric(ctx, i, "tether_relay_tunnel_bytes_total", nil)
				if i != free {
					n += after[i] - before[i]
				}
			}
			return n
		}
		Eventually(owners).WithTimeout(20*time.Second).Should(BeNumerically(">", 10<<20), "the owners spliced the forwarded streams (10 MB port-forward included)")
		report("bytes spliced per replica during the flows", fmt.Sprintf("%v (entry relay%d)", diff(after, before), free))
		Expect(after[free]-before[free]).To(BeNumerically(">", 10<<20), "the entry replica spliced the caller's side")
		openedAfter := opened(ctx)
		for i := range haReplicas {
			if i != free {
				Expect(openedAfter[i]).To(Equal(openedBefore[i]), "no caller's tunnel opened at relay%d", i)
			}
		}
		report("callers' tunnels opened at the entry replica during the flows", openedAfter[free]-openedBefore[free])
		fwd := forwardedLines() - forwardedBefore
		report("forwarded tunnels logged by the owning replicas", fwd)
		// tether-proxy reuses idle tunnels across kubectl runs: count
		// tunnels, not flows. Every one opened at the entry went on to an owner.
		Expect(fwd).To(BeNumerically(">", 0))
		Expect(float64(fwd)).To(BeNumerically(">=", openedAfter[free]-openedBefore[free]), "a forwarded tunnel at an owner for each tunnel opened at the entry")
	}, SpecTimeout(5*time.Minute))

	It("rolls all three replicas one after another under load with no failed short request, and a watch that resumes without losing an event", func(ctx SpecContext) {
		rv := strings.TrimSpace(mustHAKubectl(ctx, nil, "get", "configmaps", "-n", ns, "-o", "jsonpath={.metadata.resourceVersion}"))
		w := startWatcher(ctx, ns, rv)
		time.Sleep(2 * time.Second) // the watch is up before the first ConfigMap
		load := startShortLoad(ctx, ns)

		// Numbered ConfigMaps, created in the cluster all through the roll.
		var created []string
		var cmu sync.Mutex
		cctx, stopCreating := context.WithCancel(ctx)
		creating := make(chan struct{})
		go func() {
			defer close(creating)
			for n := 0; cctx.Err() == nil; n++ {
				name := fmt.Sprintf("roll-%04d", n)
				if _, err := hc.KubectlOutput(cctx, "create", "configmap", name, "-n", ns); err == nil {
					cmu.Lock()
					created = append(created, name)
					cmu.Unlock()
				}
				select {
				case <-cctx.Done():
				case <-time.After(300 * time.Millisecond):
				}
			}
		}()
		DeferCleanup(func() { stopCreating(); <-creating })

		rollStart := time.Now()
		for i := range haReplicas {
			drain, err := hs.StopRelayReplica(i)
			Expect(err).NotTo(HaveOccurred(), "drain replica %d", i)
			report(fmt.Sprintf("relay%d drain (SIGTERM to exit)", i), drain.Round(time.Millisecond))
			start := time.Now()
			Expect(hs.StartRelayReplica(ctx, i)).To(Succeed())
			report(fmt.Sprintf("relay%d start to ready", i), time.Since(start).Round(time.Millisecond))
			report(fmt.Sprintf("after relay%d: agent back on two replicas in", i), waitTwoReplicas(ctx, 60*time.Second).Round(time.Millisecond))
		}
		report("rolling restart of 3 replicas took", time.Since(rollStart).Round(time.Millisecond))
		time.Sleep(3 * time.Second)
		stopCreating()
		<-creating
		total, failed, longest, failures := load.stop()
		report("rolling restart: short requests total", total)
		report("rolling restart: short requests failed", failed)
		report("rolling restart: longest gap between successful short requests", longest.Round(time.Millisecond))
		for _, f := range failures {
			GinkgoWriter.Printf("failed: %s\n", f)
		}
		cmu.Lock()
		names := append([]string(nil), created...)
		cmu.Unlock()
		report("rolling restart: ConfigMaps created during the roll", len(names))
		Eventually(func() []string { return w.missing(names) }).WithTimeout(30*time.Second).Should(BeEmpty(), "events the watch (and its resumptions from the last resourceVersion) never delivered")
		w.stop()
		w.mu.Lock()
		ends := append([]string(nil), w.ends...)
		w.mu.Unlock()
		report("rolling restart: watch ends (each resumed from its last resourceVersion)", len(ends))
		// kubectl get -w ends as at a server's watch timeout. A raw
		// watch cut when a drain's timeout ends its tunnel sees the
		// connection close mid-body (the relay is blind: it cannot end
		// the HTTP response, only the agent could), and resumes from its
		// last resourceVersion like any client-go reflector: what matters
		// is that no event was lost, checked above.
		unclean := 0
		for _, e := range ends {
			GinkgoWriter.Printf("watch: %s\n", e)
			if strings.HasPrefix(e, "kubectl get -w") {
				Expect(e).To(ContainSubstring("exit code 0"), "kubectl get -w cut by a drain ends cleanly")
				continue
			}
			if !strings.Contains(e, "exit code 0") {
				Expect(e).To(ContainSubstring("unexpected EOF"), "a raw watch ends cleanly or with the connection's close, nothing else")
				unclean++
			}
		}
		report("rolling restart: raw watches cut mid-body by a drain's end", unclean)
		Expect(total).To(BeNumerically(">", 20))
		Expect(failed).To(Equal(0), "failed short requests during the rolling restart: %v", failures)
	}, SpecTimeout(6*time.Minute))

	It("keeps serving when a replica holding an agent session is killed (kill -9)", func(ctx SpecContext) {
		waitTwoReplicas(ctx, 60*time.Second)
		sessions := agentSessions(ctx)
		victim := -1
		for i, v := range sessions {
			if v == 1 {
				victim = i
				break
			}
		}
		Expect(victim).NotTo(Equal(-1))
		entry := entryReplica(ctx, ns)
		report("kill -9: victim / caller's entry replica / sessions", fmt.Sprintf("relay%d / relay%d / %v", victim, entry, sessions))
		load := startShortLoad(ctx, ns)
		time.Sleep(2 * time.Second)
		killed := time.Now()
		Expect(hs.KillRelayReplica(victim)).To(Succeed())
		Eventually(func() []int { return agentSessions(ctx) }).WithTimeout(60*time.Second).WithPolling(100*time.Millisecond).Should(Satisfy(func(s []int) bool {
			holding := 0
			for i, v := range s {
				if i != victim && v == 1 {
					holding++
				}
			}
			return holding == 2
		}), "the agent back on the two replicas left")
		back := time.Since(killed)
		report("kill -9: agent back on two replicas after", back.Round(time.Millisecond))
		// Requests keep working after the kill.
		t0, _ := load.counts()
		Eventually(func() int { t, _ := load.counts(); return t - t0 }).WithTimeout(30 * time.Second).Should(BeNumerically(">=", 10))
		total, failed, longest, failures := load.stop()
		report("kill -9: short requests total", total)
		report("kill -9: short requests failed", failed)
		report("kill -9: longest gap between successful short requests", longest.Round(time.Millisecond))
		for _, f := range failures {
			GinkgoWriter.Printf("failed: %s\n", f)
		}
		Expect(mustHAKubectl(ctx, nil, "get", "configmap", "probe", "-n", ns, "-o", "name")).To(ContainSubstring("configmap/probe"))
		Expect(longest).To(BeNumerically("<", 30*time.Second), "short requests resumed")
		Expect(hs.StartRelayReplica(ctx, victim)).To(Succeed())
	}, SpecTimeout(4*time.Minute))

	It("survives etcd trouble: one member down changes nothing; all down keeps kubectl working and refuses writes by name; restarted, writes resume on the earlier state", func(ctx SpecContext) {
		rule := `user.username == "oidc:ha-etcd-` + randomName("u") + `"`
		// One member of three down.
		hs.KillEtcdMember(0)
		mustHAKubectl(ctx, nil, "get", "configmap", "probe", "-n", ns)
		start := time.Now()
		mustHARelay(ctx, 1, "cluster", "grant", hc.Name(), "--rule", rule)
		report("etcd one member down: admin grant took", time.Since(start).Round(time.Millisecond))
		Expect(hs.RestartEtcdMember(0)).To(Succeed())
		Expect(hs.Etcd().WaitReady(30 * time.Second)).To(Succeed())

		// All of etcd down.
		hs.StopEtcd()
		stopped := time.Now()
		DeferCleanup(func() { _ = hs.StartEtcd() })
		Eventually(func() float64 { return replicaMetric(ctx, 0, "tether_relay_store_available", nil) }).WithTimeout(30 * time.Second).Should(Equal(0.0))
		report("etcd all down: replica 0 reports the store unavailable after", time.Since(stopped).Round(time.Millisecond))
		okCount := 0
		for range 10 {
			mustHAKubectl(ctx, nil, "get", "configmap", "probe", "-n", ns, "-o", "name")
			okCount++
		}
		// Past the lease TTL (5 s): the replicas route from the table they hold.
		time.Sleep(6 * time.Second)
		mustHAKubectl(ctx, nil, "get", "configmap", "probe", "-n", ns, "-o", "name")
		okCount++
		report("etcd all down: kubectl requests through tether that succeeded", okCount)
		for i := range haReplicas {
			body, err := hs.RelayReplicaReadyz(ctx, i)
			Expect(err).NotTo(HaveOccurred(), "replica %d stays ready without etcd", i)
			Expect(body).To(ContainSubstring("degraded"))
		}
		out, err := haRelay(ctx, 0, "cluster", "grant", hc.Name(), "--group", "oidc:never-granted")
		Expect(err).To(HaveOccurred(), "an admin write with etcd down: %s", out)
		GinkgoWriter.Printf("admin write with etcd down said: %s\n", out)
		Expect(out).To(ContainSubstring("etcd"), "the refusal names the store")
		out, err = haRelay(ctx, 0, "cluster", "create", randomName("refused"))
		Expect(err).To(HaveOccurred(), "a cluster create with etcd down: %s", out)
		Expect(out).To(ContainSubstring("etcd"))
		// A join is refused too, at a replica, with the store named.
		status, msg := joinAt(ctx, 0, "not-a-real-token-"+randomName("t"))
		GinkgoWriter.Printf("join with etcd down: %d %s\n", status, msg)
		Expect(status).NotTo(Equal(http.StatusOK))

		Expect(hs.StartEtcd()).To(Succeed())
		restarted := time.Now()
		Eventually(func() error {
			_, err := haRelay(ctx, 0, "cluster", "revoke", hc.Name(), "--rule", rule)
			return err
		}).WithTimeout(60 * time.Second).WithPolling(500 * time.Millisecond).Should(Succeed())
		report("etcd restarted: first admin write succeeded after", time.Since(restarted).Round(time.Millisecond))
		policy := mustHARelay(ctx, 0, "cluster", "policy", hc.Name())
		Expect(policy).To(ContainSubstring("oidc:" + stack.DemoGroup))
		Expect(policy).NotTo(ContainSubstring("never-granted"))
		Expect(mustHARelay(ctx, 0, "cluster", "list")).To(ContainSubstring(hc.Name()))
		for i := range haReplicas {
			Eventually(func() float64 { return replicaMetric(ctx, i, "tether_relay_store_available", nil) }).WithTimeout(30 * time.Second).Should(Equal(1.0))
		}
		waitTwoReplicas(ctx, 60*time.Second)
		mustHAKubectl(ctx, nil, "get", "configmap", "probe", "-n", ns)
	}, SpecTimeout(5*time.Minute))

	It("lets exactly one of three replicas take a join token presented to all at once", func(ctx SpecContext) {
		name := randomName("race")
		token := strings.TrimSpace(strings.Split(mustHARelayStdout(ctx, 0, "cluster", "create", name), "\n")[0])
		DeferCleanup(func(ctx SpecContext) { _, _ = haRelay(ctx, 0, "cluster", "delete", name) })
		type result struct {
			replica, status int
			msg             string
		}
		results := make([]result, haReplicas)
		var wg sync.WaitGroup
		gate := make(chan struct{})
		for i := range haReplicas {
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer GinkgoRecover()
				<-gate
				st, msg := joinAt(ctx, i, token)
				results[i] = result{i, st, msg}
			}()
		}
		close(gate)
		wg.Wait()
		ok := 0
		for _, r := range results {
			GinkgoWriter.Printf("join at relay%d: %d %s\n", r.replica, r.status, r.msg)
			if r.status == http.StatusOK {
				ok++
				Expect(r.msg).To(ContainSubstring(name))
			} else {
				Expect(r.status).To(BeNumerically(">=", 400))
				Expect(r.msg).NotTo(BeEmpty(), "a refusal says why")
			}
		}
		report("join race: successes of 3", ok)
		Expect(ok).To(Equal(1))
	})

	It("cuts the agent's sessions on every replica when the cluster is rotated through another, and the agent rejoins with the new token", func(ctx SpecContext) {
		waitTwoReplicas(ctx, 60*time.Second)
		sessions := agentSessions(ctx)
		via := -1
		for i, v := range sessions {
			if v == 0 {
				via = i
			}
		}
		Expect(via).NotTo(Equal(-1))
		start := time.Now()
		token := strings.TrimSpace(strings.Split(mustHARelayStdout(ctx, via, "cluster", "rotate", hc.Name()), "\n")[0])
		Eventually(func() int { return sessionsTotal(agentSessions(ctx)) }).WithTimeout(30*time.Second).WithPolling(100*time.Millisecond).Should(Equal(0),
			"the sessions held on the other replicas end")
		report(fmt.Sprintf("rotate via relay%d (sessions %v): all agent sessions cut after", via, sessions), time.Since(start).Round(time.Millisecond))
		_, err := haKubectl(ctx, nil, "get", "configmap", "probe", "-n", ns, "--request-timeout=10s")
		Expect(err).To(HaveOccurred(), "no agent: kubectl fails")
		Expect(os.WriteFile(hs.JoinTokenFile(), []byte(token), 0o600)).To(Succeed())
		_ = hs.StopAgent()
		start = time.Now()
		Expect(hs.StartAgent(ctx)).To(Succeed())
		waitTwoReplicas(ctx, 60*time.Second)
		report("rotate: agent restarted, rejoined with the new token and back on two replicas after", time.Since(start).Round(time.Millisecond))
		Expect(hs.Tail("agent", 60)).To(ContainSubstring("joined again"))
		mustHAKubectl(ctx, nil, "get", "configmap", "probe", "-n", ns)
	}, SpecTimeout(4*time.Minute))
})

func mustHARelayStdout(ctx context.Context, i int, args ...string) string {
	GinkgoHelper()
	out, err := hs.RelayReplicaCommand(ctx, i, args...).Output()
	Expect(err).NotTo(HaveOccurred(), "tether-relay %s (via replica %d): %s", strings.Join(args, " "), i, exitText(err))
	return string(out)
}

func exitText(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

func diff(a, b []float64) []float64 {
	out := make([]float64, len(a))
	for i := range a {
		out[i] = a[i] - b[i]
	}
	return out
}

// forwardedLines counts the owners' audit lines for forwarded tunnels, in
// every replica's log.
func forwardedLines() int {
	n := 0
	for i := range haReplicas {
		b, _ := os.ReadFile(hs.RelayReplicaLog(i))
		n += bytes.Count(b, []byte("relay: forwarded tunnel opened"))
	}
	return n
}

// joinAt presents token at replica i's /v1/join directly, from the load
// balancer's host (the laptop and the cluster may not reach the replicas),
// with a fresh key's CSR, and returns the status and what the relay said
// (the cluster on success, the refusal's message otherwise).
func joinAt(ctx context.Context, i int, token string) (int, string) {
	GinkgoHelper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	Expect(err).NotTo(HaveOccurred())
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	Expect(err).NotTo(HaveOccurred())
	body, _ := json.Marshal(relayapi.JoinRequest{Token: token, CSR: csr})
	caPEM, err := os.ReadFile(hs.RelayCAFile())
	Expect(err).NotTo(HaveOccurred())
	pool := x509.NewCertPool()
	Expect(pool.AppendCertsFromPEM(caPEM)).To(BeTrue())
	lb := hc.Host(cluster.HostLB)
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DialContext: lb.DialContext,
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	defer client.CloseIdleConnections()
	addr := net.JoinHostPort(hs.ReplicaHost(i).Addr.String(), strconv.Itoa(stack.RelayAPIPort))
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+addr+relayapi.JoinPath, bytes.NewReader(body))
	Expect(err).NotTo(HaveOccurred())
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode == http.StatusOK {
		var jr relayapi.JoinResponse
		Expect(json.Unmarshal(raw, &jr)).To(Succeed())
		return resp.StatusCode, "joined " + jr.Cluster
	}
	var st struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(raw, &st) == nil && st.Message != "" {
		return resp.StatusCode, st.Message
	}
	return resp.StatusCode, strings.TrimSpace(string(raw))
}

// haPortForward10MB is portForward10MB through the HA relay from the
// laptop; it stops the port-forward, so the replicas count its bytes.
func haPortForward10MB(ctx context.Context, ns, pod string) {
	GinkgoHelper()
	pf, took := portForward10MB(ctx, hc, hc.Host(cluster.HostLaptop), hs.Kubeconfig(), ns, pod, "--context", hs.Context())
	report("HA port-forward 10 MB", took.Round(time.Millisecond))
	Expect(pf.Stop()).To(Succeed())
}

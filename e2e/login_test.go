package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tether-k8s/tether/fixtures/cluster"
	"github.com/tether-k8s/tether/fixtures/stack"
)

// loginRun is a `tether-proxy login` running on the laptop, its stderr
// read line by line.
type loginRun struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	text  strings.Builder
	lines chan string
	done  chan struct{} // closed when stderr is read to its end
}

func startLogin(ctx context.Context, env []string, args ...string) *loginRun {
	GinkgoHelper()
	r := &loginRun{cmd: ts.ProxyCommand(ctx, env, append([]string{"login"}, args...)...), lines: make(chan string, 64), done: make(chan struct{})}
	stderr, err := r.cmd.StderrPipe()
	Expect(err).NotTo(HaveOccurred())
	Expect(r.cmd.Start()).To(Succeed())
	go func() {
		defer close(r.done)
		defer close(r.lines)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			r.mu.Lock()
			r.text.WriteString(sc.Text() + "\n")
			r.mu.Unlock()
			select {
			case r.lines <- sc.Text():
			default:
			}
		}
	}()
	return r
}

// await returns the first submatches of re in a line of stderr.
func (r *loginRun) await(re *regexp.Regexp) []string {
	GinkgoHelper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case line, ok := <-r.lines:
			if !ok {
				Fail("tether-proxy login ended without printing " + re.String() + ":\n" + r.output())
			}
			if m := re.FindStringSubmatch(line); m != nil {
				return m
			}
		case <-timeout:
			Fail("tether-proxy login printed no " + re.String() + " in 30s:\n" + r.output())
		}
	}
}

// wait waits for the login to end and returns its stderr.
func (r *loginRun) wait() (string, error) {
	select {
	case <-r.done:
	case <-time.After(2 * time.Minute):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
	err := r.cmd.Wait()
	return r.output(), err
}

func (r *loginRun) output() string { r.mu.Lock(); defer r.mu.Unlock(); return r.text.String() }

// cachedLogin reads the login cache file under home.
func cachedLogin(home string) (path string, expiry time.Time) {
	GinkgoHelper()
	files, err := filepath.Glob(filepath.Join(home, ".config", "tether", "login", "*.json"))
	Expect(err).NotTo(HaveOccurred())
	for _, f := range files {
		if filepath.Base(f) == "current.json" {
			continue
		}
		st, err := os.Stat(f)
		Expect(err).NotTo(HaveOccurred())
		Expect(st.Mode().Perm()).To(Equal(os.FileMode(0o600)), "the token cache file's mode")
		b, err := os.ReadFile(f)
		Expect(err).NotTo(HaveOccurred())
		var e struct {
			Expiry time.Time `json:"expiry"`
		}
		Expect(json.Unmarshal(b, &e)).To(Succeed())
		return f, e.Expiry
	}
	Fail("no login cached under " + home)
	return "", time.Time{}
}

var _ = Describe("tether-proxy login at the OpenID provider the relay names", Ordered, func() {
	const idTokenTTL = 20 * time.Second
	var (
		home string
		env  []string
		p    *stack.Proxy
		ns   string
	)
	relayArgs := func() []string {
		return []string{"--relay", ts.RelayURL(lc.Host(cluster.HostLaptop)), "--relay-ca", ts.RelayCAFile(), "--issuer-ca", ts.OP().CAFile}
	}
	whoami := func(ctx context.Context) (string, error) {
		out, err := p.Kubectl(ctx, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username} {.status.userInfo.groups}").CombinedOutput()
		return string(out), err
	}

	BeforeAll(func(ctx SpecContext) {
		home = filepath.Join(GinkgoT().TempDir(), "home")
		var err error
		env, err = ts.LoginEnv(home)
		Expect(err).NotTo(HaveOccurred())
		// Short ID tokens, so the specs see them renewed and expire.
		Expect(ts.OP().SetIDTokenTTL(ctx, idTokenTTL)).To(Succeed())
		DeferCleanup(func(ctx SpecContext) { Expect(ts.OP().SetIDTokenTTL(ctx, 5*time.Minute)).To(Succeed()) })
		ns = randomName("login")
		kubectl(ctx, nil, "create", "namespace", ns)
		DeferCleanup(func(ctx SpecContext) { kubectl(ctx, nil, "delete", "namespace", ns, "--wait=false") })
		kubectl(ctx, nil, "create", "rolebinding", "team-a", "-n", ns, "--clusterrole=edit", "--group="+stack.OPPrefix+stack.GrantedGroup)
	})

	// The proxy lives across the specs (a DeferCleanup in the first would
	// stop it when that spec ends).
	AfterAll(func() {
		if p != nil {
			Expect(ts.StopProcess(p.Name)).To(Succeed())
		}
	})

	It("logs in with the device flow, knowing only the relay, and kubectl works as op:alice with no token flag", func(ctx SpecContext) {
		r := startLogin(ctx, env, relayArgs()...)
		m := r.await(regexp.MustCompile(`^Open (https://\S+/device) and enter (\S+)$`))
		Expect(m[1]).To(HavePrefix(ts.OP().URL))
		Expect(ts.OP().ApproveDevice(ctx, m[2], "alice", "alice-pw")).To(Succeed())
		out, err := r.wait()
		Expect(err).NotTo(HaveOccurred(), "tether-proxy login:\n%s", out)
		Expect(out).To(ContainSubstring("waiting…"))
		Expect(out).To(MatchRegexp(`Logged in as alice \(expires \d\d:\d\d`))
		Expect(out).To(ContainSubstring("remembered as"))
		cachedLogin(home)

		// The relay and its CA are remembered: whoami needs no flag at all.
		cmd := lc.Host(cluster.HostLaptop).Command(ctx, filepath.Join(ts.BinDir(), "tether-proxy"), "whoami")
		cmd.Env = env
		b, err := cmd.CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), "tether-proxy whoami after the login:\n%s", b)
		Expect(string(b)).To(And(ContainSubstring("user:      op:alice"), ContainSubstring("relay:     "+ts.RelayURL(lc.Host(cluster.HostLaptop)))))

		p, err = ts.StartLoginProxy(ctx, "login-proxy", stack.ProxyPort+40, env)
		Expect(err).NotTo(HaveOccurred())
		out, err = whoami(ctx)
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(out).To(And(HavePrefix("op:alice "), ContainSubstring(`"op:team-a"`)))
		// A token per hop, by exchange at the provider: the agent refuses
		// the relay's audience and the relay the cluster's, so kubectl
		// working with no shared-token warning means each hop got its own.
		Expect(ts.Tail(p.Name, 50)).NotTo(ContainSubstring("WARNING: the same token"), "the login proxy fell back to one token for both hops")
		// RBAC decides by the provider's group.
		b, err = p.Kubectl(ctx, "create", "configmap", "from-login", "-n", ns, "--from-literal=k=v").CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), string(b))
		b, err = p.Kubectl(ctx, "get", "configmaps", "-n", "default").CombinedOutput()
		Expect(err).To(HaveOccurred())
		Expect(string(b)).To(ContainSubstring(`User "op:alice" cannot list resource "configmaps"`))
	})

	It("renews the ID token with the refresh token, so kubectl works after the first one expired", func(ctx SpecContext) {
		_, first := cachedLogin(home)
		Eventually(time.Now).WithTimeout(idTokenTTL + 10*time.Second).WithPolling(time.Second).Should(BeTemporally(">", first.Add(2*time.Second)))
		out, err := whoami(ctx)
		Expect(err).NotTo(HaveOccurred(), "kubectl after the first ID token expired:\n%s\n--- proxy ---\n%s", out, ts.Tail(p.Name, 20))
		Expect(out).To(HavePrefix("op:alice "))
		_, renewed := cachedLogin(home)
		Expect(renewed).To(BeTemporally(">", first), "the cached login was renewed")
	})

	It("once the refresh token is revoked and the ID token expired, answers kubectl 401 with the command that logs in again", func(ctx SpecContext) {
		Expect(ts.OP().RevokeRefresh(ctx, "alice")).To(Succeed())
		var out string
		Eventually(func() string {
			b, _ := p.Kubectl(ctx, "get", "configmaps", "-n", ns).CombinedOutput()
			out = string(b)
			return out
		}).WithTimeout(idTokenTTL + 40*time.Second).WithPolling(2 * time.Second).Should(ContainSubstring("log in again with: tether-proxy login --relay"))
		Expect(out).To(ContainSubstring("You must be logged in to the server"), "kubectl got a 401")
		Expect(out).To(ContainSubstring("login expired"))
		GinkgoWriter.Printf("kubectl said: %s\n", out)
	})

	It("logs in again with --browser (code and PKCE on a loopback port), and the running proxy picks the new login up", func(ctx SpecContext) {
		r := startLogin(ctx, env, append(relayArgs(), "--browser")...)
		r.await(regexp.MustCompile(`^Open this URL in a browser`))
		authURL := r.await(regexp.MustCompile(`^(https://\S+)$`))[1]
		Expect(authURL).To(And(HavePrefix(ts.OP().URL), ContainSubstring("code_challenge_method=S256"), ContainSubstring("redirect_uri=http%3A%2F%2F127.0.0.1%3A")))
		callback, err := ts.OP().Login(ctx, authURL, "alice", "alice-pw")
		Expect(err).NotTo(HaveOccurred())
		// The browser is on the laptop: deliver the redirect there.
		lap := lc.Host(cluster.HostLaptop)
		browser := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: lap.DialContext}}
		defer browser.CloseIdleConnections()
		// A forged answer (another state) is refused, and the login goes on.
		forged := regexp.MustCompile(`state=[^&]*`).ReplaceAllString(callback, "state=forged")
		resp, err := browser.Get(forged)
		Expect(err).NotTo(HaveOccurred())
		resp.Body.Close()
		Expect(resp.StatusCode).To(Equal(http.StatusBadRequest))
		resp, err = browser.Get(callback)
		Expect(err).NotTo(HaveOccurred())
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		Expect(resp.StatusCode).To(Equal(http.StatusOK), string(body))
		out, err := r.wait()
		Expect(err).NotTo(HaveOccurred(), "tether-proxy login --browser:\n%s", out)
		Expect(out).To(ContainSubstring("Logged in as alice"))
		Eventually(whoami).WithContext(ctx).WithTimeout(30 * time.Second).WithPolling(2 * time.Second).Should(HavePrefix("op:alice "))
		// tether-proxy exec uses the cached login too.
		cmd := ts.ProxyCommand(ctx, env, "exec", "--relay", ts.RelayURL(lc.Host(cluster.HostLaptop)), "--relay-ca", ts.RelayCAFile(),
			"--cluster", lc.Name(), "--", ts.KubectlPath(), "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		b, err := cmd.Output()
		Expect(err).NotTo(HaveOccurred(), stderr.String())
		Expect(string(b)).To(Equal("op:alice"))
	})

	It("logs out: the cached login is removed, and a proxy started then says to log in", func(ctx SpecContext) {
		path, _ := cachedLogin(home)
		b, err := ts.ProxyCommand(ctx, env, "logout").CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), string(b))
		Expect(string(b)).To(ContainSubstring("Logged out"))
		Expect(path).NotTo(BeAnExistingFile())
		b, err = ts.ProxyCommand(ctx, env, "exec", "--relay", ts.RelayURL(lc.Host(cluster.HostLaptop)), "--relay-ca", ts.RelayCAFile(),
			"--cluster", lc.Name(), "--", "true").CombinedOutput()
		Expect(err).To(HaveOccurred())
		Expect(string(b)).To(ContainSubstring("run `tether-proxy login"))
	})
})

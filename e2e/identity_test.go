package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tether-k8s/tether/core/relayapi"
	"github.com/tether-k8s/tether/fixtures/cluster"
	"github.com/tether-k8s/tether/fixtures/issuer"
	"github.com/tether-k8s/tether/fixtures/stack"
)

// withToken makes the proxy present tok until the spec ends.
func withToken(tok string) {
	GinkgoHelper()
	old, err := os.ReadFile(ts.UserTokenFile())
	Expect(err).NotTo(HaveOccurred())
	Expect(os.WriteFile(ts.UserTokenFile(), []byte(tok), 0o600)).To(Succeed())
	DeferCleanup(func() { Expect(os.WriteFile(ts.UserTokenFile(), old, 0o600)).To(Succeed()) })
}

// auditExtra returns the extras of the API server's latest audit event
// that impersonated user, or nil.
func auditExtra(user string) map[string][]string {
	var found map[string][]string
	for _, line := range strings.Split(readFile(lc.AuditLog()), "\n") {
		var e struct {
			ImpersonatedUser *struct {
				Username string              `json:"username"`
				Extra    map[string][]string `json:"extra"`
			} `json:"impersonatedUser"`
		}
		if json.Unmarshal([]byte(line), &e) == nil && e.ImpersonatedUser != nil && e.ImpersonatedUser.Username == user {
			found = e.ImpersonatedUser.Extra
		}
	}
	return found
}

// badTokens are tokens tether must refuse, each with what the refusal
// says; other-cluster is accepted by the relay's authentication (a relay
// serves several clusters) and refused by the cluster's policy there, and by
// the agent's authentication.
func badTokens(ctx context.Context) map[string]struct{ token, relaySays, agentSays string } {
	GinkgoHelper()
	is := ts.Issuer()
	expired, err := is.TokenAt(time.Now().Add(-2*time.Hour), "demo-user", []string{stack.DemoGroup}, stack.Audience, time.Hour)
	Expect(err).NotTo(HaveOccurred())
	wrongAud, err := is.Token("demo-user", []string{stack.DemoGroup}, "kubernetes", time.Hour)
	Expect(err).NotTo(HaveOccurred())
	otherCluster, err := is.Token("demo-user", []string{stack.DemoGroup}, stack.OtherClusterAudience, time.Hour)
	Expect(err).NotTo(HaveOccurred())
	// An issuer no one configured, with the same claims.
	l, err := lc.Host(cluster.HostRelay).Listen("tcp", "0.0.0.0:0")
	Expect(err).NotTo(HaveOccurred())
	rogue, err := issuer.Start(l, "198.18.0.1")
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(rogue.Close)
	wrongIssuer, err := rogue.Token("demo-user", []string{stack.DemoGroup}, stack.Audience, time.Hour)
	Expect(err).NotTo(HaveOccurred())
	return map[string]struct{ token, relaySays, agentSays string }{
		"expired":        {expired, "token is expired", "token is expired"},
		"wrong audience": {wrongAud, "audience", "audience"},
		"wrong issuer":   {wrongIssuer, "issuer is not configured", "issuer is not configured"},
		"other cluster":  {otherCluster, "refuses this token: the token is for audience [" + stack.OtherClusterAudience + "], not [" + stack.Audience + " " + stack.RelayAudience + "]", "audience"},
	}
}

// agentTunnel opens one tunnel through the relay with token (which the
// relay admits), and TLS to the agent inside it, verified against the
// relay's cluster CA, as tether-proxy does; the client it returns sends
// every request over that one tunnel, whatever Authorization it carries:
// what a tampered proxy could do.
func agentTunnel(ctx context.Context, token string) *http.Client {
	GinkgoHelper()
	u, err := url.Parse(ts.RelayURL(lc.Host(cluster.HostLaptop)))
	Expect(err).NotTo(HaveOccurred())
	caPEM, err := os.ReadFile(ts.RelayCAFile())
	Expect(err).NotTo(HaveOccurred())
	roots := x509.NewCertPool()
	Expect(roots.AppendCertsFromPEM(caPEM)).To(BeTrue())
	tcp, err := lc.Host(cluster.HostLaptop).DialContext(ctx, "tcp", u.Host)
	Expect(err).NotTo(HaveOccurred())
	toRelay := tls.Client(tcp, &tls.Config{RootCAs: roots, ServerName: u.Hostname(), NextProtos: []string{"http/1.1"}})
	Expect(toRelay.HandshakeContext(ctx)).To(Succeed())
	conn, err := relayapi.DialTunnel(toRelay, u.Host, lc.Name(), token)
	Expect(err).NotTo(HaveOccurred(), "the relay admits the tunnel's own token")
	toAgent := tls.Client(conn, &tls.Config{NextProtos: []string{"http/1.1"}, InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
			return err
		}})
	Expect(toAgent.HandshakeContext(ctx)).To(Succeed())
	used := false
	tr := &http.Transport{MaxConnsPerHost: 1, DialTLSContext: func(context.Context, string, string) (net.Conn, error) {
		if used {
			return nil, errors.New("the agent closed the tunnel; the spec allows one")
		}
		used = true
		return toAgent, nil
	}}
	DeferCleanup(func() { tr.CloseIdleConnections(); _ = toAgent.Close() })
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

var _ = Describe("identity: tokens, CI jobs and access", Ordered, func() {
	BeforeAll(func(ctx SpecContext) {
		Expect(ts).NotTo(BeNil(), "the stack did not start")
	})

	It("refuses an expired, wrong-audience, wrong-issuer or other-cluster token at the relay, saying why", func(ctx SpecContext) {
		for name, bad := range badTokens(ctx) {
			By(name)
			Expect(os.WriteFile(ts.UserTokenFile(), []byte(bad.token), 0o600)).To(Succeed())
			out, err := viaTether(ctx, nil, "get", "nodes", "-o", "name")
			Expect(err).To(HaveOccurred(), "%s token: kubectl succeeded:\n%s", name, out)
			Expect(out).To(ContainSubstring(bad.relaySays), "%s token", name)
			Expect(out).To(ContainSubstring("tether relay: "), "%s token: the relay's refusal reaches kubectl", name)
		}
		good, err := ts.UserToken("demo-user", []string{stack.DemoGroup})
		Expect(err).NotTo(HaveOccurred())
		Expect(os.WriteFile(ts.UserTokenFile(), []byte(good), 0o600)).To(Succeed())
		Expect(readFile(ts.LogFile("relay"))).To(ContainSubstring("relay: caller refused"))
	})

	It("refuses the same tokens at the agent on its own, inside a tunnel the relay admitted, and another user's token there", func(ctx SpecContext) {
		good, err := ts.UserToken("demo-user", []string{stack.DemoGroup})
		Expect(err).NotTo(HaveOccurred())
		c := agentTunnel(ctx, good)
		get := func(token string, header ...string) (int, string) {
			GinkgoHelper()
			req, err := http.NewRequestWithContext(ctx, "GET", "https://agent/api/v1/nodes", nil)
			Expect(err).NotTo(HaveOccurred())
			if token != "" {
				req.Header.Set("Authorization", "Bearer "+token)
			}
			for i := 0; i+1 < len(header); i += 2 {
				req.Header.Set(header[i], header[i+1])
			}
			resp, err := c.Do(req)
			Expect(err).NotTo(HaveOccurred())
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(body)
		}
		// The control: the tunnel's own token is served (RBAC lets the
		// demo group read nodes).
		code, body := get(good)
		Expect(code).To(Equal(http.StatusOK), "%s", body)

		for name, bad := range badTokens(ctx) {
			code, body := get(bad.token)
			Expect(code).To(Equal(http.StatusUnauthorized), "%s token at the agent: %s", name, body)
			Expect(body).To(ContainSubstring(bad.agentSays), "%s token at the agent", name)
			Expect(body).To(ContainSubstring(`"kind":"Status"`))
		}
		code, body = get("")
		Expect(code).To(Equal(http.StatusUnauthorized), "no token: %s", body)
		// A valid token the relay would admit, but not the one this tunnel
		// was opened with.
		other, err := ts.UserToken("eve", []string{stack.GrantedGroup})
		Expect(err).NotTo(HaveOccurred())
		code, body = get(other)
		Expect(code).To(Equal(http.StatusForbidden), "another user's token: %s", body)
		Expect(body).To(ContainSubstring("this tunnel was opened for oidc:demo-user"))
		code, body = get(good, "Impersonate-User", "system:admin")
		Expect(code).To(Equal(http.StatusForbidden), "Impersonate-User: %s", body)
		Expect(auditExtra("system:admin")).To(BeNil(), "no request reached the API server as system:admin")
	})

	ciStep := func(ctx context.Context, env, flags []string, args ...string) (string, error) {
		out, err := ts.ProxyExec(ctx, env, flags, append([]string{ts.KubectlPath()}, args...)...).CombinedOutput()
		return string(out), err
	}
	grant := func(ctx context.Context, verb, rule string) {
		GinkgoHelper()
		b, err := ts.RelayCommand(ctx, "cluster", verb, lc.Name(), "--rule", rule).CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), "%s", b)
	}

	It("maps a GitHub Actions job to one user per repository with its claims as extras, and lets it deploy only where granted", func(ctx SpecContext) {
		const repo, env = "org/app", "prod"
		user := "github:" + repo
		ciNS := randomName("ci")
		kubectl(ctx, nil, "create", "namespace", ciNS)
		DeferCleanup(func(ctx SpecContext) { kubectl(ctx, nil, "delete", "namespace", ciNS, "--wait=false") })
		kubectl(ctx, nil, "create", "rolebinding", "deployer", "-n", ciNS, "--clusterrole=edit", "--user="+user)
		job, err := ts.StartGitHubActions(repo, env)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(job.Stop)

		// The relay admits no pipeline until one is granted.
		out, err := ciStep(ctx, job.Env, nil, "create", "configmap", "release", "-n", ciNS)
		Expect(err).To(HaveOccurred())
		Expect(out).To(ContainSubstring(user + " may not reach cluster"))

		rule := `user.extra["tether.io/ci-repository"] == ["` + repo + `"] && user.extra["tether.io/ci-environment"] == ["` + env + `"]`
		grant(ctx, "grant", rule)
		DeferCleanup(func(ctx SpecContext) { grant(ctx, "revoke", rule) })
		out, err = ciStep(ctx, job.Env, nil, "create", "configmap", "release", "-n", ciNS)
		Expect(err).NotTo(HaveOccurred(), "%s", out)
		Expect(kubectl(ctx, nil, "get", "configmap", "release", "-n", ciNS, "-o", "name")).To(ContainSubstring("configmap/release"))
		// A token per hop, by default: the relay's audience and the
		// cluster's, each accepted only by its own hop (the recipe lists
		// tether:relay at the relay and tether:cluster:NAME at the agent).
		Expect(job.Audiences()).To(ConsistOf(stack.RelayAudience, ts.ClusterAudience()))
		Expect(out).NotTo(ContainSubstring("WARNING"))
		// The relay's token sent to the agent is refused there, and the
		// cluster's sent to the relay is refused there.
		out, err = ciStep(ctx, job.Env, []string{"--cluster-token-audience", stack.RelayAudience}, "get", "configmaps", "-n", ciNS)
		Expect(err).To(HaveOccurred(), "%s", out)
		Expect(out).To(ContainSubstring("tether agent: the bearer token was refused"))
		out, err = ciStep(ctx, job.Env, []string{"--token-audience", ts.ClusterAudience()}, "get", "configmaps", "-n", ciNS)
		Expect(err).To(HaveOccurred(), "%s", out)
		Expect(out).To(ContainSubstring("tether relay: the bearer token was refused"))
		// The API server's audit log carries the job's claims.
		Eventually(func() map[string][]string { return auditExtra(user) }).WithTimeout(10 * time.Second).Should(And(
			HaveKeyWithValue("tether.io/ci-run-url", []string{"https://github.com/" + repo + "/actions/runs/4242"}),
			HaveKeyWithValue("tether.io/ci-workflow-ref", []string{repo + "/.github/workflows/deploy.yml@refs/heads/main"}),
			HaveKeyWithValue("tether.io/ci-environment", []string{env})))

		// Its RBAC is one namespace; the command's exit code is the step's.
		out, err = ciStep(ctx, job.Env, nil, "get", "configmaps", "-n", "default")
		Expect(err).To(HaveOccurred())
		Expect(out).To(ContainSubstring(`User "` + user + `" cannot list resource "configmaps"`))
		var ee *exec.ExitError
		Expect(errors.As(err, &ee)).To(BeTrue())
		Expect(ee.ExitCode()).To(Equal(1), "kubectl's own exit code")

		// Another repository's job, and the same repository's job for
		// another environment, are not granted.
		other, err := ts.StartGitHubActions("org/other", env)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(other.Stop)
		out, err = ciStep(ctx, other.Env, nil, "get", "configmaps", "-n", ciNS)
		Expect(err).To(HaveOccurred())
		Expect(out).To(ContainSubstring("github:org/other may not reach cluster"))
		staging, err := ts.StartGitHubActions(repo, "staging")
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(staging.Stop)
		out, err = ciStep(ctx, staging.Env, nil, "get", "configmaps", "-n", ciNS)
		Expect(err).To(HaveOccurred())
		Expect(out).To(ContainSubstring(user + " may not reach cluster"))
	})

	It("lets a GitLab CI job deploy with its id_token (--token-from env:NAME), only where granted", func(ctx SpecContext) {
		const project = "org/team/app"
		user := "gitlab:" + project
		ciNS := randomName("ci")
		kubectl(ctx, nil, "create", "namespace", ciNS)
		DeferCleanup(func(ctx SpecContext) { kubectl(ctx, nil, "delete", "namespace", ciNS, "--wait=false") })
		kubectl(ctx, nil, "create", "rolebinding", "deployer", "-n", ciNS, "--clusterrole=edit", "--user="+user)
		jobEnvFor := func(environment, relayAud, clusterAud string) []string {
			GinkgoHelper()
			relayTok, err := ts.GitLabJobToken(project, environment, relayAud)
			Expect(err).NotTo(HaveOccurred())
			clusterTok, err := ts.GitLabJobToken(project, environment, clusterAud)
			Expect(err).NotTo(HaveOccurred())
			// What a job with docs/identity.md's two id_tokens entries has.
			return []string{"GITLAB_CI=true", "CI=true", "TETHER_RELAY_TOKEN=" + relayTok, "TETHER_CLUSTER_TOKEN=" + clusterTok}
		}
		jobEnv := func(environment string) []string {
			GinkgoHelper()
			return jobEnvFor(environment, stack.RelayAudience, ts.ClusterAudience())
		}
		flags := []string{"--token-from", "env:TETHER_RELAY_TOKEN", "--cluster-token-from", "env:TETHER_CLUSTER_TOKEN"}

		rule := `user.username == "` + user + `" && user.extra["tether.io/ci-environment"] == ["production"]`
		grant(ctx, "grant", rule)
		DeferCleanup(func(ctx SpecContext) { grant(ctx, "revoke", rule) })
		out, err := ciStep(ctx, jobEnv("production"), flags, "create", "configmap", "release", "-n", ciNS)
		Expect(err).NotTo(HaveOccurred(), "%s", out)
		Expect(out).NotTo(ContainSubstring("WARNING"))
		// Each hop refuses the other's token: entries swapped, both hops
		// get the wrong one.
		out, err = ciStep(ctx, jobEnvFor("production", stack.RelayAudience, stack.RelayAudience), flags, "get", "configmaps", "-n", ciNS)
		Expect(err).To(HaveOccurred(), "%s", out)
		Expect(out).To(ContainSubstring("tether agent: the bearer token was refused"))
		out, err = ciStep(ctx, jobEnvFor("production", ts.ClusterAudience(), ts.ClusterAudience()), flags, "get", "configmaps", "-n", ciNS)
		Expect(err).To(HaveOccurred(), "%s", out)
		Expect(out).To(ContainSubstring("tether relay: the bearer token was refused"))
		Expect(kubectl(ctx, nil, "get", "configmap", "release", "-n", ciNS, "-o", "name")).To(ContainSubstring("configmap/release"))
		_, gitlab := ts.CIIssuers()
		Eventually(func() map[string][]string { return auditExtra(user) }).WithTimeout(10 * time.Second).Should(
			HaveKeyWithValue("tether.io/ci-run-url", []string{gitlab.URL + "/" + project + "/-/pipelines/9001"}))

		out, err = ciStep(ctx, jobEnv("production"), flags, "get", "secrets", "-n", "default")
		Expect(err).To(HaveOccurred())
		Expect(out).To(ContainSubstring(`User "` + user + `" cannot list resource "secrets"`))
		out, err = ciStep(ctx, jobEnv("review"), flags, "get", "configmaps", "-n", ciNS)
		Expect(err).To(HaveOccurred())
		Expect(out).To(ContainSubstring(user + " may not reach cluster"))
		// A job of a project outside the organisation is refused by the
		// recipe's claim validation rule, at the relay.
		tok, err := gitlab.Mint(time.Now(), map[string]any{"sub": "project_path:evil/app:ref_type:branch:ref:main", "project_path": "evil/app",
			"namespace_path": "evil", "ref": "main", "pipeline_id": "1", "environment": "production"}, stack.RelayAudience, time.Minute)
		Expect(err).NotTo(HaveOccurred())
		out, err = ciStep(ctx, []string{"TETHER_RELAY_TOKEN=" + tok, "TETHER_CLUSTER_TOKEN=" + tok}, flags, "get", "configmaps", "-n", ciNS)
		Expect(err).To(HaveOccurred())
		Expect(out).To(ContainSubstring("only projects of the org group may use this cluster"))
	})

	It("service-account-token mode: the caller's token opens the tunnel, a service-account token of the cluster acts, unimpersonated", func(ctx SpecContext) {
		ns := randomName("sa")
		kubectl(ctx, nil, "create", "namespace", ns)
		DeferCleanup(func(ctx SpecContext) { kubectl(ctx, nil, "delete", "namespace", ns, "--wait=false") })
		kubectl(ctx, nil, "create", "serviceaccount", "robot", "-n", ns)
		kubectl(ctx, nil, "create", "rolebinding", "robot", "-n", ns, "--clusterrole=edit", "--serviceaccount="+ns+":robot")
		saToken := strings.TrimSpace(kubectl(ctx, nil, "create", "token", "robot", "-n", ns, "--duration=1h"))
		saFile := filepath.Join(GinkgoT().TempDir(), "robot.token")
		Expect(os.WriteFile(saFile, []byte(saToken), 0o600)).To(Succeed())
		p, err := ts.StartProxy(ctx, "sa-proxy", lc.Name(), 47131, ts.UserTokenFile(), "--cluster-token-file", saFile)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(func() error { return ts.StopProcess(p.Name) })
		run := func(args ...string) (string, error) {
			out, err := p.Kubectl(ctx, args...).CombinedOutput()
			return string(out), err
		}
		robot := "system:serviceaccount:" + ns + ":robot"
		out, err := run("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
		Expect(err).NotTo(HaveOccurred(), "%s", out)
		Expect(out).To(Equal(robot))
		out, err = run("create", "configmap", "made-by-robot", "-n", ns)
		Expect(err).NotTo(HaveOccurred(), "%s", out)
		out, err = run("get", "configmaps", "-n", "default")
		Expect(err).To(HaveOccurred())
		Expect(out).To(ContainSubstring(`User "` + robot + `" cannot list resource "configmaps"`))
		// The API server saw the service account itself, not the agent
		// impersonating someone.
		Eventually(func() bool {
			for _, line := range strings.Split(readFile(lc.AuditLog()), "\n") {
				var e struct {
					User             struct{ Username string } `json:"user"`
					ImpersonatedUser *struct{}                 `json:"impersonatedUser"`
					RequestURI       string                    `json:"requestURI"`
				}
				if json.Unmarshal([]byte(line), &e) == nil && e.User.Username == robot && e.ImpersonatedUser == nil &&
					strings.HasPrefix(e.RequestURI, "/api/v1/namespaces/"+ns+"/configmaps") {
					return true
				}
			}
			return false
		}).WithTimeout(10 * time.Second).Should(BeTrue())

		// The relay still decides who may open the tunnel: with an expired
		// caller token the service-account token gets nowhere.
		expired, err := ts.Issuer().TokenAt(time.Now().Add(-2*time.Hour), "demo-user", []string{stack.DemoGroup}, stack.Audience, time.Hour)
		Expect(err).NotTo(HaveOccurred())
		withToken(expired)
		out, err = run("get", "configmaps", "-n", ns)
		Expect(err).To(HaveOccurred())
		Expect(out).To(ContainSubstring("token is expired"))
	})

	It("serves the admin API remotely only to the relay's admin group, and audits it", func(ctx SpecContext) {
		lap := lc.Host(cluster.HostLaptop)
		dir := GinkgoT().TempDir()
		relayCmdAs := func(ctx context.Context, mint func(string, []string) (string, error), subject, group string, args ...string) (string, error) {
			tok, err := mint(subject, []string{group})
			Expect(err).NotTo(HaveOccurred())
			file := filepath.Join(dir, subject+".token")
			Expect(os.WriteFile(file, []byte(tok), 0o600)).To(Succeed())
			out, err := lap.Command(ctx, filepath.Join(ts.BinDir(), "tether-relay"), append([]string{"--relay", ts.RelayURL(lap),
				"--relay-ca", ts.RelayCAFile(), "--token-file", file}, args...)...).CombinedOutput()
			return string(out), err
		}
		relayCmd := func(ctx context.Context, subject, group string, args ...string) (string, error) {
			return relayCmdAs(ctx, ts.AdminToken, subject, group, args...)
		}
		out, err := relayCmd(ctx, "root", stack.AdminGroup, "cluster", "list")
		Expect(err).NotTo(HaveOccurred(), "%s", out)
		Expect(out).To(ContainSubstring(lc.Name()))
		out, err = relayCmd(ctx, "root", stack.AdminGroup, "cluster", "grant", lc.Name(), "--user", "oidc:carol")
		Expect(err).NotTo(HaveOccurred(), "%s", out)
		DeferCleanup(func(ctx SpecContext) {
			out, err := relayCmd(ctx, "root", stack.AdminGroup, "cluster", "revoke", lc.Name(), "--user", "oidc:carol")
			Expect(err).NotTo(HaveOccurred(), "%s", out)
		})
		Expect(out).To(ContainSubstring("user\toidc:carol"))

		out, err = relayCmd(ctx, "mallory", stack.DemoGroup, "cluster", "grant", lc.Name(), "--user", "oidc:mallory")
		Expect(err).To(HaveOccurred())
		Expect(out).To(ContainSubstring("oidc:mallory is not in an admin group of this relay"))
		out, err = relayCmd(ctx, "mallory", stack.DemoGroup, "cluster", "policy", lc.Name())
		Expect(err).To(HaveOccurred(), "%s", out)

		// An agent that saw root's kubectl token (every agent root reached
		// did) replays it at the admin API: refused, for its audience.
		out, err = relayCmdAs(ctx, ts.UserToken, "root", stack.AdminGroup, "cluster", "grant", lc.Name(), "--user", "oidc:mallory")
		Expect(err).To(HaveOccurred(), "%s", out)
		Expect(out).To(ContainSubstring("the admin API accepts only tokens for its own audience, " + stack.AdminAudience))
		// And an admin token never opens a tunnel, so no agent sees one.
		adminTok, err := ts.AdminToken("demo-user", []string{stack.DemoGroup})
		Expect(err).NotTo(HaveOccurred())
		withToken(adminTok)
		out, err = viaTether(ctx, nil, "get", "namespaces")
		Expect(err).To(HaveOccurred(), "%s", out)
		Expect(out).To(ContainSubstring("is for the admin audience " + stack.AdminAudience))
		Expect(readFile(ts.LogFile("relay"))).To(And(
			MatchRegexp(`msg="relay: admin request" audit=true user=oidc:root .*method=POST path=/v1/admin/clusters/`+lc.Name()+`/grant status=200`),
			MatchRegexp(`msg="relay: admin request" audit=true user=oidc:mallory .*status=403`)))
	})
})

// Audiences per hop (issue 15, hole 4): a token one hop saw is refused by
// every other hop. Each spec runs `tether-proxy exec` with one token for
// the relay hop (--token-file) and one for the agent (--cluster-token-file),
// the way a CI job holding two tokens does.
var _ = Describe("identity: audiences per hop", Ordered, func() {
	var dir string
	BeforeAll(func() {
		Expect(ts).NotTo(BeNil(), "the stack did not start")
		dir = GinkgoT().TempDir()
	})
	mint := func(aud any) string {
		GinkgoHelper()
		tok, err := ts.Issuer().Mint(time.Now(), map[string]any{"sub": "demo-user", "groups": []string{stack.DemoGroup}, "aud": aud}, "", time.Hour)
		Expect(err).NotTo(HaveOccurred())
		return tok
	}
	file := func(name, tok string) string {
		GinkgoHelper()
		f := filepath.Join(dir, name)
		Expect(os.WriteFile(f, []byte(tok), 0o600)).To(Succeed())
		return f
	}
	// exec runs kubectl auth whoami through tether-proxy exec with the
	// relay hop's and (when not empty) the agent hop's token.
	// (kubectl auth whoami hides a 403's message, so refusals are read
	// from kubectl get --raw, which prints the agent's Status.)
	exec := func(ctx context.Context, relayTok, clusterTok string) (string, error) {
		flags := []string{"--token-file", file("relay.token", relayTok)}
		if clusterTok != "" {
			flags = append(flags, "--cluster-token-file", file("cluster.token", clusterTok))
		}
		args := []string{"get", "--raw", "/api/v1/namespaces/default/pods"}
		if strings.HasPrefix(relayTok, "whoami:") {
			relayTok = strings.TrimPrefix(relayTok, "whoami:")
			flags[1] = file("relay.token", relayTok)
			args = []string{"auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"}
		}
		b, err := ts.ProxyExec(ctx, nil, flags, append([]string{ts.KubectlPath()}, args...)...).CombinedOutput()
		return string(b), err
	}

	It("reaches the cluster with a token for the relay's audience on the relay hop and one for the cluster's at the agent", func(ctx SpecContext) {
		out, err := exec(ctx, "whoami:"+mint(stack.RelayAudience), mint(ts.ClusterAudience()))
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(out).To(ContainSubstring("oidc:demo-user"))
		Expect(out).NotTo(ContainSubstring("WARNING"), "two tokens: no shared-token warning")
	})

	It("refuses at this cluster's agent a token the provider issued for another cluster (which that cluster's agent saw)", func(ctx SpecContext) {
		// An exchanged ID token names the client (tether) too, so the
		// agent's authentication configuration accepts it: the agent's own
		// audience check is what refuses it.
		id := opLogin(ctx, "alice", "alice-pw").IDToken
		other, err := ts.OP().Exchange(ctx, id, relayapi.ClusterAudience("other-cluster"))
		Expect(err).NotTo(HaveOccurred())
		relayTok, err := ts.OP().Exchange(ctx, id, stack.RelayAudience)
		Expect(err).NotTo(HaveOccurred())
		out, err := exec(ctx, relayTok, other)
		Expect(err).To(HaveOccurred(), out)
		Expect(out).To(ContainSubstring("tether agent: this token is for another cluster's audience, tether:cluster:other-cluster"))
	})

	It("refuses at the relay a token for the cluster's audience: 401 when the relay's authentication does not accept that audience, 403 when it does", func(ctx SpecContext) {
		// A token for the cluster's audience alone: the relay's
		// authentication configuration lists no cluster audience, so the
		// token is refused there, before the relay's own check (401).
		out, err := exec(ctx, mint(ts.ClusterAudience()), mint(ts.ClusterAudience()))
		Expect(err).To(HaveOccurred(), out)
		Expect(out).To(And(ContainSubstring("tether relay: the bearer token was refused"), ContainSubstring("audience")))
		// The provider's token for the cluster also names the client ID,
		// which the relay accepts: the relay's own check refuses it (403).
		clusterTok, err := ts.OP().Exchange(ctx, opLogin(ctx, "alice", "alice-pw").IDToken, ts.ClusterAudience())
		Expect(err).NotTo(HaveOccurred())
		out, err = exec(ctx, clusterTok, clusterTok)
		Expect(err).To(HaveOccurred(), out)
		Expect(out).To(ContainSubstring("tether relay: this token is for " + ts.ClusterAudience() + ", a cluster's audience"))
		// A token for both the relay's and the cluster's audience: refused
		// and counted.
		out, err = exec(ctx, mint([]string{stack.RelayAudience, ts.ClusterAudience()}), mint(ts.ClusterAudience()))
		Expect(err).To(HaveOccurred(), out)
		Expect(out).To(ContainSubstring("also for " + ts.ClusterAudience()))
		metrics, err := ts.Metrics(ctx, "relay")
		Expect(err).NotTo(HaveOccurred())
		Expect(metrics).To(MatchRegexp(`(?m)^tether_relay_shared_audience_tokens_total [1-9]`))
	})

	It("refuses at the agent the relay hop's token, when the proxy has only that one (and warns once that it shares it)", func(ctx SpecContext) {
		out, err := exec(ctx, mint(stack.RelayAudience), "")
		Expect(err).To(HaveOccurred(), out)
		// The stack's agent does not list the relay's audience, so its
		// authentication refuses the token first (401); with a configuration
		// that accepts it, the agent's own check refuses it (403,
		// TestEachHopRefusesTheOthersTokens).
		Expect(out).To(And(ContainSubstring("tether agent: the bearer token was refused"), ContainSubstring(`"tether:relay"`)))
		Expect(strings.Count(out, "WARNING: the same token goes to the relay and to the cluster's agent")).To(Equal(1), out)
	})
})

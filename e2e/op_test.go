package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tether-k8s/tether/fixtures/stack"
)

// asOPToken makes the proxy present token (an ID token of the stack's
// OpenID provider) until the spec ends.
func asOPToken(token string) {
	GinkgoHelper()
	old, err := os.ReadFile(ts.UserTokenFile())
	Expect(err).NotTo(HaveOccurred())
	Expect(os.WriteFile(ts.UserTokenFile(), []byte(token), 0o600)).To(Succeed())
	DeferCleanup(func() { Expect(os.WriteFile(ts.UserTokenFile(), old, 0o600)).To(Succeed()) })
}

// opLogin logs user in at the stack's OpenID provider with a device flow
// the driver approves, and returns the tokens.
func opLogin(ctx context.Context, user, password string) stack.Tokens {
	GinkgoHelper()
	t, err := ts.OP().DeviceLogin(ctx, user, password)
	Expect(err).NotTo(HaveOccurred())
	return t
}

// relayCommand runs tether-relay with args on the stack's relay data.
func relayCommand(ctx context.Context, args ...string) {
	GinkgoHelper()
	b, err := ts.RelayCommand(ctx, args...).CombinedOutput()
	Expect(err).NotTo(HaveOccurred(), "tether-relay %s:\n%s", strings.Join(args, " "), b)
}

// opNamespace creates a namespace (as admin) where group (a Kubernetes
// group name, prefix included) may get and list pods, and nothing else.
func opNamespace(ctx context.Context, group string) string {
	GinkgoHelper()
	ns := randomName("op")
	kubectl(ctx, nil, "create", "namespace", ns)
	DeferCleanup(func(ctx SpecContext) { kubectl(ctx, nil, "delete", "namespace", ns, "--wait=false") })
	kubectl(ctx, nil, "create", "role", "pod-reader", "-n", ns, "--verb=get,list", "--resource=pods")
	kubectl(ctx, nil, "create", "rolebinding", "pod-reader", "-n", ns, "--role=pod-reader", "--group="+group)
	return ns
}

// claimsOf decodes a JWT's payload (unverified: for a test's own checks).
func claimsOf(token string) map[string]any { return jwtPart(token, 1) }

// kidOf returns the kid in a JWT's header.
func kidOf(token string) string {
	GinkgoHelper()
	kid, _ := jwtPart(token, 0)["kid"].(string)
	Expect(kid).NotTo(BeEmpty())
	return kid
}

func jwtPart(token string, i int) map[string]any {
	GinkgoHelper()
	parts := strings.Split(token, ".")
	Expect(parts).To(HaveLen(3))
	b, err := base64.RawURLEncoding.DecodeString(parts[i])
	Expect(err).NotTo(HaveOccurred())
	var c map[string]any
	Expect(json.Unmarshal(b, &c)).To(Succeed())
	return c
}

var _ = Describe("callers of a real OpenID provider", func() {
	It("reach the cluster as op:<subject> with op:<group>s, from a device-flow login", func(ctx SpecContext) {
		asOPToken(opLogin(ctx, "alice", "alice-pw").IDToken)
		Expect(mustViaTether(ctx, nil, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username} {.status.userInfo.groups}")).
			To(And(HavePrefix("op:alice "), ContainSubstring(`"op:team-a"`)))
	})
	It("admit a user in 1,000 groups, by the one group RBAC binds", func(ctx SpecContext) {
		mine := opNamespace(ctx, stack.OPPrefix+"g-1000")
		other := opNamespace(ctx, stack.OPPrefix+"g-9999")
		relayCommand(ctx, "cluster", "grant", lc.Name(), "--group", stack.OPPrefix+"g-1000")
		DeferCleanup(func(ctx SpecContext) {
			relayCommand(ctx, "cluster", "revoke", lc.Name(), "--group", stack.OPPrefix+"g-1000")
		})

		tok := opLogin(ctx, "many", "many-pw").IDToken
		Expect(claimsOf(tok)["groups"]).To(HaveLen(1000))
		GinkgoWriter.Printf("the ID token of a user in 1,000 groups: %d bytes\n", len(tok))
		asOPToken(tok)
		mustViaTether(ctx, nil, "get", "pods", "-n", mine)
		out, err := viaTether(ctx, nil, "get", "pods", "-n", other)
		Expect(err).To(HaveOccurred())
		Expect(out).To(ContainSubstring(`User "op:many" cannot list resource "pods" in API group "" in the namespace "` + other + `"`))
	})
	It("follow the provider's key rotation: a new key works at once, a retired one is refused at the relay", func(ctx SpecContext) {
		whoami := func() (string, error) {
			return viaTether(ctx, nil, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
		}
		// Tokens of the current key: one used now; the others kept unused
		// so that, once the key is retired, each needs a tunnel of its own
		// and so meets the relay.
		olds := make([]string, 12)
		for i := range olds {
			olds[i] = opLogin(ctx, "alice", "alice-pw").IDToken
			Expect(kidOf(olds[i])).To(Equal(kidOf(olds[0])))
		}
		used := olds[0]
		asOPToken(used)
		Expect(whoami()).To(Equal("op:alice"))

		Expect(ts.OP().RotateKeys(ctx)).To(Succeed())
		rotated := opLogin(ctx, "alice", "alice-pw").IDToken
		Expect(kidOf(rotated)).NotTo(Equal(kidOf(used)), "the OP did not sign with its new key")
		asOPToken(rotated)
		Expect(whoami()).To(Equal("op:alice"), "a token of the new key, at once")
		asOPToken(used)
		Expect(whoami()).To(Equal("op:alice"), "a token of the old key, after rotation")

		Expect(ts.OP().RetireKeys(ctx)).To(Succeed())
		// The relay and agent keep fetched keys for the JWKS's max-age
		// (stack.OPJWKSMaxAge); until then an old-key token still works.
		relayLog := len(readFile(ts.LogFile("relay")))
		next, out := 1, ""
		Eventually(func() error {
			if next == len(olds) {
				StopTrying("every unused old-key token was accepted after the key was retired").Now()
			}
			asOPToken(olds[next])
			next++
			var err error
			if out, err = whoami(); err == nil {
				return errors.New("a token of the retired key is still accepted")
			}
			return nil
		}).WithTimeout(3 * stack.OPJWKSMaxAge).WithPolling(time.Second).Should(Succeed())
		Expect(out).To(ContainSubstring("the token's signing key (kid) is not in the issuer's JWKS"))
		Expect(readFile(ts.LogFile("relay"))[relayLog:]).To(And(ContainSubstring("caller refused"), ContainSubstring("not in the issuer's JWKS")))
		// A tunnel the proxy already holds for the other old-key token
		// meets the agent, which refuses it as well.
		asOPToken(used)
		out, err := whoami()
		Expect(err).To(HaveOccurred(), "a token of a retired key was accepted: %s", out)
		Expect(out).To(ContainSubstring("not in the issuer's JWKS"))
		asOPToken(rotated)
		Expect(whoami()).To(Equal("op:alice"), "the active key's token after retirement")
	})
	It("refuse an oversized token, saying its size: the relay over 16 KiB, the proxy over what a relay reads", func(ctx SpecContext) {
		jwtOf := func(n int) string {
			return strings.Repeat("a", n/3) + "." + strings.Repeat("b", n/3) + "." + strings.Repeat("c", n-2*(n/3)-2)
		}
		asOPToken(jwtOf(17 << 10))
		out, err := viaTether(ctx, nil, "get", "pods")
		Expect(err).To(HaveOccurred())
		Expect(out).To(ContainSubstring("the bearer token was refused: authn: malformed token: 17408 bytes, at most 16384"))
		for _, n := range []int{100 << 10, 1 << 20} {
			asOPToken(jwtOf(n))
			out, err := viaTether(ctx, nil, "get", "pods")
			Expect(err).To(HaveOccurred())
			Expect(out).To(ContainSubstring(fmt.Sprintf("tether-proxy: your token is %d bytes", n)))
			Expect(out).To(ContainSubstring("ask your identity provider for a smaller token"))
		}
	})
})

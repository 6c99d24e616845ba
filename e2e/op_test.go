package e2e

import (
	"context"
	"os"
	"strings"

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

var _ = Describe("callers of a real OpenID provider", func() {
	It("reach the cluster as op:<subject> with op:<group>s, from a device-flow login", func(ctx SpecContext) {
		asOPToken(opLogin(ctx, "alice", "alice-pw").IDToken)
		Expect(mustViaTether(ctx, nil, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username} {.status.userInfo.groups}")).
			To(And(HavePrefix("op:alice "), ContainSubstring(`"op:team-a"`)))
	})
})

package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"sigs.k8s.io/e2e-framework/klient"

	"github.com/tether-k8s/tether/fixtures/cluster"
	"github.com/tether-k8s/tether/fixtures/local"
	"github.com/tether-k8s/tether/fixtures/netns"
	"github.com/tether-k8s/tether/fixtures/stack"
)

// The suite's cluster, created once in BeforeSuite.
var (
	provider *local.Provider
	lc       *cluster.Cluster
	client   klient.Client
	// ts is tether running around the cluster: issuer and relay on the
	// relay host, agent in the cluster, proxy on the laptop.
	ts *stack.Stack
)

func TestE2E(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "tether e2e")
}

var _ = BeforeSuite(func(ctx SpecContext) {
	switch p := os.Getenv("E2E_PROVIDER"); p {
	case "", local.Name:
	default:
		Fail(fmt.Sprintf("E2E_PROVIDER=%q: only %q is available so far (kind arrives with the Helm charts)", p, local.Name))
	}
	Expect(netns.Check()).To(Succeed(), "the local provider puts the cluster behind a real firewall in network namespaces; it will not run without one")

	provider = local.NewProvider()
	provider.WithName("e2e").WithOpts(local.WithLogger(slog.New(slog.NewTextHandler(GinkgoWriter, nil)), GinkgoWriter))
	_, err := provider.Create(ctx)
	Expect(err).NotTo(HaveOccurred(), "create the local cluster")
	DeferCleanup(func(ctx context.Context) {
		if anyFailed {
			dir := "artifacts/cluster-logs"
			if err := provider.ExportLogs(ctx, dir); err == nil {
				GinkgoWriter.Printf("cluster logs exported to e2e/%s\n", dir)
			}
		}
		Expect(provider.Destroy(ctx)).To(Succeed(), "stop the local cluster")
	})
	lc = provider.Cluster()
	client, err = klient.New(provider.KubernetesRestConfig())
	Expect(err).NotTo(HaveOccurred())
	Expect(provider.WaitForControlPlane(ctx, client)).To(Succeed())

	ts, err = stack.Start(ctx, stack.Config{Cluster: lc, Logger: slog.New(slog.NewTextHandler(GinkgoWriter, nil))})
	Expect(err).NotTo(HaveOccurred(), "start tether around the cluster")
	DeferCleanup(func() {
		if anyFailed {
			for _, name := range []string{"relay", "agent", "proxy"} {
				GinkgoWriter.Printf("--- %s log (last lines) ---\n%s\n", name, ts.Tail(name, 40))
			}
		}
		Expect(ts.Stop()).To(Succeed(), "stop tether")
	})
}, NodeTimeout(5*time.Minute))

// anyFailed records that a spec failed, so that the cluster's logs are kept.
var anyFailed bool

var _ = AfterEach(func() {
	if CurrentSpecReport().Failed() {
		anyFailed = true
	}
})

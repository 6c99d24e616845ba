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

// providerName is the provider the suite runs on: local.Name or kindName.
var providerName string

func TestE2E(t *testing.T) {
	RegisterFailHandler(Fail)
	name, note, err := chooseProvider(os.Getenv("E2E_PROVIDER"), dockerAnswers)
	if err != nil {
		t.Fatal(err)
	}
	if note != "" {
		fmt.Println(note)
	}
	providerName = name
	// Specs labelled kind run on the kind provider, the others on the local
	// one (they use its network namespaces and kwok's pods).
	suiteConfig, reporterConfig := GinkgoConfiguration()
	filter := "!" + kindLabel
	if providerName == kindName {
		filter = kindLabel
	}
	if suiteConfig.LabelFilter != "" {
		filter = "(" + suiteConfig.LabelFilter + ") && " + filter
	}
	suiteConfig.LabelFilter = filter
	RunSpecs(t, "tether e2e ("+providerName+" provider)", suiteConfig, reporterConfig)
}

var _ = BeforeSuite(func(ctx SpecContext) {
	if providerName == kindName {
		setupKind(ctx)
		return
	}
	// The local provider's set-up gets the 5 minutes it always had.
	lctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	Expect(providerName).To(Equal(local.Name))
	Expect(netns.Check()).To(Succeed(), "the local provider puts the cluster behind a real firewall in network namespaces; it will not run without one")

	provider = local.NewProvider()
	provider.WithName("e2e").WithOpts(local.WithLogger(slog.New(slog.NewTextHandler(GinkgoWriter, nil)), GinkgoWriter))
	_, err := provider.Create(lctx)
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
	Expect(provider.WaitForControlPlane(lctx, client)).To(Succeed())

	ts, err = stack.Start(lctx, stack.Config{Cluster: lc, Logger: slog.New(slog.NewTextHandler(GinkgoWriter, nil))})
	Expect(err).NotTo(HaveOccurred(), "start tether around the cluster")
	DeferCleanup(func() {
		if anyFailed {
			for _, name := range []string{"relay", "agent", "proxy"} {
				GinkgoWriter.Printf("--- %s log (last lines) ---\n%s\n", name, ts.Tail(name, 40))
			}
		}
		Expect(ts.Stop()).To(Succeed(), "stop tether")
	})
}, NodeTimeout(20*time.Minute)) // kind: create the cluster, build and load the images, install the charts

// anyFailed records that a spec failed, so that the cluster's logs are kept.
var anyFailed bool

var _ = AfterEach(func() {
	if CurrentSpecReport().Failed() {
		anyFailed = true
	}
})

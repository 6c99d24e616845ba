package sim_test

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tether-k8s/tether/sim/internal/sim"
)

// suiteT is the suite's test: each run's synctest bubble belongs to it.
var suiteT *testing.T

func TestSim(t *testing.T) {
	suiteT = t
	RegisterFailHandler(Fail)
	RunSpecs(t, "simulator")
}

// run runs a scenario in its own synctest bubble (sim.Replay), on virtual
// time, and returns the record; the spec judges it.
func run(name string, seed uint64, o sim.Options) *sim.Result {
	GinkgoHelper()
	sc := sim.ScenarioByName(name)
	Expect(sc).NotTo(BeNil(), "scenario %s", name)
	o.Seed = seed
	o.Progress = GinkgoWriter
	r, err := sim.Replay(suiteT, sc, o)
	Expect(err).NotTo(HaveOccurred())
	GinkgoWriter.Printf("%s seed %d: %d requests, %d faults, reconnect p50 %s p99 %s\n", name, seed, len(r.Obs), r.Faults(),
		r.ReconnectPercentile(0.5), r.ReconnectPercentile(0.99))
	return r
}

// The fixed seeds make test runs: each regression scenario, and a short
// exploratory run. `make sim` runs longer campaigns with fresh seeds.
var _ = Describe("scenarios hold every invariant", func() {
	DescribeTable("scenario", func(name string, seed uint64, d time.Duration) {
		r := run(name, seed, sim.Options{Duration: d})
		var lines []string
		for inv, v := range r.Violations {
			lines = append(lines, inv+": "+strings.Join(v, "\n  "))
		}
		Expect(lines).To(BeEmpty(), "replay: go run ./sim -scenario %s -seed %d", name, seed)
		Expect(r.Obs).NotTo(BeEmpty(), "the clients did nothing")
	},
		Entry(nil, "relay-kill-mid-stream", uint64(1), time.Duration(0)),
		Entry(nil, "drain-under-load", uint64(2), time.Duration(0)),
		Entry(nil, "revoke-and-rejoin", uint64(3), time.Duration(0)),
		Entry(nil, "slow-reader-and-flood", uint64(4), time.Duration(0)),
		Entry(nil, "network", uint64(5), 12*time.Second),
		Entry(nil, "explore", uint64(6), 12*time.Second),
		Entry(nil, "replicas-kill-and-drain", uint64(9), time.Duration(0)),
		Entry(nil, "replicas-partitions", uint64(10), time.Duration(0)),
	)
})

var _ = Describe("the timeline", func() {
	It("is the same for the same seed, and differs for another", func() {
		sc := sim.ScenarioByName("explore")
		a, b, c := sc.Timeline(42, sim.Options{}), sc.Timeline(42, sim.Options{}), sc.Timeline(43, sim.Options{})
		Expect(a).NotTo(BeEmpty())
		Expect(a).To(Equal(b))
		Expect(a).NotTo(Equal(c))
	})
})

// record is what a run's record says, as JSON: the timeline with when
// each fault was injected and undone, every observation, what the API
// servers saw, the reconnects and the verdict. On virtual time it depends
// only on the seed.
func record(r *sim.Result) string {
	GinkgoHelper()
	b, err := json.Marshal([]any{r.Start, r.Timeline, r.Obs, r.Seen, r.Reconnects, r.Violations, r.Held})
	Expect(err).NotTo(HaveOccurred())
	return string(b)
}

var _ = Describe("a seed", func() {
	It("replays exactly: the same record twice, another for another seed", func() {
		o := sim.Options{Duration: 8 * time.Second}
		a, b, c := run("explore", 7, o), run("explore", 7, o), run("explore", 8, o)
		Expect(a.Obs).NotTo(BeEmpty())
		Expect(record(a)).To(Equal(record(b)), "seed 7 gave two different runs")
		Expect(record(a)).NotTo(Equal(record(c)), "seeds 7 and 8 gave the same run")
	})
})

var _ = BeforeSuite(func() {
	if os.Getenv("TETHER_SIM_SKIP") != "" {
		Skip("TETHER_SIM_SKIP is set")
	}
})

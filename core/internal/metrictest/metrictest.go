// Package metrictest reads metrics back through a Prometheus registry, for
// the tests of the packages that export them (the relay's, the agent's).
package metrictest

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Histogram returns, read back through g, the histogram of family name
// whose labels are exactly want, or nil.
func Histogram(t testing.TB, g prometheus.Gatherer, name string, want map[string]string) *dto.Histogram {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if labelsAre(m.GetLabel(), want) {
				return m.GetHistogram()
			}
		}
	}
	return nil
}

func labelsAre(got []*dto.LabelPair, want map[string]string) bool {
	if len(got) != len(want) {
		return false
	}
	for _, lp := range got {
		if v, ok := want[lp.GetName()]; !ok || v != lp.GetValue() {
			return false
		}
	}
	return true
}

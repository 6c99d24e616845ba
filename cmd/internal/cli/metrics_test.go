package cli

import (
	"testing"

	"github.com/tether-k8s/tether/core/version"
)

func TestNewMetricsRegistry(t *testing.T) {
	families, err := NewMetricsRegistry("tether-relay").Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, f := range families {
		seen[f.GetName()] = true
		if f.GetName() != "tether_build_info" {
			continue
		}
		labels := map[string]string{}
		for _, l := range f.GetMetric()[0].GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["binary"] != "tether-relay" || labels["version"] != version.String() || labels["goversion"] == "" || f.GetMetric()[0].GetGauge().GetValue() != 1 {
			t.Errorf("tether_build_info: %v = %v", labels, f.GetMetric()[0].GetGauge().GetValue())
		}
	}
	for _, name := range []string{"tether_build_info", "go_goroutines", "go_memstats_heap_alloc_bytes", "process_open_fds", "process_resident_memory_bytes"} {
		if !seen[name] {
			t.Errorf("%s is not gathered", name)
		}
	}
}

package cli

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/tether-k8s/tether/core/version"
)

// NewMetricsRegistry returns the Prometheus registry a binary serves on its
// /metrics: the Go runtime's and the process's collectors (go_*, process_*)
// and tether_build_info{binary, version, goversion} 1, so a dashboard can
// tell which version each replica and agent runs.
func NewMetricsRegistry(binary string) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "tether_build_info",
		Help:        "Always 1; its labels say which tether binary and version this is.",
		ConstLabels: prometheus.Labels{"binary": binary, "version": version.String(), "goversion": runtime.Version()},
	})
	info.Set(1)
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), info)
	return reg
}

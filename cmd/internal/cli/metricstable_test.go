package cli

import (
	"flag"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tether-k8s/tether/core/agent"
	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/relay"
	"github.com/tether-k8s/tether/core/tunnel"
	"github.com/tether-k8s/tether/core/tunnel/tunneltest"
)

var update = flag.Bool("update", false, "rewrite the metrics table of docs/operations.md from the binaries' registries")

// The metrics table of docs/operations.md sits between these lines; the
// charts' tests (charts/test) read it to check that every alert and
// dashboard panel asks for a metric the binaries export.
const (
	operationsDoc = "../../../docs/operations.md"
	tableBegin    = "<!-- metrics table: generated from the binaries' registries; run `go test ./cmd/internal/cli -run TestMetricsTable -update` -->"
	tableEnd      = "<!-- end of metrics table -->"
)

// TestMetricsTable checks that docs/operations.md lists every tether_*
// metric the relay and the agent register, as their assemblies do (the
// registry of NewMetricsRegistry, then the core packages' metrics), with
// its type, labels and help; -update rewrites the table.
func TestMetricsTable(t *testing.T) {
	rows := map[string]metricRow{}
	for _, r := range append(relayMetrics(t), agentMetrics(t)...) {
		rows[r.name] = r
	}
	names := make([]string, 0, len(rows))
	for n := range rows {
		names = append(names, n)
	}
	slices.Sort(names)
	var b strings.Builder
	b.WriteString(tableBegin + "\n\n| metric | type | labels | help |\n|---|---|---|---|\n")
	for _, n := range names {
		r := rows[n]
		labels := "-"
		if len(r.labels) > 0 {
			labels = "`" + strings.Join(r.labels, "`, `") + "`"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", r.name, r.typ, labels, strings.ReplaceAll(r.help, "|", `\|`))
	}
	b.WriteString("\n" + tableEnd)
	want := b.String()

	raw, err := os.ReadFile(operationsDoc)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	i, j := strings.Index(doc, tableBegin), strings.Index(doc, tableEnd)
	if i < 0 || j < i {
		t.Fatalf("%s has no metrics table (between %q and %q)", operationsDoc, tableBegin, tableEnd)
	}
	got := doc[i : j+len(tableEnd)]
	if got == want {
		return
	}
	if *update {
		if err := os.WriteFile(operationsDoc, []byte(doc[:i]+want+doc[j+len(tableEnd):]), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("the metrics table of %s is out of date: run `go test ./cmd/internal/cli -run TestMetricsTable -update`. Want:\n%s", operationsDoc, want)
}

type metricRow struct {
	name, typ, help string
	labels          []string
}

// relayMetrics are the tether_* metrics of tether-relay's registry.
func relayMetrics(t *testing.T) []metricRow {
	reg := NewMetricsRegistry("tether-relay")
	rec := &recorder{Registerer: reg}
	router, err := relay.NewRouter(relay.RouterConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = router.Close() })
	// A session, so the per-cluster collector yields its gauge.
	rs, _ := tunneltest.Pair(t, tunnel.Hello{Cluster: "prod", Agent: "a"})
	if err := router.Add(rs, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := relay.NewMetrics(rec, router, view{}); err != nil {
		t.Fatal(err)
	}
	return rec.rows(t, reg)
}

// view is a registry with one cluster whose store answers.
type view struct{}

func (view) StoreStatus() registry.StoreStatus     { return registry.StoreStatus{Available: true} }
func (view) Clusters() ([]registry.Cluster, error) { return []registry.Cluster{{ID: "prod"}}, nil }

// agentMetrics are the tether_* metrics of tether-agent's registry.
func agentMetrics(t *testing.T) []metricRow {
	reg := NewMetricsRegistry("tether-agent")
	rec := &recorder{Registerer: reg}
	m, err := agent.NewMetrics(rec)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Watch(func() int { return 1 }, time.Now); err != nil {
		t.Fatal(err)
	}
	return rec.rows(t, reg)
}

// recorder is a Registerer that keeps the collectors registered through it.
type recorder struct {
	prometheus.Registerer
	cs []prometheus.Collector
}

func (r *recorder) Register(c prometheus.Collector) error {
	r.cs = append(r.cs, c)
	return r.Registerer.Register(c)
}

func (r *recorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

// descRE parses prometheus.Desc.String(), the only way to read a Desc.
var descRE = regexp.MustCompile(`^Desc\{fqName: ("(?:[^"\\]|\\.)*"), help: ("(?:[^"\\]|\\.)*"), constLabels: \{[^}]*\}, variableLabels: \{([^}]*)\}\}$`)

// rows returns the tether_* metrics of reg: those it gathers (with their
// types), and those of the recorded vectors that have no series yet.
func (r *recorder) rows(t *testing.T, reg prometheus.Gatherer) []metricRow {
	t.Helper()
	var out []metricRow
	seen := map[string]bool{}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "tether_") || len(mf.GetMetric()) == 0 {
			continue
		}
		var labels []string
		for _, lp := range mf.GetMetric()[0].GetLabel() {
			labels = append(labels, lp.GetName())
		}
		if mf.GetName() == "tether_build_info" {
			labels = nil // constant labels: listed in the help
		}
		slices.Sort(labels)
		out = append(out, metricRow{name: mf.GetName(), typ: strings.ToLower(dto.MetricType_name[int32(mf.GetType())]), help: mf.GetHelp(), labels: labels})
		seen[mf.GetName()] = true
	}
	for _, c := range r.cs {
		var typ string
		switch c.(type) {
		case *prometheus.CounterVec:
			typ = "counter"
		case *prometheus.GaugeVec:
			typ = "gauge"
		case *prometheus.HistogramVec:
			typ = "histogram"
		case *prometheus.SummaryVec:
			typ = "summary"
		}
		ch := make(chan *prometheus.Desc, 16)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			m := descRE.FindStringSubmatch(d.String())
			if m == nil {
				t.Fatalf("cannot read %s", d)
			}
			name, _ := strconv.Unquote(m[1])
			help, _ := strconv.Unquote(m[2])
			if seen[name] {
				continue
			}
			if typ == "" {
				t.Fatalf("%s: a collector of type %T that yields no series: give the test a way to make it yield one", name, c)
			}
			var labels []string
			if m[3] != "" {
				labels = strings.Split(m[3], ",")
			}
			slices.Sort(labels)
			out = append(out, metricRow{name: name, typ: typ, help: help, labels: labels})
			seen[name] = true
		}
	}
	return out
}

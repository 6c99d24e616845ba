package charts

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// monitoringOn turns on every monitoring object of a chart.
const monitoringOn = "metrics: {serviceMonitor: {enabled: true}, prometheusRule: {enabled: true}, grafanaDashboard: {enabled: true}}"

// The docs this test reads: the metrics table the binaries' registries
// generate (cmd/internal/cli's TestMetricsTable keeps it true), and the
// runbooks the alerts link to.
const (
	operationsDoc      = "../../docs/operations.md"
	troubleshootingDoc = "../../docs/troubleshooting.md"
	metricsTableBegin  = "<!-- metrics table: generated from the binaries' registries"
	metricsTableEnd    = "<!-- end of metrics table -->"
)

// promParser parses PromQL as Prometheus does by default.
var promParser = parser.NewParser(parser.Options{})

// exportedMetrics returns the series names the relay's or the agent's
// /metrics has (binary "relay" or "agent"), from the generated metrics table
// of docs/operations.md: a histogram's _bucket, _sum and _count, the others
// by name. up is Prometheus's own series for every target it scrapes.
func exportedMetrics(t *testing.T, binary string) map[string]bool {
	t.Helper()
	raw, err := os.ReadFile(operationsDoc)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	i, j := strings.Index(doc, metricsTableBegin), strings.Index(doc, metricsTableEnd)
	if i < 0 || j < i {
		t.Fatalf("%s has no generated metrics table", operationsDoc)
	}
	out := map[string]bool{"up": true}
	row := regexp.MustCompile("^\\| `([a-z_:]+)` \\| (counter|gauge|histogram|summary|untyped) \\|")
	for _, line := range strings.Split(doc[i:j], "\n") {
		m := row.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		name, typ := m[1], m[2]
		if !strings.HasPrefix(name, "tether_"+binary+"_") && name != "tether_build_info" {
			continue
		}
		switch typ {
		case "histogram":
			out[name+"_bucket"], out[name+"_sum"], out[name+"_count"] = true, true, true
		case "summary":
			out[name], out[name+"_sum"], out[name+"_count"] = true, true, true
		default:
			out[name] = true
		}
	}
	if len(out) < 4 {
		t.Fatalf("%s: the metrics table lists %d series of the %s, want more", operationsDoc, len(out), binary)
	}
	return out
}

// checkExpr parses expr with Prometheus's parser and checks that every
// series it selects is one the binary exports, selected with the matchers
// of want (the release's series only). It returns the names it selects.
func checkExpr(t *testing.T, where, expr string, exported map[string]bool, want []*labels.Matcher) []string {
	t.Helper()
	e, err := promParser.ParseExpr(expr)
	if err != nil {
		t.Errorf("%s: %q does not parse: %v", where, expr, err)
		return nil
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == model.MetricNameLabel && m.Type != labels.MatchEqual {
				t.Errorf("%s: %s selects metric names by %s: name them, so this test can check them", where, vs, m.Type)
			}
		}
		if !exported[name] {
			t.Errorf("%s: %s is not a series the binary exports (docs/operations.md's metrics table)", where, name)
		}
		for _, w := range want {
			if !slices.ContainsFunc(vs.LabelMatchers, func(m *labels.Matcher) bool { return m.String() == w.String() }) {
				t.Errorf("%s: %s does not select %s: it would mix in other releases' series", where, vs, w)
			}
		}
		names = append(names, name)
		return nil
	})
	return names
}

// anchors returns the GitHub anchors of a Markdown file's headings.
func anchors(t *testing.T, path string) map[string]bool {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	drop := regexp.MustCompile(`[^a-z0-9 _-]`)
	for _, line := range strings.Split(string(raw), "\n") {
		if h, ok := strings.CutPrefix(line, "#"); ok {
			h = strings.TrimSpace(strings.TrimLeft(h, "#"))
			out[strings.ReplaceAll(drop.ReplaceAllString(strings.ToLower(h), ""), " ", "-")] = true
		}
	}
	return out
}

// kindOf returns the rendered unstructured objects of kind.
func kindOf(r *rendered, kind string) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, u := range all[*unstructured.Unstructured](r) {
		if u.GetKind() == kind {
			out = append(out, u)
		}
	}
	return out
}

// TestMonitoringIsOffByDefault: no CRD-backed object unless asked for
// (installing one without the Prometheus operator's CRDs fails).
func TestMonitoringIsOffByDefault(t *testing.T) {
	for chart, required := range map[string]string{agentChart: agentRequired(t), relayChart: relayRequired} {
		r := mustRender(t, chart, values(t, required))
		for _, kind := range []string{"ServiceMonitor", "PrometheusRule"} {
			if n := len(kindOf(r, kind)); n != 0 {
				t.Errorf("%s: %d %s by default, want none", chart, n, kind)
			}
		}
		for _, cm := range all[*corev1.ConfigMap](r) {
			if cm.Labels["grafana_dashboard"] != "" {
				t.Errorf("%s: dashboard ConfigMap %s by default", chart, cm.Name)
			}
		}
	}
}

// TestPrometheusRules checks the charts' alerts as `promtool check rules`
// does (Prometheus's own rule file parser, which parses each expression and
// template), and that each asks for series the binary exports, of this
// release only, and links to a runbook that exists.
func TestPrometheusRules(t *testing.T) {
	docAnchors := anchors(t, troubleshootingDoc)
	for _, tc := range []struct {
		chart, binary, required, job string
		alerts                       []string
	}{
		{relayChart, "relay", relayRequired, "t-tether-relay-metrics",
			[]string{"TetherRelayDown", "TetherClusterWithoutAgent", "TetherRelayTunnelRefusals", "TetherRelayTunnelOpenSlow", "TetherRelayStoreUnavailable"}},
		{agentChart, "agent", agentRequired(t), "t-tether-agent-metrics",
			[]string{"TetherAgentDown", "TetherAgentNoRelaySession", "TetherAgentCredentialExpiring", "TetherAgentAPIServerUnreachable"}},
	} {
		t.Run(tc.chart, func(t *testing.T) {
			exported := exportedMetrics(t, tc.binary)
			r := mustRender(t, tc.chart, values(t, tc.required, monitoringOn))
			rules := kindOf(r, "PrometheusRule")
			if len(rules) != 1 {
				t.Fatalf("%d PrometheusRules, want 1", len(rules))
			}
			spec, err := yaml.Marshal(rules[0].Object["spec"])
			if err != nil {
				t.Fatal(err)
			}
			groups, errs := rulefmt.Parse(spec, false, model.UTF8Validation, promParser, slog.New(slog.DiscardHandler))
			for _, err := range errs {
				t.Errorf("rulefmt: %v", err)
			}
			if groups == nil {
				t.Fatalf("no rule groups in\n%s", spec)
			}
			want := []*labels.Matcher{labels.MustNewMatcher(labels.MatchEqual, "job", tc.job), labels.MustNewMatcher(labels.MatchEqual, "namespace", namespace)}
			var got []string
			for _, g := range groups.Groups {
				for _, rule := range g.Rules {
					got = append(got, rule.Alert)
					where := fmt.Sprintf("alert %s", rule.Alert)
					checkExpr(t, where, rule.Expr, exported, want)
					for _, a := range []string{"summary", "description", "runbook_url"} {
						if rule.Annotations[a] == "" {
							t.Errorf("%s: no %s annotation", where, a)
						}
					}
					if s := rule.Labels["severity"]; s != "critical" && s != "warning" {
						t.Errorf("%s: severity %q, want critical or warning", where, s)
					}
					base, anchor, _ := strings.Cut(rule.Annotations["runbook_url"], "#")
					if base != "https://github.com/tether-k8s/tether/blob/main/docs/troubleshooting.md" || anchor != strings.ToLower(rule.Alert) || !docAnchors[anchor] {
						t.Errorf("%s: runbook %s: want docs/troubleshooting.md#%s, a section there", where, rule.Annotations["runbook_url"], strings.ToLower(rule.Alert))
					}
				}
			}
			if !slices.Equal(got, tc.alerts) {
				t.Errorf("alerts %q, want %q", got, tc.alerts)
			}
		})
	}
}

// TestPrometheusRuleSelector: the operator's selector replaces the
// default one in every expression.
func TestPrometheusRuleSelector(t *testing.T) {
	r := mustRender(t, relayChart, values(t, relayRequired, monitoringOn, `metrics: {prometheusRule: {selector: 'job="tether",cluster_name="eu"'}}`))
	spec, _ := yaml.Marshal(kindOf(r, "PrometheusRule")[0].Object["spec"])
	groups, errs := rulefmt.Parse(spec, false, model.UTF8Validation, promParser, slog.New(slog.DiscardHandler))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	want := []*labels.Matcher{labels.MustNewMatcher(labels.MatchEqual, "job", "tether"), labels.MustNewMatcher(labels.MatchEqual, "cluster_name", "eu")}
	for _, rule := range groups.Groups[0].Rules {
		checkExpr(t, "alert "+rule.Alert, rule.Expr, exportedMetrics(t, "relay"), want)
		if strings.Contains(rule.Expr, "t-tether-relay-metrics") {
			t.Errorf("alert %s still selects the default job: %s", rule.Alert, rule.Expr)
		}
	}
}

// grafanaMacros are the variables Grafana replaces before it sends a query
// to Prometheus, with values of the kind it puts there.
var grafanaMacros = strings.NewReplacer("$__rate_interval", "1m", "$__interval", "30s", "$__range", "6h")

// TestGrafanaDashboards checks the dashboards' JSON, that every panel has
// queries, and that each query parses as PromQL and asks for series the
// binary exports, of the dashboard's namespace and job variables.
func TestGrafanaDashboards(t *testing.T) {
	for _, tc := range []struct{ chart, binary, required string }{
		{relayChart, "relay", relayRequired},
		{agentChart, "agent", agentRequired(t)},
	} {
		t.Run(tc.chart, func(t *testing.T) {
			exported := exportedMetrics(t, tc.binary)
			r := mustRender(t, tc.chart, values(t, tc.required, monitoringOn, `metrics: {grafanaDashboard: {namespace: monitoring, labels: {team: platform}}}`))
			var cms []*corev1.ConfigMap
			for _, cm := range all[*corev1.ConfigMap](r) {
				if cm.Labels["grafana_dashboard"] == "1" {
					cms = append(cms, cm)
				}
			}
			if len(cms) != 1 {
				t.Fatalf("%d ConfigMaps labelled grafana_dashboard: \"1\", want 1", len(cms))
			}
			cm := cms[0]
			if cm.Namespace != "monitoring" || cm.Labels["team"] != "platform" {
				t.Errorf("dashboard ConfigMap in %s with labels %v: want metrics.grafanaDashboard's namespace and labels", cm.Namespace, cm.Labels)
			}
			raw, ok := cm.Data[tc.chart+".json"]
			if !ok || len(cm.Data) != 1 {
				t.Fatalf("dashboard ConfigMap keys %v, want %s.json", slices.Collect(maps.Keys(cm.Data)), tc.chart)
			}
			file, err := os.ReadFile(chartDir(tc.chart) + "/dashboards/" + tc.chart + ".json")
			if err != nil {
				t.Fatal(err)
			}
			if strings.TrimSpace(raw) != strings.TrimSpace(string(file)) {
				t.Errorf("the ConfigMap's dashboard differs from dashboards/%s.json", tc.chart)
			}
			var d struct {
				UID        string `json:"uid"`
				Title      string `json:"title"`
				Templating struct {
					List []struct {
						Name string `json:"name"`
					} `json:"list"`
				} `json:"templating"`
				Panels []dashboardPanel `json:"panels"`
			}
			dec := json.NewDecoder(strings.NewReader(raw))
			if err := dec.Decode(&d); err != nil {
				t.Fatalf("dashboard JSON: %v", err)
			}
			if d.UID != tc.chart || d.Title == "" {
				t.Errorf("dashboard uid %q, title %q: want uid %s and a title", d.UID, d.Title, tc.chart)
			}
			var vars []string
			for _, v := range d.Templating.List {
				vars = append(vars, v.Name)
			}
			if !slices.Equal(vars, []string{"datasource", "namespace", "job"}) {
				t.Errorf("dashboard variables %q, want datasource, namespace, job", vars)
			}
			want := []*labels.Matcher{labels.MustNewMatcher(labels.MatchRegexp, "namespace", "$namespace"), labels.MustNewMatcher(labels.MatchRegexp, "job", "$job")}
			used := map[string]bool{}
			var walk func(ps []dashboardPanel)
			walk = func(ps []dashboardPanel) {
				for _, p := range ps {
					walk(p.Panels)
					if p.Type == "row" || p.Type == "text" {
						continue
					}
					if len(p.Targets) == 0 {
						t.Errorf("panel %q has no query", p.Title)
					}
					if p.Datasource.UID != "${datasource}" {
						t.Errorf("panel %q: data source %q, want ${datasource}", p.Title, p.Datasource.UID)
					}
					for _, tg := range p.Targets {
						for _, n := range checkExpr(t, fmt.Sprintf("panel %q", p.Title), grafanaMacros.Replace(tg.Expr), exported, want) {
							used[n] = true
						}
					}
				}
			}
			walk(d.Panels)
			// Every tether_<binary>_ metric is on the dashboard.
			for name := range exported {
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")
				if !strings.HasPrefix(name, "tether_"+tc.binary+"_") || used[name] || used[base] || used[base+"_bucket"] || used[base+"_count"] {
					continue
				}
				t.Errorf("the dashboard shows nothing of %s", name)
			}
		})
	}
}

type dashboardPanel struct {
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []dashboardPanel `json:"panels"`
}

// TestServiceMonitor checks the ServiceMonitor scrapes the pods' health
// port through a metrics Service of its own, never the relay's public
// Service.
func TestServiceMonitor(t *testing.T) {
	for _, tc := range []struct{ chart, required, fullname string }{
		{relayChart, relayRequired, "t-tether-relay"},
		{agentChart, agentRequired(t), "t-tether-agent"},
	} {
		t.Run(tc.chart, func(t *testing.T) {
			r := mustRender(t, tc.chart, values(t, tc.required, monitoringOn, `metrics: {serviceMonitor: {interval: 15s, labels: {release: kps}}}`))
			sms := kindOf(r, "ServiceMonitor")
			if len(sms) != 1 {
				t.Fatalf("%d ServiceMonitors, want 1", len(sms))
			}
			sm := sms[0]
			if sm.GetLabels()["release"] != "kps" {
				t.Errorf("ServiceMonitor labels %v, want metrics.serviceMonitor.labels among them", sm.GetLabels())
			}
			sel, _, _ := unstructured.NestedStringMap(sm.Object, "spec", "selector", "matchLabels")
			eps, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
			if len(eps) != 1 {
				t.Fatalf("ServiceMonitor endpoints %v, want one", eps)
			}
			ep := eps[0].(map[string]any)
			if ep["path"] != "/metrics" || ep["interval"] != "15s" {
				t.Errorf("endpoint %v, want /metrics every 15s", ep)
			}
			var selected []*corev1.Service
			for _, s := range all[*corev1.Service](r) {
				if func() bool {
					for k, v := range sel {
						if s.Labels[k] != v {
							return false
						}
					}
					return true
				}() {
					selected = append(selected, s)
				}
			}
			if len(selected) != 1 || selected[0].Name != tc.fullname+"-metrics" || selected[0].Spec.Type != corev1.ServiceTypeClusterIP {
				t.Fatalf("the ServiceMonitor selects %d Services, want only the ClusterIP %s-metrics", len(selected), tc.fullname)
			}
			// The port the endpoint names leads to the container's health
			// port, where --health-listen serves /metrics.
			svc := selected[0]
			sp := servicePort(svc, ep["port"].(string))
			if sp == nil || sp.TargetPort.String() != "health" {
				t.Fatalf("metrics Service port %v for endpoint port %v: want one targeting the container's health port", sp, ep["port"])
			}
			c := container(t, one[*appsv1.Deployment](t, r))
			if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == "health" && p.ContainerPort == 8081 }) ||
				flagValue(t, c.Args, "health-listen") != "0.0.0.0:8081" {
				t.Errorf("container ports %v, --health-listen %s: want /metrics on the health port 8081", c.Ports, flagValue(t, c.Args, "health-listen"))
			}
			for k, v := range svc.Spec.Selector {
				if one[*appsv1.Deployment](t, r).Spec.Template.Labels[k] != v {
					t.Errorf("metrics Service selector %v does not select the pods", svc.Spec.Selector)
				}
			}
		})
	}
}

// TestServiceMonitorNeedsMetricsFrom: the agent's NetworkPolicy would
// keep Prometheus out.
func TestServiceMonitorNeedsMetricsFrom(t *testing.T) {
	np := `networkPolicy: {enabled: true, relay: {cidrs: [203.0.113.10/32]}, apiServer: {cidrs: [10.0.0.1/32]}}`
	_, err := render(t, agentChart, values(t, agentRequired(t), monitoringOn, np))
	if err == nil || !strings.Contains(err.Error(), "networkPolicy.metricsFrom") {
		t.Fatalf("render: %v, want a refusal naming networkPolicy.metricsFrom", err)
	}
	mustRender(t, agentChart, values(t, agentRequired(t), monitoringOn, np, `networkPolicy: {metricsFrom: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]}`))
}

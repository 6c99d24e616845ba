package relay

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metric names share this namespace and subsystem.
const (
	metricsNamespace = "tether"
	metricsSubsystem = "relay"
)

// Tunnel results, the values of the result label of tunnels_total.
const (
	ResultOpened       = "opened"
	ResultUnauthorized = "unauthorized"
	ResultBadRequest   = "bad_request"
	ResultUnknown      = "unknown_cluster"
	ResultForbidden    = "forbidden"
	ResultNotConnected = "not_connected"
	ResultTooMany      = "too_many_streams"
	ResultFailed       = "failed"
	// ResultForwarded is a cluster endpoint request that reached the
	// agent (whatever the agent or the API server answered).
	ResultForwarded = "forwarded"
)

// Metrics are the relay's Prometheus metrics. Labels are bounded: no
// caller or address labels, and a cluster label only on the per-cluster
// session gauge, for the clusters an administrator created whose agents
// hold sessions.
type Metrics struct {
	tunnels  *prometheus.CounterVec
	requests *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	joins    *prometheus.CounterVec
	renewals *prometheus.CounterVec
	sessions prometheus.GaugeFunc
	clusters prometheus.GaugeFunc
}

// NewMetrics creates the relay's metrics on reg, reading session counts
// from router.
func NewMetrics(reg prometheus.Registerer, router *Router) (*Metrics, error) {
	m := &Metrics{
		tunnels: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metricsNamespace, Subsystem: metricsSubsystem,
			Name: "tunnels_total", Help: "Callers' tunnel requests, by result."}, []string{"result"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metricsNamespace, Subsystem: metricsSubsystem,
			Name: "cluster_requests_total", Help: "Requests to the clusters' HTTPS endpoint (no tether-proxy), by result."}, []string{"result"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metricsNamespace, Subsystem: metricsSubsystem,
			Name: "tunnel_bytes_total", Help: "Bytes spliced through tunnels, by direction (in: caller to agent)."}, []string{"direction"}),
		joins: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metricsNamespace, Subsystem: metricsSubsystem,
			Name: "joins_total", Help: "Agents' join requests, by result (ok or refused)."}, []string{"result"}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metricsNamespace, Subsystem: metricsSubsystem,
			Name: "renewals_total", Help: "Agents' credential renewals, by result (ok or refused)."}, []string{"result"}),
		sessions: prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: metricsNamespace, Subsystem: metricsSubsystem,
			Name: "agent_sessions", Help: "Agent sessions held now."}, func() float64 { s, _ := router.counts(); return float64(s) }),
		clusters: prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: metricsNamespace, Subsystem: metricsSubsystem,
			Name: "connected_clusters", Help: "Clusters with at least one agent session now."}, func() float64 { _, c := router.counts(); return float64(c) }),
	}
	perCluster := clusterSessions{router: router, desc: prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, metricsSubsystem, "cluster_agent_sessions"),
		"Agent sessions held now, per cluster with at least one (a cluster missing here is not connected to this relay).", []string{"cluster"}, nil)}
	for _, c := range []prometheus.Collector{m.tunnels, m.requests, m.bytes, m.joins, m.renewals, m.sessions, m.clusters, perCluster} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *Metrics) tunnel(result string) {
	if m != nil {
		m.tunnels.WithLabelValues(result).Inc()
	}
}

func (m *Metrics) clusterRequest(result string) {
	if m != nil {
		m.requests.WithLabelValues(result).Inc()
	}
}

func (m *Metrics) spliced(in, out int64) {
	if m != nil {
		m.bytes.WithLabelValues("in").Add(float64(in))
		m.bytes.WithLabelValues("out").Add(float64(out))
	}
}

func (m *Metrics) join(ok bool) {
	if m != nil {
		m.joins.WithLabelValues(okOrRefused(ok)).Inc()
	}
}

func (m *Metrics) renewal(ok bool) {
	if m != nil {
		m.renewals.WithLabelValues(okOrRefused(ok)).Inc()
	}
}

func okOrRefused(ok bool) string {
	if ok {
		return "ok"
	}
	return "refused"
}

// clusterSessions reports the router's sessions per cluster at each scrape.
type clusterSessions struct {
	router *Router
	desc   *prometheus.Desc
}

// Describe implements prometheus.Collector.
func (c clusterSessions) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c clusterSessions) Collect(ch chan<- prometheus.Metric) {
	for id, n := range c.router.perCluster() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), id)
	}
}

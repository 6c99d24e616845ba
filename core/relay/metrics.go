package relay

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tether-k8s/tether/core/registry"
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

// Histogram buckets, in seconds, chosen for the traffic they measure.
var (
	// OpenBuckets are for opening a stream at an agent session: one round
	// trip between relay and agent (under a millisecond in one data centre,
	// 100-300 ms across continents) plus the agent's accept; seconds mean a
	// session that is failing.
	OpenBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	// TunnelBuckets are for how long a stream stays open: from one request
	// (tether-proxy keeps idle tunnels for the next ones, so seconds to
	// minutes) to watches, logs -f and exec sessions that last hours.
	TunnelBuckets = []float64{.1, 1, 10, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400}
)

// openResults are the results a stream open ends with (the result label of
// tunnel_open_duration_seconds), initialised at zero so that rates and
// quantiles exist before the first of each.
var openResults = []string{ResultOpened, ResultNotConnected, ResultTooMany, ResultFailed}

// Metrics are the relay's Prometheus metrics. Labels are bounded: no
// caller or address labels, and a cluster label only on the per-cluster
// session gauge, for the clusters an administrator created whose agents
// hold sessions.
type Metrics struct {
	tunnels  *prometheus.CounterVec
	shared   prometheus.Counter
	opens    *prometheus.HistogramVec
	lasted   prometheus.Histogram
	requests *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	joins    *prometheus.CounterVec
	renewals *prometheus.CounterVec
	sessions prometheus.GaugeFunc
	clusters prometheus.GaugeFunc
}

// RegistryView is what the relay's metrics read from its registry at each
// scrape; a *registry.Registry is one.
type RegistryView interface {
	// StoreStatus says whether the store answers.
	StoreStatus() registry.StoreStatus
	// Clusters lists the clusters an administrator created.
	Clusters() ([]registry.Cluster, error)
}

// NewMetrics creates the relay's metrics on reg, reading session counts
// from router and, when view is not nil, the store's status and the
// clusters from view at each scrape. The router times the streams it opens
// into them.
func NewMetrics(reg prometheus.Registerer, router *Router, view RegistryView) (*Metrics, error) {
	m := &Metrics{
		opens: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: metricsNamespace, Subsystem: metricsSubsystem,
			Name: "tunnel_open_duration_seconds", Buckets: OpenBuckets,
			Help: "Time to open a stream at one of the cluster's agent sessions, once the caller is authenticated and admitted (tunnels and cluster endpoint requests), by result."},
			[]string{"result"}),
		lasted: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: metricsNamespace, Subsystem: metricsSubsystem,
			Name: "tunnel_duration_seconds", Buckets: TunnelBuckets,
			Help: "How long streams to agents stayed open, from their open to their close (a tunnel's splice; a cluster endpoint connection)."}),
		tunnels: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metricsNamespace, Subsystem: metricsSubsystem,
			Name: "tunnels_total", Help: "Callers' tunnel requests, by result."}, []string{"result"}),
		shared: prometheus.NewCounter(prometheus.CounterOpts{Namespace: metricsNamespace, Subsystem: metricsSubsystem,
			Name: "shared_audience_tokens_total",
			Help: "Callers' tokens refused because they were for the relay's audience and a cluster's at once (an issuer configured to share audiences)."}),
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
	perCluster := clusterSessions{router: router, view: view, desc: prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, metricsSubsystem, "cluster_agent_sessions"),
		"Agent sessions held now on this relay, per cluster: every cluster of the registry (0: none of its agents holds a session here), and any other with a session.", []string{"cluster"}, nil)}
	for _, r := range openResults {
		m.opens.WithLabelValues(r)
	}
	cs := []prometheus.Collector{m.tunnels, m.shared, m.opens, m.lasted, m.requests, m.bytes, m.joins, m.renewals, m.sessions, m.clusters, perCluster}
	if view != nil {
		cs = append(cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: metricsNamespace, Subsystem: metricsSubsystem,
			Name: "store_available", Help: "1 while the registry's store answers; 0 while it does not (joins, renewals and admin changes are refused, routing goes on from memory)."},
			func() float64 {
				if view.StoreStatus().Available {
					return 1
				}
				return 0
			}))
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	router.metrics.Store(m)
	return m, nil
}

// openResult is the result label of a stream open that returned err.
func openResult(err error) string {
	var nc *NotConnectedError
	switch {
	case err == nil:
		return ResultOpened
	case errors.As(err, &nc):
		return ResultNotConnected
	case errors.Is(err, ErrTooManyStreams):
		return ResultTooMany
	}
	return ResultFailed
}

// streamOpen times one Router.Open.
func (m *Metrics) streamOpen(took time.Duration, err error) {
	if m != nil {
		m.opens.WithLabelValues(openResult(err)).Observe(took.Seconds())
	}
}

// streamClosed records how long a stream opened at opened stayed open.
func (m *Metrics) streamClosed(opened time.Time) {
	if m != nil {
		m.lasted.Observe(time.Since(opened).Seconds())
	}
}

func (m *Metrics) tunnel(result string) {
	if m != nil {
		m.tunnels.WithLabelValues(result).Inc()
	}
}

// sharedAudience counts a token refused for the relay's and a cluster's
// audience at once.
func (m *Metrics) sharedAudience() {
	if m != nil {
		m.shared.Inc()
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

// clusterSessions reports the router's sessions per cluster at each
// scrape, and 0 for the registry's clusters that have none, so that an
// alert can say which cluster lost its agents (or never had one).
type clusterSessions struct {
	router *Router
	view   RegistryView // nil: only the clusters with sessions
	desc   *prometheus.Desc
}

// Describe implements prometheus.Collector.
func (c clusterSessions) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c clusterSessions) Collect(ch chan<- prometheus.Metric) {
	counts := c.router.perCluster()
	if c.view != nil {
		// From the registry's memory: served even while its store is down.
		if all, err := c.view.Clusters(); err == nil {
			for _, cl := range all {
				if _, ok := counts[cl.ID]; !ok {
					counts[cl.ID] = 0
				}
			}
		}
	}
	for id, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), id)
	}
}

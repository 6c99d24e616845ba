package agent

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the agent's Prometheus metrics. Labels are bounded: HTTP
// status codes and whether the agent refused the request itself.
type Metrics struct {
	requests *prometheus.CounterVec
}

// NewMetrics creates the agent's request metrics on reg (New does, with
// Config.Prometheus).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "tether", Subsystem: "agent",
		Name: "requests_total", Help: "Callers' requests, by status code and whether the agent refused them itself."}, []string{"code", "refused"})}
	if err := reg.Register(m.requests); err != nil {
		return nil, err
	}
	return m, nil
}

// Observe counts one request.
func (m *Metrics) Observe(code int, refused bool) {
	m.requests.WithLabelValues(strconv.Itoa(code), strconv.FormatBool(refused)).Inc()
}

// watchSessions registers a gauge of the agent's live relay sessions.
func watchSessions(reg prometheus.Registerer, a *Agent) error {
	return reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "tether", Subsystem: "agent",
		Name: "relay_sessions", Help: "Relay sessions the agent holds now."}, func() float64 { return float64(a.keeper.Live()) }))
}

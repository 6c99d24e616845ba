package agent

import (
	"crypto/tls"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tether-k8s/tether/core/impersonate"
)

// Metric names share this namespace and subsystem.
const (
	metricsNamespace = "tether"
	metricsSubsystem = "agent"
)

// Histogram buckets, in seconds, chosen for the traffic they measure.
var (
	// RequestBuckets are for forwarded API requests. The API server
	// answers gets and writes in milliseconds, lists of large collections
	// in seconds (its own latency objectives: 1 s for one object, 30 s for
	// a list); watches, logs -f and exec sessions last minutes to hours,
	// which the top buckets tell apart without mixing them into the rest
	// (they have verb classes of their own).
	RequestBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 14400}
	// DialBuckets are for opening a connection to the API server (TCP and
	// TLS inside the cluster's network: a millisecond or a few tens);
	// seconds mean an API server that is overloaded or unreachable.
	DialBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
)

// Verb classes, the verb label of request_duration_seconds: few, so the
// label stays bounded whatever callers send.
const (
	// VerbRead is GET, HEAD and OPTIONS that end when answered.
	VerbRead = "read"
	// VerbWatch is a long-running read: ?watch=true (or a /watch/ path)
	// and logs -f (?follow=true).
	VerbWatch = "watch"
	// VerbWrite is every other method: POST, PUT, PATCH, DELETE.
	VerbWrite = "write"
	// VerbConnect is an upgrade: exec, attach, port-forward.
	VerbConnect = "connect"
)

// Metrics are the agent's Prometheus metrics. Labels are bounded: HTTP
// status codes (and their classes), whether the agent refused the request
// itself, a verb class; never a path, a user or a token.
type Metrics struct {
	reg      prometheus.Registerer
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	dials    *prometheus.HistogramVec
}

// NewMetrics creates the agent's request metrics on reg (New does, with
// Config.Prometheus); Watch adds the gauges.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{reg: reg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metricsNamespace, Subsystem: metricsSubsystem,
			Name: "requests_total", Help: "Callers' requests, by status code and whether the agent refused them itself."}, []string{"code", "refused"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: metricsNamespace, Subsystem: metricsSubsystem,
			Name: "request_duration_seconds", Buckets: RequestBuckets,
			Help: "Duration of the requests the agent forwarded to the API server, from their arrival to the end of the response (of the connection, for an upgrade), by verb class (read, watch, write, connect) and status code class (2xx...)."},
			[]string{"verb", "code"}),
		dials: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: metricsNamespace, Subsystem: metricsSubsystem,
			Name: "apiserver_dial_duration_seconds", Buckets: DialBuckets,
			Help: "Time to open a new connection to the API server (name lookup, TCP and TLS), by result (ok or error)."}, []string{"result"}),
	}
	for _, r := range []string{"ok", "error"} {
		m.dials.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.dials} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Watch registers the gauges read at each scrape: the relay sessions the
// agent holds (sessions) and when its credential expires (notAfter).
func (m *Metrics) Watch(sessions func() int, notAfter func() time.Time) error {
	for _, c := range []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: metricsNamespace, Subsystem: metricsSubsystem,
			Name: "relay_sessions", Help: "Relay sessions the agent holds now."}, func() float64 { return float64(sessions()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: metricsNamespace, Subsystem: metricsSubsystem,
			Name: "credential_expiry_timestamp_seconds", Help: "When the agent's credential (its certificate from the relay) expires, in seconds since the epoch; the agent renews it well before."},
			func() float64 { return float64(notAfter().Unix()) }),
	} {
		if err := m.reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// Observe counts one request and, when it was forwarded, times it.
func (m *Metrics) Observe(o impersonate.Observation) {
	m.requests.WithLabelValues(strconv.Itoa(o.Code), strconv.FormatBool(o.Refused)).Inc()
	if !o.Refused {
		m.duration.WithLabelValues(verbClass(o.Request), codeClass(o.Code)).Observe(o.Duration.Seconds())
	}
}

// verbClass is r's verb label.
func verbClass(r *http.Request) string {
	switch {
	case r.Header.Get("Upgrade") != "":
		return VerbConnect
	case r.Method == http.MethodGet || r.Method == http.MethodHead || r.Method == http.MethodOptions:
		q := r.URL.Query()
		if isTrue(q.Get("watch")) || isTrue(q.Get("follow")) || strings.Contains(r.URL.Path, "/watch/") {
			return VerbWatch
		}
		return VerbRead
	}
	return VerbWrite
}

// isTrue is how the API server reads a boolean query parameter.
func isTrue(v string) bool { b, _ := strconv.ParseBool(v); return b }

// codeClass is a status code's code label: 1xx to 5xx.
func codeClass(code int) string {
	if code < 100 || code > 599 {
		return "other"
	}
	return strconv.Itoa(code/100) + "xx"
}

// traceDials times the connections next's requests open to the API server,
// with an httptrace.ClientTrace on each request's context (the reverse
// proxy passes the context on to its transport).
func (m *Metrics) traceDials(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d := &dialTimer{m: m}
		next.ServeHTTP(w, r.WithContext(httptrace.WithClientTrace(r.Context(), d.trace())))
		d.requestDone()
	})
}

// dialTimer times the one connection a request may dial. The transport
// calls the trace's hooks from its own goroutines, and may finish a dial
// after the request is done (it pools the connection): the mutex orders
// them.
type dialTimer struct {
	m       *Metrics
	mu      sync.Mutex
	start   time.Time // when the dial began; zero before
	done    bool      // observed (or given up on)
	gotConn bool      // the request got a connection (maybe another's)
}

func (d *dialTimer) trace() *httptrace.ClientTrace {
	return &httptrace.ClientTrace{
		DNSStart:     func(httptrace.DNSStartInfo) { d.begin() },
		ConnectStart: func(string, string) { d.begin() },
		TLSHandshakeDone: func(_ tls.ConnectionState, err error) {
			d.end(err == nil)
		},
		GotConn: func(info httptrace.GotConnInfo) {
			d.mu.Lock()
			d.gotConn = true
			d.mu.Unlock()
			if !info.Reused {
				d.end(true) // plain HTTP: no handshake
			}
		},
	}
}

func (d *dialTimer) begin() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.start.IsZero() {
		d.start = time.Now()
	}
}

func (d *dialTimer) end(ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.start.IsZero() || d.done {
		return
	}
	d.done = true
	result := "ok"
	if !ok {
		result = "error"
	}
	d.m.dials.WithLabelValues(result).Observe(time.Since(d.start).Seconds())
}

// requestDone ends a dial the request began and that has not finished: a
// failure when the request got no connection at all; unknown (not
// observed) when it was served by another connection meanwhile.
func (d *dialTimer) requestDone() {
	d.mu.Lock()
	got := d.gotConn
	d.mu.Unlock()
	if got {
		return
	}
	d.end(false)
}

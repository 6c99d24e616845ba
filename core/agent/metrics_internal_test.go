package agent

import (
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tether-k8s/tether/core/impersonate"
	"github.com/tether-k8s/tether/core/internal/metrictest"
)

func TestRequestDurationByVerbAndCodeClass(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	req := func(method, target string, header ...string) *http.Request {
		r := httptest.NewRequest(method, target, nil)
		for i := 0; i+1 < len(header); i += 2 {
			r.Header.Set(header[i], header[i+1])
		}
		return r
	}
	obs := []struct {
		r        *http.Request
		code     int
		refused  bool
		took     time.Duration
		verb     string
		codeWant string
	}{
		{req("GET", "/api/v1/namespaces/default/pods/secret-name"), 200, false, 20 * time.Millisecond, VerbRead, "2xx"},
		{req("GET", "/api/v1/pods?watch=true&resourceVersion=1"), 200, false, 2 * time.Hour, VerbWatch, "2xx"},
		{req("GET", "/api/v1/watch/pods"), 200, false, time.Minute, VerbWatch, "2xx"},
		{req("GET", "/api/v1/namespaces/x/pods/p/log?follow=1"), 200, false, 10 * time.Minute, VerbWatch, "2xx"},
		{req("POST", "/api/v1/namespaces/x/pods/p/exec?command=sh", "Upgrade", "SPDY/3.1", "Connection", "Upgrade"), 101, false, time.Hour, VerbConnect, "1xx"},
		{req("PATCH", "/apis/apps/v1/namespaces/x/deployments/d"), 409, false, 30 * time.Millisecond, VerbWrite, "4xx"},
		{req("DELETE", "/api/v1/namespaces/x"), 503, false, time.Second, VerbWrite, "5xx"},
		// Refused by the agent: counted, not timed.
		{req("GET", "/api/v1/pods"), 401, true, time.Millisecond, "", ""},
	}
	for _, o := range obs {
		m.Observe(impersonate.Observation{Request: o.r, Code: o.code, Refused: o.refused, Duration: o.took})
	}
	for _, o := range obs {
		if o.refused {
			continue
		}
		h := metrictest.Histogram(t, reg, "tether_agent_request_duration_seconds", map[string]string{"verb": o.verb, "code": o.codeWant})
		if h == nil {
			t.Fatalf("%s %s: no series verb=%s code=%s", o.r.Method, o.r.URL, o.verb, o.codeWant)
		}
		if h.GetSampleSum() < o.took.Seconds() {
			t.Errorf("%s %s: sum %gs, want at least %gs", o.r.Method, o.r.URL, h.GetSampleSum(), o.took.Seconds())
		}
	}
	if n := testutil.CollectAndCount(m.duration); n != 5 {
		t.Errorf("%d request duration series, want 5 (7 forwarded requests in 5 classes, the refused one not timed)", n)
	}
	if read := metrictest.Histogram(t, reg, "tether_agent_request_duration_seconds", map[string]string{"verb": VerbRead, "code": "2xx"}); read.GetSampleCount() != 1 {
		t.Errorf("read 2xx: %d samples, want 1 (the refused request is not timed)", read.GetSampleCount())
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP tether_agent_requests_total Callers' requests, by status code and whether the agent refused them itself.
# TYPE tether_agent_requests_total counter
tether_agent_requests_total{code="101",refused="false"} 1
tether_agent_requests_total{code="200",refused="false"} 4
tether_agent_requests_total{code="401",refused="true"} 1
tether_agent_requests_total{code="409",refused="false"} 1
tether_agent_requests_total{code="503",refused="false"} 1
`), "tether_agent_requests_total"); err != nil {
		t.Fatal(err)
	}
}

func TestAPIServerDialDuration(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	api := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }))
	defer api.Close()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := closed.Addr().String()
	_ = closed.Close()
	// The request path forwards with a reverse proxy, as impersonate does:
	// the trace must reach its transport through the request's context.
	proxyTo := func(target string) http.Handler {
		u, _ := url.Parse(target)
		tr := api.Client().Transport.(*http.Transport).Clone()
		return &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(u) }, Transport: tr,
			ErrorLog: log.New(io.Discard, "", 0)}
	}
	live := m.traceDials(proxyTo(api.URL))
	for range 3 { // one dial, then the pooled connection
		rec := httptest.NewRecorder()
		live.ServeHTTP(rec, httptest.NewRequest("GET", "/version", nil))
		if rec.Code != 200 {
			t.Fatalf("through the proxy: %d %s", rec.Code, rec.Body)
		}
	}
	ok := metrictest.Histogram(t, reg, "tether_agent_apiserver_dial_duration_seconds", map[string]string{"result": "ok"})
	if ok.GetSampleCount() != 1 || ok.GetSampleSum() <= 0 || ok.GetSampleSum() > 5 {
		t.Fatalf("dials ok: %d, sum %gs; want 1 (then the connection is reused) of a few milliseconds", ok.GetSampleCount(), ok.GetSampleSum())
	}
	rec := httptest.NewRecorder()
	m.traceDials(proxyTo("https://"+deadAddr)).ServeHTTP(rec, httptest.NewRequest("GET", "/version", nil))
	if rec.Code != http.StatusBadGateway {
		t.Fatalf("to a closed port: %d, want 502", rec.Code)
	}
	if failed := metrictest.Histogram(t, reg, "tether_agent_apiserver_dial_duration_seconds", map[string]string{"result": "error"}); failed.GetSampleCount() != 1 {
		t.Fatalf("dials failed: %d, want 1", failed.GetSampleCount())
	}
}

func TestWatchGauges(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	sessions, notAfter := 2, time.Unix(1_900_000_000, 0)
	if err := m.Watch(func() int { return sessions }, func() time.Time { return notAfter }); err != nil {
		t.Fatal(err)
	}
	sessions = 0
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP tether_agent_credential_expiry_timestamp_seconds When the agent's credential (its certificate from the relay) expires, in seconds since the epoch; the agent renews it well before.
# TYPE tether_agent_credential_expiry_timestamp_seconds gauge
tether_agent_credential_expiry_timestamp_seconds 1.9e+09
# HELP tether_agent_relay_sessions Relay sessions the agent holds now.
# TYPE tether_agent_relay_sessions gauge
tether_agent_relay_sessions 0
`), "tether_agent_relay_sessions", "tether_agent_credential_expiry_timestamp_seconds"); err != nil {
		t.Fatal(err)
	}
}

package relay_test

import (
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/tether-k8s/tether/core/internal/metrictest"
	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/relay"
	"github.com/tether-k8s/tether/core/tunnel"
	"github.com/tether-k8s/tether/core/tunnel/tunneltest"
)

func TestTunnelLatencyHistograms(t *testing.T) {
	h := newRelay(t)
	h.create(t, "prod")
	h.create(t, "idle") // no agent: its tunnels are not_connected
	rs, as := tunneltest.Pair(t, tunnel.Hello{Cluster: "prod", Agent: "a"})
	tunneltest.Serve(t, as, func(st *tunnel.Stream) {
		time.Sleep(50 * time.Millisecond) // the tunnel lasts at least this
		_, _ = st.Write([]byte("pong"))
	})
	if err := h.router.Add(rs, nil); err != nil {
		t.Fatal(err)
	}
	// Every result's series exists, at zero, before the first open.
	for _, result := range []string{relay.ResultOpened, relay.ResultNotConnected, relay.ResultTooMany, relay.ResultFailed} {
		if hist := metrictest.Histogram(t, h.prom, "tether_relay_tunnel_open_duration_seconds", map[string]string{"result": result}); hist == nil || hist.GetSampleCount() != 0 {
			t.Fatalf("open histogram for %s before any tunnel: %v", result, hist)
		}
	}

	conn, err := h.dialTunnel(t, "prod", goodToken)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(conn); err != nil || string(got) != "pong" {
		t.Fatalf("through the tunnel: %q, %v", got, err)
	}
	_ = conn.Close()
	if _, err := h.dialTunnel(t, "idle", goodToken); err == nil {
		t.Fatal("a tunnel to a cluster with no agent opened")
	}

	opened := metrictest.Histogram(t, h.prom, "tether_relay_tunnel_open_duration_seconds", map[string]string{"result": relay.ResultOpened})
	if opened.GetSampleCount() != 1 || opened.GetSampleSum() <= 0 || opened.GetSampleSum() > 5 {
		t.Fatalf("open histogram (opened): count %d, sum %gs; want 1 open of a few milliseconds", opened.GetSampleCount(), opened.GetSampleSum())
	}
	if nc := metrictest.Histogram(t, h.prom, "tether_relay_tunnel_open_duration_seconds", map[string]string{"result": relay.ResultNotConnected}); nc.GetSampleCount() != 1 {
		t.Fatalf("open histogram (not_connected): count %d, want 1", nc.GetSampleCount())
	}
	// The relay closes its end of the stream after the splice ends, just
	// after the caller's read sees EOF.
	deadline := time.Now().Add(5 * time.Second)
	var lasted *dto.Histogram
	for ; time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if lasted = metrictest.Histogram(t, h.prom, "tether_relay_tunnel_duration_seconds", nil); lasted.GetSampleCount() == 1 {
			break
		}
	}
	if lasted.GetSampleCount() != 1 || lasted.GetSampleSum() < 0.05 {
		t.Fatalf("tunnel duration histogram: count %d, sum %gs; want 1 tunnel of at least 50ms", lasted.GetSampleCount(), lasted.GetSampleSum())
	}
}

// fakeView is a RegistryView whose store goes up and down.
type fakeView struct {
	avail    atomic.Bool
	clusters []string
}

func (v *fakeView) StoreStatus() registry.StoreStatus {
	return registry.StoreStatus{Available: v.avail.Load()}
}

func (v *fakeView) Clusters() ([]registry.Cluster, error) {
	var out []registry.Cluster
	for _, id := range v.clusters {
		out = append(out, registry.Cluster{ID: id})
	}
	return out, nil
}

func TestStoreAvailableGauge(t *testing.T) {
	router := newRouter(t, relay.RouterConfig{})
	t.Cleanup(func() { _ = router.Close() })
	reg := prometheus.NewRegistry()
	view := &fakeView{}
	view.avail.Store(true)
	if _, err := relay.NewMetrics(reg, router, view); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"1", "0"} {
		exp := "# HELP tether_relay_store_available 1 while the registry's store answers; 0 while it does not (joins, renewals and admin changes are refused, routing goes on from memory).\n" +
			"# TYPE tether_relay_store_available gauge\ntether_relay_store_available " + want + "\n"
		if err := testutil.GatherAndCompare(reg, strings.NewReader(exp), "tether_relay_store_available"); err != nil {
			t.Fatal(err)
		}
		view.avail.Store(false)
	}
}

// A cluster of the registry whose agents hold no session reads 0, so an
// alert can name it; one with sessions reads their number.
func TestClusterAgentSessionsNamesDisconnectedClusters(t *testing.T) {
	router := newRouter(t, relay.RouterConfig{})
	t.Cleanup(func() { _ = router.Close() })
	reg := prometheus.NewRegistry()
	if _, err := relay.NewMetrics(reg, router, &fakeView{clusters: []string{"prod", "staging"}}); err != nil {
		t.Fatal(err)
	}
	rs, _ := tunneltest.Pair(t, tunnel.Hello{Cluster: "prod", Agent: "a"})
	if err := router.Add(rs, nil); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP tether_relay_cluster_agent_sessions Agent sessions held now on this relay, per cluster: every cluster of the registry (0: none of its agents holds a session here), and any other with a session.
# TYPE tether_relay_cluster_agent_sessions gauge
tether_relay_cluster_agent_sessions{cluster="prod"} 1
tether_relay_cluster_agent_sessions{cluster="staging"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "tether_relay_cluster_agent_sessions"); err != nil {
		t.Fatal(err)
	}
}

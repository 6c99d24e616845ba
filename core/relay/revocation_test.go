package relay_test

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tether-k8s/tether/core/policy"
	"github.com/tether-k8s/tether/core/tunnel"
	"github.com/tether-k8s/tether/core/tunnel/tunneltest"
)

// echoAgent adds an agent session for cluster whose streams echo.
func echoAgent(t *testing.T, h *relayHarness, cluster string) {
	t.Helper()
	rs, as := tunneltest.Pair(t, tunnel.Hello{Cluster: cluster, Agent: "a"})
	tunneltest.Serve(t, as, func(st *tunnel.Stream) { _, _ = io.Copy(st, st) })
	if err := h.router.Add(rs, nil); err != nil {
		t.Fatal(err)
	}
}

// echoes checks that conn's tunnel carries bytes now.
func echoes(t *testing.T, conn net.Conn) {
	t.Helper()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(conn, got); err != nil || !bytes.Equal(got, []byte("ping")) {
		t.Fatalf("the tunnel does not echo: %q %v", got, err)
	}
}

// cutWithin reports whether conn's tunnel ends (a read returns an error or
// EOF) within d.
func cutWithin(t *testing.T, conn net.Conn, d time.Duration) bool {
	t.Helper()
	_ = conn.SetDeadline(time.Now().Add(d))
	_, err := conn.Read(make([]byte, 4))
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false
	}
	return err != nil
}

func adminPost(t *testing.T, h *relayHarness, path string, body string) {
	t.Helper()
	admin := httptest.NewServer(h.srv.AdminHandler())
	defer admin.Close()
	resp, err := http.Post(admin.URL+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: %d %s", path, resp.StatusCode, b)
	}
}

// TestRevokeEndsTheCallersOpenTunnels: issue 15, hole 6. Policy was checked
// only when a tunnel opened, so a revoked caller kept the tunnels (and a
// refreshed token, the requests on them) it had.
func TestRevokeEndsTheCallersOpenTunnels(t *testing.T) {
	h := newRelay(t)
	h.create(t, "prod") // grants group dev: alice and bob
	if _, err := h.reg.UpdatePolicy("prod", func(p policy.Policy) (policy.Policy, error) {
		return p.Add(policy.Policy{Users: []string{"bob"}}), nil
	}); err != nil {
		t.Fatal(err)
	}
	echoAgent(t, h, "prod")
	alice, err := h.dialTunnel(t, "prod", goodToken)
	if err != nil {
		t.Fatal(err)
	}
	bob, err := h.dialTunnel(t, "prod", bobToken)
	if err != nil {
		t.Fatal(err)
	}
	echoes(t, alice)
	echoes(t, bob)
	// Revoking group dev leaves bob (named as a user) and cuts alice.
	adminPost(t, h, "/v1/admin/clusters/prod/revoke", `{"groups":["dev"]}`)
	if !cutWithin(t, alice, 5*time.Second) {
		t.Fatal("alice's tunnel is still open after her access was revoked")
	}
	if cutWithin(t, bob, 500*time.Millisecond) {
		t.Fatal("bob's tunnel was cut, though he may still reach the cluster")
	}
	echoes(t, bob)
	if !strings.Contains(h.audit.String(), "no longer admitted") {
		t.Errorf("the cut is not logged:\naudit %s", h.audit.String())
	}
	// An audience requirement added later cuts tunnels whose token lacks it.
	adminPost(t, h, "/v1/admin/clusters/prod/grant", `{"audiences":["tether:prod"]}`)
	if !cutWithin(t, bob, 5*time.Second) {
		t.Fatal("bob's tunnel is still open, though his token is not for the audience the cluster now requires")
	}
}

// TestTunnelEndsWithTheTokenThatOpenedIt: a tunnel must not outlive the
// token the relay admitted it with.
func TestTunnelEndsWithTheTokenThatOpenedIt(t *testing.T) {
	h := newRelay(t)
	h.create(t, "prod")
	echoAgent(t, h, "prod")
	conn, err := h.dialTunnel(t, "prod", shortToken) // expires in 1 s
	if err != nil {
		t.Fatal(err)
	}
	echoes(t, conn)
	if !cutWithin(t, conn, 5*time.Second) {
		t.Fatal("the tunnel outlived the token that opened it")
	}
	long, err := h.dialTunnel(t, "prod", goodToken) // no expiry
	if err != nil {
		t.Fatal(err)
	}
	echoes(t, long)
	if cutWithin(t, long, 1500*time.Millisecond) {
		t.Fatal("a tunnel of a token without expiry was cut")
	}
}

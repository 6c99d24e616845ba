package relay_test

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-k8s/tether/core/policy"
	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/relay"
	"github.com/tether-k8s/tether/core/relayapi"
	"github.com/tether-k8s/tether/core/tunnel"
	"github.com/tether-k8s/tether/core/tunnel/tunneltest"
)

// Short limits, so that a test of them takes a second.
var testTimeouts = relay.Timeouts{Header: 300 * time.Millisecond, Request: 600 * time.Millisecond, Idle: 900 * time.Millisecond}

// slowRelay is a relay with testTimeouts on every listener.
func slowRelay(t *testing.T) (*relay.Relay, string) {
	t.Helper()
	dir := t.TempDir()
	r, err := relay.Start(t.Context(), relay.Options{Registry: registry.Config{Path: filepath.Join(dir, "relay.db")}, Authenticator: tokenAuthn{},
		Hostnames: []string{"127.0.0.1"}, APIAddr: "127.0.0.1:0", AgentAddr: "127.0.0.1:0", HealthAddr: "127.0.0.1:0",
		AdminSocket: filepath.Join(dir, "admin.sock"), RelayID: "relay-test", Timeouts: testTimeouts})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r, dir
}

// closedWithin writes what, then keeps the connection quiet (or trickles a
// byte every 100 ms with trickle), and reports how long until the server
// closed it; it gives up after limit.
func closedWithin(t *testing.T, conn net.Conn, what string, trickle bool, limit time.Duration) (time.Duration, bool) {
	t.Helper()
	defer conn.Close()
	start := time.Now()
	if _, err := io.WriteString(conn, what); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(io.Discard, conn) // until the server closes it
	}()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return time.Since(start), true
		case <-tick.C:
			if time.Since(start) > limit {
				return time.Since(start), false
			}
			if trickle {
				_, _ = conn.Write([]byte("x"))
			}
		}
	}
}

// TestSlowClientsAreCut: issue 15, hole 5. The relay's API had a header
// timeout but no body deadline, so an unauthenticated client held a
// connection forever on any path by sending a body slowly. Every listener
// now bounds headers, the whole request, and idle keep-alive connections.
func TestSlowClientsAreCut(t *testing.T) {
	r, dir := slowRelay(t)
	tlsDial := func(addr string) net.Conn {
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}) // the listener's limits, not its name, are under test
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	api := r.APIAddr().String()
	health := r.HealthAddr().String()
	dials := map[string]func() net.Conn{
		"API":          func() net.Conn { return tlsDial(api) },
		"health":       func() net.Conn { c, _ := net.Dial("tcp", health); return c },
		"admin socket": func() net.Conn { c, _ := net.Dial("unix", filepath.Join(dir, "admin.sock")); return c },
	}
	const limit = 4 * time.Second
	for name, dial := range dials {
		for _, tc := range []struct {
			name, what string
			trickle    bool
			bound      time.Duration
		}{
			{"headers never finished", "POST /v1/join HTTP/1.1\r\nHost: relay\r\n", true, testTimeouts.Header},
			{"a join's body sent slowly", "POST /v1/join HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nContent-Length: 10000\r\n\r\n{", true, testTimeouts.Request},
			{"a body sent slowly to no endpoint", "POST /nowhere HTTP/1.1\r\nHost: relay\r\nContent-Length: 10000\r\n\r\n", true, testTimeouts.Request},
			{"an idle keep-alive connection", "GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n", false, testTimeouts.Idle},
		} {
			t.Run(name+"/"+tc.name, func(t *testing.T) {
				took, closed := closedWithin(t, dial(), tc.what, tc.trickle, limit)
				if !closed {
					t.Fatalf("still open after %s (the limit is %s)", took.Round(time.Millisecond), tc.bound)
				}
				if took > tc.bound+time.Second {
					t.Fatalf("closed after %s, the limit is %s", took.Round(time.Millisecond), tc.bound)
				}
			})
		}
	}
}

// TestStreamsOutliveTheRequestLimit: what must stream is excepted from the
// request limit: a caller's tunnel, an agent's session over WebSocket.
func TestStreamsOutliveTheRequestLimit(t *testing.T) {
	r, _ := slowRelay(t)
	reg := r.Registry()
	tok, err := reg.CreateCluster("prod")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.UpdatePolicy("prod", grantDev); err != nil {
		t.Fatal(err)
	}
	cert := tunneltest.Join(t, reg, tok)
	pool := x509Pool(reg)

	// The agent holds its session over WebSocket, past the limit.
	ws := &tunnel.WebSocketDialer{URL: "wss://" + r.APIAddr().String() + relayapi.AgentWebSocketPath,
		TLSConfig: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}}
	raw, err := ws.DialContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	inner := tls.Client(raw, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13,
		NextProtos: []string{tunnel.SessionALPN}, Certificates: []tls.Certificate{cert}})
	as, err := tunnel.ConnectAgent(t.Context(), inner, tunnel.AgentConfig{Hello: tunnel.Hello{Cluster: "prod", Agent: "ws"}})
	if err != nil {
		t.Fatal(err)
	}
	tunneltest.Serve(t, as, func(st *tunnel.Stream) { _, _ = io.Copy(st, st) })
	waitRouted(t, r.Router(), "prod", 1)

	// A caller's tunnel, idle past the limit, still carries bytes.
	conn, err := tls.Dial("tcp", r.APIAddr().String(), &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tc, err := relayapi.DialTunnel(conn, "127.0.0.1", "prod", goodToken)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * testTimeouts.Idle)
	_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
	for i := range 3 {
		msg := fmt.Sprintf("ping %d", i)
		if _, err := io.WriteString(tc, msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(tc, got); err != nil || string(got) != msg {
			t.Fatalf("the tunnel past the request limit: %q %v", got, err)
		}
	}
	if !strings.Contains(fmt.Sprint(r.Router().Sessions("prod")), "1") {
		t.Fatalf("the WebSocket session did not outlive the limit: %d sessions", r.Router().Sessions("prod"))
	}
}

func grantDev(p policy.Policy) (policy.Policy, error) {
	return p.Add(policy.Policy{Groups: []string{"dev"}}), nil
}

func x509Pool(reg *registry.Registry) *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(reg.CACertificate())
	return pool
}

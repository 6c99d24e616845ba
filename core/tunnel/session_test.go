package tunnel_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tether-k8s/tether/core/clustercert"
	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/tunnel"
	"github.com/tether-k8s/tether/core/tunnel/tunneltest"
)

// connPair returns the relay's and the agent's ends of a fresh connection of
// the given kind: "pipe", "tcp" or "tls" (mutual TLS, the agent holding a
// cluster credential from a real registry).
type connPair func(t *testing.T) (relay, agent net.Conn)

var connKinds = map[string]connPair{
	"pipe": func(t *testing.T) (net.Conn, net.Conn) { r, a := net.Pipe(); return r, a },
	"tcp":  tcpPair,
	"tls":  tlsPair,
}

func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	a, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-accepted
	t.Cleanup(func() { _ = r.Close(); _ = a.Close() })
	return r, a
}

func tlsPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	reg, err := registry.Open(registry.Config{Path: filepath.Join(t.TempDir(), "reg.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	tok, err := reg.CreateCluster("prod")
	if err != nil {
		t.Fatal(err)
	}
	agentCert := tunneltest.Join(t, reg, tok)
	serverCert, serverPool := tunneltest.ServerCert(t, "relay.test")
	clientCAs := x509.NewCertPool()
	clientCAs.AddCert(reg.CACertificate())
	r, a := tcpPair(t)
	relay := tls.Server(r, &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clientCAs, MinVersion: tls.VersionTLS13})
	agent := tls.Client(a, &tls.Config{Certificates: []tls.Certificate{agentCert}, RootCAs: serverPool, ServerName: "relay.test", MinVersion: tls.VersionTLS13})
	return relay, agent
}

var hello = tunnel.Hello{Cluster: "prod", Agent: "agent-0", Slot: 0, Software: "test"}

// acceptAll authorizes any agent whose Hello names the cluster of its
// certificate (when there is one).
func acceptAll(_ context.Context, h *tunnel.Hello, st tls.ConnectionState) error {
	if len(st.PeerCertificates) > 0 {
		id, err := clustercert.ClusterID(st.PeerCertificates[0])
		if err != nil {
			return err
		}
		if id != h.Cluster {
			return tunnel.Refuse(tunnel.ReasonClusterMismatch, "certificate names "+id)
		}
	}
	return nil
}

// establish runs both handshakes concurrently.
func establish(t *testing.T, pair connPair, rcfg tunnel.RelayConfig, acfg tunnel.AgentConfig) (*tunnel.RelaySession, *tunnel.AgentSession, error, error) {
	t.Helper()
	rc, ac := pair(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	type res struct {
		s   *tunnel.AgentSession
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := tunnel.ConnectAgent(ctx, ac, acfg)
		ch <- res{s, err}
	}()
	rs, rerr := tunnel.AcceptAgent(ctx, rc, rcfg)
	r := <-ch
	if rs != nil {
		t.Cleanup(func() { _ = rs.Close() })
	}
	if r.s != nil {
		t.Cleanup(func() { _ = r.s.Close() })
	}
	return rs, r.s, rerr, r.err
}

func TestSessionCarriesStreams(t *testing.T) {
	for kind, pair := range connKinds {
		t.Run(kind, func(t *testing.T) {
			rs, as, rerr, aerr := establish(t, pair, tunnel.RelayConfig{Authorize: acceptAll, Session: "s-1", Relay: "relay-0"}, tunnel.AgentConfig{Hello: hello})
			if rerr != nil || aerr != nil {
				t.Fatalf("handshake: relay %v, agent %v", rerr, aerr)
			}
			if !reflect.DeepEqual(rs.Hello, hello) || as.Welcome.Session != "s-1" {
				t.Fatalf("relay saw %+v, agent saw %+v", rs.Hello, as.Welcome)
			}
			// The agent echoes each accepted stream.
			go func() {
				for {
					c, err := as.Accept()
					if err != nil {
						return
					}
					go func() { _, _ = io.Copy(c, c); _ = c.Close() }()
				}
			}()
			for i := range 3 {
				st, err := rs.Open(t.Context(), &tunnel.Open{Cluster: "prod", Request: "req-" + string(rune('a'+i)), Client: "203.0.113.7:5000"})
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				msg := bytes.Repeat([]byte{byte(i)}, 100<<10)
				go func() { _, _ = st.Write(msg) }()
				got := make([]byte, len(msg))
				if _, err := io.ReadFull(st, got); err != nil || !bytes.Equal(got, msg) {
					t.Fatalf("echo over stream %d: %v", i, err)
				}
				_ = st.Close()
			}
		})
	}
}

func TestAgentSeesCallerAddressAndRequest(t *testing.T) {
	rs, as, rerr, aerr := establish(t, connKinds["pipe"], tunnel.RelayConfig{Authorize: acceptAll}, tunnel.AgentConfig{Hello: hello})
	if rerr != nil || aerr != nil {
		t.Fatal(rerr, aerr)
	}
	got := make(chan net.Conn, 1)
	go func() { c, _ := as.Accept(); got <- c }()
	if _, err := rs.Open(t.Context(), &tunnel.Open{Cluster: "prod", Request: "req-1", Client: "198.51.100.9:1234"}); err != nil {
		t.Fatal(err)
	}
	c := <-got
	if c.RemoteAddr().String() != "198.51.100.9:1234" || c.(*tunnel.Stream).Open.Request != "req-1" {
		t.Fatalf("agent saw remote %s, open %+v", c.RemoteAddr(), c.(*tunnel.Stream).Open)
	}
}

func TestAgentRefusesStreamsForAnotherCluster(t *testing.T) {
	rs, as, rerr, aerr := establish(t, connKinds["pipe"], tunnel.RelayConfig{Authorize: acceptAll}, tunnel.AgentConfig{Hello: hello})
	if rerr != nil || aerr != nil {
		t.Fatal(rerr, aerr)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := as.Accept(); err == nil {
			accepted <- c
		}
	}()
	_, err := rs.Open(t.Context(), &tunnel.Open{Cluster: "staging", Request: "r", Client: "c"})
	var ref *tunnel.RefusedError
	if !errors.As(err, &ref) || ref.Reason != tunnel.ReasonClusterMismatch {
		t.Fatalf("Open for another cluster = %v, want a ClusterMismatch refusal", err)
	}
	select {
	case <-accepted:
		t.Fatal("the agent handed a stream for another cluster to its server")
	case <-time.After(200 * time.Millisecond):
	}
}

func TestRelayRefusesAgent(t *testing.T) {
	t.Run("authorize refuses", func(t *testing.T) {
		refuse := func(context.Context, *tunnel.Hello, tls.ConnectionState) error {
			return tunnel.Refuse(tunnel.ReasonRevoked, "credential revoked at 12:00")
		}
		_, _, rerr, aerr := establish(t, connKinds["pipe"], tunnel.RelayConfig{Authorize: refuse}, tunnel.AgentConfig{Hello: hello})
		var ref *tunnel.RefusedError
		if rerr == nil || !errors.As(aerr, &ref) || ref.Reason != tunnel.ReasonRevoked || ref.Message != "credential revoked at 12:00" {
			t.Fatalf("relay %v, agent %v; want both to fail, the agent with the relay's reason", rerr, aerr)
		}
	})
	t.Run("certificate names another cluster", func(t *testing.T) {
		other := hello
		other.Cluster = "staging" // the credential from tlsPair is for prod
		_, _, rerr, aerr := establish(t, tlsPair, tunnel.RelayConfig{Authorize: acceptAll}, tunnel.AgentConfig{Hello: other})
		var ref *tunnel.RefusedError
		if rerr == nil || !errors.As(aerr, &ref) || ref.Reason != tunnel.ReasonClusterMismatch {
			t.Fatalf("relay %v, agent %v; want a ClusterMismatch refusal", rerr, aerr)
		}
	})
	t.Run("an error that is not a refusal refuses as Revoked", func(t *testing.T) {
		fail := func(context.Context, *tunnel.Hello, tls.ConnectionState) error {
			return errors.New("registry unavailable")
		}
		_, _, _, aerr := establish(t, connKinds["pipe"], tunnel.RelayConfig{Authorize: fail}, tunnel.AgentConfig{Hello: hello})
		var ref *tunnel.RefusedError
		if !errors.As(aerr, &ref) || ref.Reason != tunnel.ReasonRevoked {
			t.Fatalf("agent %v, want a Revoked refusal (fail closed)", aerr)
		}
	})
}

func TestRelayHandshakeLimits(t *testing.T) {
	t.Run("silent agent times out", func(t *testing.T) {
		rc, _ := net.Pipe()
		start := time.Now()
		_, err := tunnel.AcceptAgent(t.Context(), rc, tunnel.RelayConfig{Authorize: acceptAll, HandshakeTimeout: 200 * time.Millisecond})
		if err == nil || time.Since(start) > 5*time.Second {
			t.Fatalf("AcceptAgent = %v after %s, want a timeout", err, time.Since(start))
		}
	})
	t.Run("newer protocol version", func(t *testing.T) {
		rc, ac := net.Pipe()
		go func() { _, _ = ac.Write(frame(2, 1, `{"cluster":"prod","agent":"a"}`)) }()
		reply := make(chan *tunnel.Welcome, 1)
		go func() {
			// Skip the echo of nothing: read the Welcome the relay sends back.
			var w tunnel.Welcome
			if err := tunnel.ReadFrame(ac, &w); err == nil {
				reply <- &w
			}
			close(reply)
		}()
		_, err := tunnel.AcceptAgent(t.Context(), rc, tunnel.RelayConfig{Authorize: acceptAll})
		if !errors.Is(err, tunnel.ErrVersion) {
			t.Fatalf("AcceptAgent = %v, want ErrVersion", err)
		}
		if w := <-reply; w == nil || w.Reason != tunnel.ReasonVersion {
			t.Fatalf("agent got %+v, want a Version refusal", w)
		}
	})
}

// TestAgentOpeningStreamsLosesItsSession: the relay refuses streams an
// agent opens and ends the session of one that keeps trying.
func TestAgentOpeningStreamsLosesItsSession(t *testing.T) {
	rc, ac := net.Pipe()
	rogue := make(chan *yamux.Session, 1)
	go func() {
		if err := tunnel.WriteFrame(ac, &hello); err != nil {
			return
		}
		var w tunnel.Welcome
		if err := tunnel.ReadFrame(ac, &w); err != nil {
			return
		}
		s, _ := yamux.Server(ac, tunnel.DefaultYamuxConfig())
		rogue <- s
	}()
	rs, err := tunnel.AcceptAgent(t.Context(), rc, tunnel.RelayConfig{Authorize: acceptAll, MaxRogueStreams: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	agent := <-rogue
	defer agent.Close()
	for range 3 {
		st, err := agent.OpenStream()
		if err != nil {
			break
		}
		_, _ = st.Write([]byte("GET /api/v1/secrets HTTP/1.1\r\n\r\n"))
	}
	select {
	case <-rs.CloseChan():
	case <-time.After(5 * time.Second):
		t.Fatal("the relay kept the session of an agent that opens streams")
	}
}

func TestStreamsEndWhenTheSessionDies(t *testing.T) {
	rs, as, rerr, aerr := establish(t, connKinds["tcp"], tunnel.RelayConfig{Authorize: acceptAll}, tunnel.AgentConfig{Hello: hello})
	if rerr != nil || aerr != nil {
		t.Fatal(rerr, aerr)
	}
	agentSide := make(chan net.Conn, 1)
	go func() { c, _ := as.Accept(); agentSide <- c }()
	st, err := rs.Open(t.Context(), &tunnel.Open{Cluster: "prod", Request: "watch", Client: "c"})
	if err != nil {
		t.Fatal(err)
	}
	ac := <-agentSide
	readErr := make(chan error, 1)
	go func() { _, err := st.Read(make([]byte, 1)); readErr <- err }()
	_ = as.Close() // the agent goes away mid-watch
	select {
	case err := <-readErr:
		if err == nil {
			t.Fatal("read succeeded on a dead session")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a stream of a dead session still blocks after 5s")
	}
	if _, err := ac.Write([]byte("x")); err == nil {
		t.Fatal("the agent's side of the stream is still writable after Close")
	}
}

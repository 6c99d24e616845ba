// Package tunneltest builds in-memory tunnel sessions for tests of the
// packages above the tunnel (the relay's router, the simulator): a relay
// session and an agent session joined by net.Pipe, with real handshakes.
package tunneltest

import (
	"context"
	"crypto/tls"
	"net"
	"testing"

	"github.com/tether-k8s/tether/core/tunnel"
)

// Pair returns the relay's and the agent's ends of a session for an agent
// that says hello, joined by net.Pipe. Both are closed when the test ends.
func Pair(t testing.TB, hello tunnel.Hello) (*tunnel.RelaySession, *tunnel.AgentSession) {
	t.Helper()
	relayEnd, agentEnd := net.Pipe()
	type res struct {
		s   *tunnel.AgentSession
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := tunnel.ConnectAgent(context.Background(), agentEnd, tunnel.AgentConfig{Hello: hello})
		ch <- res{s, err}
	}()
	rs, err := tunnel.AcceptAgent(context.Background(), relayEnd, tunnel.RelayConfig{
		Authorize: func(context.Context, *tunnel.Hello, tls.ConnectionState) error { return nil },
	})
	r := <-ch
	if err != nil || r.err != nil {
		t.Fatalf("tunneltest: handshake: relay %v, agent %v", err, r.err)
	}
	t.Cleanup(func() { _ = rs.Close(); _ = r.s.Close() })
	return rs, r.s
}

// Serve answers every stream of s with reply (then closes it), until s
// ends. It returns when the test ends.
func Serve(t testing.TB, s *tunnel.AgentSession, reply func(st *tunnel.Stream)) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := s.Accept()
			if err != nil {
				return
			}
			go func() { reply(c.(*tunnel.Stream)); _ = c.Close() }()
		}
	}()
	t.Cleanup(func() { _ = s.Close(); <-done })
}

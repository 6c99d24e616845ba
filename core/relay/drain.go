package relay

import (
	"context"
	"time"
)

// Drain prepares the relay to stop without cutting what it carries: it
// refuses new agent sessions with ReasonDraining, sends GoAway on every
// session (agents open replacements; a load balancer sends them to another
// replica), keeps serving callers, and returns once no tunnel is open or
// ctx ends, whichever is first. The caller then stops the servers and closes
// the router, which ends whatever is left.
func (s *Server) Drain(ctx context.Context) {
	s.draining.Store(true)
	var grace time.Duration
	if d, ok := ctx.Deadline(); ok {
		grace = time.Until(d)
	}
	reached := s.cfg.Router.GoAway(ctx, grace, "relay "+s.cfg.RelayID+" is shutting down")
	s.log.Info("relay: draining", "sessionsToldToMove", reached, "openTunnels", s.cfg.Router.Streams(), "grace", grace.Round(time.Millisecond))
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	// Idle pooled connections of the cluster endpoint hold streams: close
	// them, and those that fall idle while draining.
	_ = s.Close()
	for s.cfg.Router.Streams() > 0 {
		_ = s.Close()
		select {
		case <-ctx.Done():
			s.log.Warn("relay: drain timed out; ending the tunnels still open", "openTunnels", s.cfg.Router.Streams())
			return
		case <-t.C:
		}
	}
	s.log.Info("relay: drained: no tunnel open")
}

// Draining reports whether Drain was called: the relay's readiness.
func (s *Server) Draining() bool { return s.draining.Load() }

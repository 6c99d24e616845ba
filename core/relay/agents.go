package relay

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"time"

	"github.com/tether-k8s/tether/core/kstatus"
	"github.com/tether-k8s/tether/core/registry"
	"github.com/tether-k8s/tether/core/tunnel"
	"github.com/tether-k8s/tether/core/version"
)

// agentWebSocket carries an agent's connection over WebSocket: inside it,
// the same mutual TLS and session as on the agent endpoint.
func (s *Server) agentWebSocket(w http.ResponseWriter, r *http.Request) {
	if s.cfg.AgentCertificate == nil {
		kstatus.Write(w, http.StatusNotFound, kstatus.ReasonNotFound, "tether relay: this relay does not accept agents over WebSocket")
		return
	}
	ws, err := tunnel.AcceptWebSocket(w, r)
	if err != nil {
		s.log.Warn("relay: agent WebSocket refused", "client", r.RemoteAddr, "error", err)
		return
	}
	s.log.Debug("relay: agent connected over WebSocket", "client", r.RemoteAddr)
	s.acceptAgent(r.Context(), tls.Server(ws, s.AgentTLSConfig(*s.cfg.AgentCertificate)))
}

// AgentTLSConfig returns the TLS configuration of the agent endpoint: TLS
// 1.3, the relay's certificate, and client certificates required and
// verified against the registry's CA.
func (s *Server) AgentTLSConfig(cert tls.Certificate) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(s.cfg.Registry.CACertificate())
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{tunnel.SessionALPN, tunnel.RenewALPN},
	}
}

// ServeAgents accepts agents' connections on l (a TLS listener with
// AgentTLSConfig) until ctx ends or l fails, and adds each accepted session
// to the router. It closes l and waits for the handshakes in progress.
func (s *Server) ServeAgents(ctx context.Context, l net.Listener) error {
	stop := context.AfterFunc(ctx, func() { _ = l.Close() })
	defer stop()
	defer s.conns.Wait()
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("relay: accept agents: %w", err)
		}
		s.conns.Add(1)
		go func() {
			defer s.conns.Done()
			s.acceptAgent(ctx, conn)
		}()
	}
}

func (s *Server) acceptAgent(ctx context.Context, conn net.Conn) {
	if tc, ok := conn.(*tls.Conn); ok {
		hctx, cancel := context.WithTimeout(ctx, tunnel.DefaultHandshakeTimeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			s.log.Warn("relay: agent TLS handshake failed", "remote", conn.RemoteAddr(), "error", err)
			_ = conn.Close()
			return
		}
		if tc.ConnectionState().NegotiatedProtocol == tunnel.RenewALPN {
			s.renew(tc)
			return
		}
		if s.cfg.WrapAgentConn != nil {
			conn = s.cfg.WrapAgentConn(tc)
		}
	}
	// The credential the session's handshake verified: the router keeps it
	// to cap sessions per credential, end the session when it expires, and
	// check it again when the registry changes.
	var leaf *x509.Certificate
	var slot *Reservation
	sess, err := tunnel.AcceptAgent(ctx, conn, tunnel.RelayConfig{
		Authorize: func(ctx context.Context, h *tunnel.Hello, st tls.ConnectionState) error {
			if err := s.authorizeAgent(ctx, h, st); err != nil {
				return err
			}
			leaf = st.PeerCertificates[0]
			// A slot within the session caps, before the Welcome: an
			// agent over a cap is told so.
			var err error
			if slot, err = s.cfg.Router.Reserve(h.Cluster, leaf); err != nil {
				return tunnel.Refuse(tunnel.ReasonTooManySessions, err.Error())
			}
			return nil
		},
		Session:  newID(),
		Relay:    s.cfg.RelayID,
		Software: "tether-relay " + version.String(),
		// The router's window: its stream caps bound window × streams.
		Yamux:  tunnel.YamuxConfig(s.cfg.Router.StreamWindow()),
		Logger: s.log,
	})
	if err != nil {
		if slot != nil {
			slot.Cancel()
		}
		s.log.Warn("relay: agent refused", "remote", conn.RemoteAddr(), "error", err)
		return
	}
	if s.cfg.OnAgentSession != nil {
		s.cfg.OnAgentSession(sess)
	}
	if err := slot.Add(sess); err != nil {
		s.log.Warn("relay: agent session not routed", "cluster", sess.Hello.Cluster, "agent", sess.Hello.Agent, "error", err)
		_ = sess.Close()
		return
	}
	// The credential was verified before the session was routed; a rotate
	// or delete in between ended the cluster's routed sessions, not this
	// one. Check again now that it is routed, so none slips through.
	if _, err := s.cfg.Registry.VerifyPeer(leaf); err != nil {
		s.log.Warn("relay: agent session ended: its credential was revoked while it connected", "cluster", sess.Hello.Cluster, "agent", sess.Hello.Agent, "error", err)
		_ = sess.Close()
	}
}

// renew answers one Renew on conn with a new certificate for the cluster
// the agent's current (verified, listed) certificate names.
func (s *Server) renew(conn *tls.Conn) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(tunnel.DefaultHandshakeTimeout))
	var req tunnel.Renew
	if err := tunnel.ReadFrame(conn, &req); err != nil {
		s.log.Warn("relay: bad renewal request", "remote", conn.RemoteAddr(), "error", err)
		return
	}
	peer := conn.ConnectionState().PeerCertificates
	if len(peer) == 0 {
		_ = tunnel.WriteFrame(conn, &tunnel.Renewed{Reason: tunnel.ReasonRevoked, Message: "no client certificate"})
		return
	}
	cred, err := s.cfg.Registry.Renew(peer[0], req.CSR)
	if err != nil {
		reason := tunnel.ReasonRevoked
		switch {
		case errors.Is(err, registry.ErrBadCSR):
			reason = tunnel.ReasonBadRequest
		case errors.Is(err, registry.ErrStoreUnavailable):
			reason = tunnel.ReasonUnavailable
		}
		s.cfg.Metrics.renewal(false)
		s.log.Warn("relay: renewal refused", "remote", conn.RemoteAddr(), "error", err)
		_ = tunnel.WriteFrame(conn, &tunnel.Renewed{Reason: reason, Message: err.Error()})
		return
	}
	s.cfg.Metrics.renewal(true)
	s.log.Info("relay: agent credential renewed", "cluster", cred.ClusterID, "notAfter", cred.NotAfter, "remote", conn.RemoteAddr())
	if err := tunnel.WriteFrame(conn, &tunnel.Renewed{OK: true, Certificate: string(cred.CertPEM)}); err != nil {
		s.log.Warn("relay: renewal answer not delivered; the agent will retry", "cluster", cred.ClusterID, "error", err)
	}
	// The renewal superseded the presenting credential: its sessions
	// move (the registry's change feed says so too, on every replica).
	if n := s.cfg.Router.Revalidate(cred.ClusterID); n > 0 {
		s.log.Info("relay: sessions on superseded credentials told to move", "cluster", cred.ClusterID, "sessions", n)
	}
}

// authorizeAgent accepts an agent whose certificate the registry lists as
// current for the very cluster its Hello names.
func (s *Server) authorizeAgent(_ context.Context, h *tunnel.Hello, st tls.ConnectionState) error {
	if s.draining.Load() {
		return tunnel.Refuse(tunnel.ReasonDraining, "relay "+s.cfg.RelayID+" is shutting down; connect to another replica or retry")
	}
	if len(st.PeerCertificates) == 0 {
		return tunnel.Refuse(tunnel.ReasonRevoked, "no client certificate")
	}
	id, err := s.cfg.Registry.VerifyPeer(st.PeerCertificates[0])
	if err != nil {
		return tunnel.Refuse(tunnel.ReasonRevoked, err.Error())
	}
	if id != h.Cluster {
		return tunnel.Refuse(tunnel.ReasonClusterMismatch, fmt.Sprintf("the certificate is for cluster %s, not %s", id, h.Cluster))
	}
	// An agent's sessions go to different replicas, so that one
	// replica's restart leaves it connected.
	if s.cfg.OtherReplicas != nil && (slices.Contains(h.Avoid, s.cfg.RelayID) || h.Spread && s.cfg.Router.HoldsAgent(h.Cluster, h.Agent, h.Slot)) &&
		s.cfg.OtherReplicas() > 0 {
		return tunnel.Refuse(tunnel.ReasonElsewhere, s.cfg.RelayID)
	}
	return nil
}

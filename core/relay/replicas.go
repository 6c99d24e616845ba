package relay

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/tether-k8s/tether/core/kstatus"
	"github.com/tether-k8s/tether/core/relay/mesh"
	"github.com/tether-k8s/tether/core/tunnel"
	"github.com/tether-k8s/tether/core/version"
)

// Defaults of PeerOptions.
const (
	// DefaultPeerPort is the port of the replica-to-replica endpoint.
	DefaultPeerPort = 8445
	// PeerCertificateValidity is how long a replica's peer certificate is
	// valid; it issues itself a new one at half of it.
	PeerCertificateValidity = 24 * time.Hour
)

// PeerOptions make a relay on etcd one replica of several: it publishes
// itself and its routes in etcd, and forwards a caller's stream to the
// replica holding a session of the cluster (core/relay/mesh).
type PeerOptions struct {
	// Addr is where the replica-to-replica endpoint listens (mutual TLS
	// with peer certificates from the relay's CA). Required.
	Addr string
	// Advertise is the host:port the other replicas dial to reach Addr (a
	// pod's IP, a host's private address). Required. Port 0 means the
	// port Addr listens on.
	Advertise string
	// LeaseTTL: see mesh.Config. Zero means mesh.DefaultLeaseTTL.
	LeaseTTL time.Duration
	// Shuffle: see mesh.Config (the simulator's seeded source). Nil means
	// math/rand/v2's.
	Shuffle func(n int, swap func(i, j int))
}

// Validate reports the first problem with p.
func (p *PeerOptions) Validate() error {
	if p.Addr == "" || p.Advertise == "" {
		return errors.New("relay: Options.Peer needs Addr and Advertise (--peer-listen, --peer-advertise): where this replica's peer endpoint listens, and the host:port the other replicas dial")
	}
	if _, _, err := net.SplitHostPort(p.Advertise); err != nil {
		return fmt.Errorf("relay: Options.Peer.Advertise %q: want host:port (--peer-advertise): %w", p.Advertise, err)
	}
	return nil
}

// startMesh joins this relay to the other replicas on the registry's etcd:
// a peer certificate of its own, renewed at half its life, its presence and
// routes, and the peer endpoint on l. It returns what the router forwards
// through.
func (r *Relay) startMesh(ctx context.Context, l net.Listener) (*meshRemote, error) {
	cli, prefix, ok := r.reg.Etcd()
	if !ok {
		return nil, errors.New("relay: Options.Peer needs the registry on etcd (--store etcd): replicas find each other there")
	}
	advertise := r.opts.Peer.Advertise
	if host, port, _ := net.SplitHostPort(advertise); port == "0" {
		if ta, ok := l.Addr().(*net.TCPAddr); ok {
			advertise = net.JoinHostPort(host, fmt.Sprint(ta.Port))
		}
	}
	mr := &meshRemote{r: r}
	if err := mr.renewCertificate(); err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AddCert(r.reg.CACertificate())
	m, err := mesh.Start(ctx, mesh.Config{
		Client: cli, Prefix: prefix,
		Self:        mesh.Replica{ID: r.opts.RelayID, PeerAddr: advertise, Software: "tether-relay " + version.String()},
		LeaseTTL:    r.opts.Peer.LeaseTTL,
		Certificate: func() (*tls.Certificate, error) { return mr.cert.Load(), nil },
		Roots:       roots,
		Local: func(cluster string) int {
			if rt := mr.router.Load(); rt != nil {
				return rt.Sessions(cluster)
			}
			return 0
		},
		Handle:  func(ctx context.Context, req *mesh.Request, st net.Conn) { r.srv.forwarded(ctx, req, st) },
		Window:  r.opts.Router.StreamWindow,
		Dial:    r.opts.DialContext,
		Shuffle: r.opts.Peer.Shuffle,
		Logger:  r.log,
	})
	if err != nil {
		return nil, err
	}
	mr.mesh = m
	r.serve("peer endpoint", func() error { return m.Serve(l) })
	r.serve("peer certificate renewal", func() error {
		t := time.NewTicker(PeerCertificateValidity / 2)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
				if err := mr.renewCertificate(); err != nil {
					r.log.Error("relay: peer certificate not renewed; the other replicas refuse this one once it expires", "error", err)
				}
			}
		}
	})
	return mr, nil
}

// meshRemote is the router's Remote on the mesh.
type meshRemote struct {
	r      *Relay
	mesh   *mesh.Mesh
	router atomic.Pointer[Router]
	cert   atomic.Pointer[tls.Certificate]
}

func (m *meshRemote) renewCertificate() error {
	c, err := m.r.reg.PeerCertificate(m.r.opts.RelayID, PeerCertificateValidity)
	if err != nil {
		return err
	}
	m.cert.Store(&c)
	return nil
}

// Forward implements Remote.
func (m *meshRemote) Forward(ctx context.Context, o *tunnel.Open, owner StreamOwner) (net.Conn, error) {
	st, err := m.mesh.Forward(ctx, &mesh.Request{Cluster: o.Cluster, Request: o.Request, Client: o.Client,
		Identity: owner.Identity, Audiences: owner.Audiences, Expires: owner.Expires})
	var ref *mesh.RefusedError
	switch {
	case err == nil:
		return st, nil
	case errors.As(err, &ref) && ref.Reason != mesh.ReasonNotConnected:
		return nil, &ForwardRefusedError{Replica: ref.Replica, Code: ref.Code, Reason: ref.Reason,
			Message: fmt.Sprintf("%s (at replica %s)", ref.Message, ref.Replica)}
	case errors.Is(err, mesh.ErrStaleRoute):
		return nil, fmt.Errorf("%w: %w", ErrNoRemoteSession, err)
	case errors.Is(err, mesh.ErrNoRoute):
		return nil, ErrNoRemoteSession
	}
	return nil, err
}

// Sessions implements Remote.
func (m *meshRemote) Sessions(cluster string) int { return m.mesh.Sessions(cluster) }

// Changed implements Remote.
func (m *meshRemote) Changed(cluster string) { m.mesh.Changed(cluster) }

// forwarded serves a stream another replica forwarded: it opens a stream on
// one of this replica's own sessions of the cluster (never forwarding it
// again), answers, and splices. The entry replica authenticated the caller
// and checked the cluster's policy; this one applies its own caps, keeps
// whom the stream is for (a policy change or the token's expiry ends it
// here too), and the agent authenticates every request itself.
func (s *Server) forwarded(ctx context.Context, req *mesh.Request, st net.Conn) {
	start := time.Now()
	owner := StreamOwner{Identity: req.Identity, Audiences: req.Audiences, Expires: req.Expires}
	if !req.Expires.IsZero() && !req.Expires.After(time.Now()) {
		_ = mesh.Refuse(st, http.StatusUnauthorized, kstatus.ReasonUnauthorized, "the caller's token expired")
		return
	}
	a, err := s.cfg.Router.OpenLocal(ctx, &tunnel.Open{Cluster: req.Cluster, Request: req.Request, Client: req.Client, User: req.Identity.User}, owner)
	if err != nil {
		code, reason := StatusOf(err)
		var nc *NotConnectedError
		if errors.As(err, &nc) {
			reason = mesh.ReasonNotConnected
		}
		s.log.Info("relay: forwarded tunnel not opened", "cluster", req.Cluster, "request", req.Request, "from", req.From, "error", err)
		_ = mesh.Refuse(st, code, reason, err.Error())
		return
	}
	defer a.Close()
	if err := mesh.Accept(st); err != nil {
		return
	}
	s.audit.Info("relay: forwarded tunnel opened", "request", req.Request, "cluster", req.Cluster, "user", req.Identity.User, "client", req.Client, "from", req.From)
	in, out := splice(st, a)
	s.cfg.Metrics.spliced(in, out)
	s.audit.Info("relay: forwarded tunnel", "request", req.Request, "cluster", req.Cluster, "user", req.Identity.User, "client", req.Client, "from", req.From,
		"bytesIn", in, "bytesOut", out, "durationMs", time.Since(start).Milliseconds())
}

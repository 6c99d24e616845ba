package mesh

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tether-k8s/tether/core/clustercert"
	"github.com/tether-k8s/tether/core/clusterid"
	"github.com/tether-k8s/tether/core/identity"
	"github.com/tether-k8s/tether/core/tunnel"
)

// PeerALPN is the ALPN protocol of the replica-to-replica endpoint.
const PeerALPN = "tether-peer/1"

// maxFrame bounds a Request or Reply (a caller with a thousand groups is
// about 13 KiB).
const maxFrame = 64 << 10

// Request is what the replica a caller landed on sends the owner of a
// session, first on the stream: the caller it authenticated and admitted.
// The owner trusts it because only replicas hold peer certificates; the
// agent still authenticates every request of the caller itself.
type Request struct {
	// Cluster is the cluster the caller asked for.
	Cluster string `json:"cluster"`
	// Request is the entry replica's request ID (its audit lines and the
	// agent's share it).
	Request string `json:"request"`
	// Client is the caller's address as the entry replica saw it.
	Client string `json:"client"`
	// Identity is the caller as the entry replica's authenticator mapped
	// it; the owner keeps it to end the stream when a policy change no
	// longer admits it.
	Identity identity.Identity `json:"identity"`
	// Audiences are the audiences of the caller's token.
	Audiences []string `json:"audiences,omitempty"`
	// Expires is when the caller's token expires: the owner ends the
	// stream then. Zero: never.
	Expires time.Time `json:"expires,omitzero"`
	// From is the entry replica's ID, for logs (its certificate names it
	// too; the owner logs that one).
	From string `json:"from,omitempty"`
}

// validate refuses a request no honest replica sends.
func (r *Request) validate() error {
	if err := clusterid.Validate(r.Cluster); err != nil {
		return err
	}
	if r.Identity.User == "" {
		return errors.New("no caller")
	}
	return nil
}

// Reply is the owner's answer to a Request. After an OK reply the stream
// carries the caller's bytes both ways.
type Reply struct {
	// OK is true when the owner opened a stream to the agent.
	OK bool `json:"ok"`
	// Code, Reason and Message are the refusal, as the owner would have
	// answered the caller itself (an HTTP status, a Kubernetes Status
	// reason, and what to do).
	Code    int    `json:"code,omitempty"`
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
}

// ReasonNotConnected is the Reply reason of an owner that holds no session
// of the cluster any more: the entry replica tries another owner.
const ReasonNotConnected = "NotConnected"

// RefusedError is a Reply that refused, returned by Forward.
type RefusedError struct {
	Replica string
	Reply
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("replica %s: %s", e.Replica, e.Message)
}

// ErrNoRoute is wrapped by Forward when no other replica holds a session of
// the cluster (or none that could be reached).
var ErrNoRoute = errors.New("no replica holds a session of the cluster")

// ErrStaleRoute is wrapped by Forward, with ErrNoRoute, when the replicas
// the table named could not serve the stream (gone, or without a session
// any more).
var ErrStaleRoute = errors.New("the replicas the route table named could not serve it")

func writeFrame(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(b) > maxFrame {
		return fmt.Errorf("mesh: frame of %d bytes, more than %d", len(b), maxFrame)
	}
	buf := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(b)), uint32(len(b)))
	_, err = w.Write(append(buf, b...))
	return err
}

func readFrame(r io.Reader, v any) error {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > maxFrame {
		return fmt.Errorf("mesh: frame of %d bytes, more than %d", n, maxFrame)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// Accept answers a forwarded stream's Request with OK: the caller's bytes
// follow.
func Accept(stream net.Conn) error { return writeFrame(stream, &Reply{OK: true}) }

// Refuse answers a forwarded stream's Request with a refusal.
func Refuse(stream net.Conn, code int, reason, message string) error {
	return writeFrame(stream, &Reply{Code: code, Reason: reason, Message: message})
}

// serverTLS is the peer endpoint's TLS: only another replica's peer
// certificate is accepted.
func (m *Mesh) serverTLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{PeerALPN},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return m.cfg.Certificate()
		},
		ClientAuth: tls.RequireAnyClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := clustercert.VerifyRelayPeer(m.cfg.Roots, cs.PeerCertificates, x509.ExtKeyUsageClientAuth, "")
			return err
		},
	}
}

// clientTLS is the TLS to peer want: its certificate must name it.
func (m *Mesh) clientTLS(want string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{PeerALPN},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return m.cfg.Certificate()
		},
		// Verified by VerifyConnection, against the relay's CA and the
		// replica's ID, not a host name.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := clustercert.VerifyRelayPeer(m.cfg.Roots, cs.PeerCertificates, x509.ExtKeyUsageServerAuth, want)
			return err
		},
	}
}

// Serve accepts peers on l until Close or l fails, and serves each
// forwarded stream with Config.Handle. It closes l and waits for its
// connections.
func (m *Mesh) Serve(l net.Listener) error {
	if m.cfg.Handle == nil {
		return errors.New("mesh: Config.Handle is nil")
	}
	stop := context.AfterFunc(m.ctx, func() { _ = l.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	tl := tls.NewListener(l, m.serverTLS())
	for {
		conn, err := tl.Accept()
		if err != nil {
			if m.ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("mesh: accept peers: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.servePeer(conn.(*tls.Conn), &wg)
		}()
	}
}

func (m *Mesh) servePeer(conn *tls.Conn, wg *sync.WaitGroup) {
	hctx, cancel := context.WithTimeout(m.ctx, DefaultDialTimeout)
	err := conn.HandshakeContext(hctx)
	cancel()
	if err != nil {
		m.log.Warn("mesh: peer refused", "remote", conn.RemoteAddr(), "error", err)
		_ = conn.Close()
		return
	}
	peer, _ := clustercert.RelayID(conn.ConnectionState().PeerCertificates[0])
	sess, err := yamux.Server(conn, m.yamuxConfig())
	if err != nil {
		_ = conn.Close()
		return
	}
	stop := context.AfterFunc(m.ctx, func() { _ = sess.Close() })
	defer stop()
	defer sess.Close()
	for {
		st, err := sess.Accept()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer st.Close()
			_ = st.SetDeadline(time.Now().Add(DefaultOpenTimeout))
			var req Request
			if err := readFrame(st, &req); err != nil {
				m.log.Warn("mesh: bad request from a peer", "peer", peer, "error", err)
				return
			}
			if err := req.validate(); err != nil {
				m.log.Warn("mesh: bad request from a peer", "peer", peer, "error", err)
				_ = Refuse(st, http.StatusBadRequest, "BadRequest", "tether relay: replica "+m.cfg.Self.ID+": bad forwarded request: "+err.Error())
				return
			}
			req.From = peer
			_ = st.SetDeadline(time.Time{})
			m.cfg.Handle(m.ctx, &req, st)
		}()
	}
}

func (m *Mesh) yamuxConfig() *yamux.Config { return tunnel.YamuxConfig(m.cfg.Window) }

// Forward opens a stream for req to a replica holding a session of
// req.Cluster and returns it once that replica answered OK. A refusal by
// the owner's agent or caps comes back as a *RefusedError; a route that
// turned out stale (owner unreachable or without a session now) is tried
// once more, against another owner, once the table changed or
// Config.RetryWait passed. With no route at all it returns ErrNoRoute at
// once.
func (m *Mesh) Forward(ctx context.Context, req *Request) (net.Conn, error) {
	req.From = m.cfg.Self.ID
	var tried []string
	var errs []error
	for round := 0; round < 2; round++ {
		owners, changed := m.owners(req.Cluster, tried)
		if len(owners) == 0 && round == 1 && len(tried) > 0 {
			// Wait for the table to change (a replacement session
			// published), within RetryWait, then look once more.
			t := time.NewTimer(m.cfg.RetryWait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, ctx.Err()
			case <-changed:
			case <-t.C:
			}
			t.Stop()
			owners, _ = m.owners(req.Cluster, tried)
		}
		if len(owners) == 0 {
			break
		}
		o := owners[0]
		tried = append(tried, o.ID)
		conn, err := m.open(ctx, o, req)
		if err == nil {
			return conn, nil
		}
		var ref *RefusedError
		if errors.As(err, &ref) && ref.Reason != ReasonNotConnected {
			return nil, err
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		m.log.Info("mesh: stale route; trying again", "cluster", req.Cluster, "replica", o.ID, "error", err)
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("%w %s", ErrNoRoute, req.Cluster)
	}
	return nil, fmt.Errorf("%w %s: %w: %w", ErrNoRoute, req.Cluster, ErrStaleRoute, errors.Join(errs...))
}

// open sends req to replica o on a pooled session and waits for its Reply.
func (m *Mesh) open(ctx context.Context, o Replica, req *Request) (net.Conn, error) {
	sess, err := m.pool.get(ctx, o)
	if err != nil {
		return nil, err
	}
	st, err := sess.OpenStream()
	if err != nil {
		m.pool.drop(o.ID, sess)
		return nil, fmt.Errorf("mesh: open a stream to replica %s: %w", o.ID, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = st.Close() })
	defer stop()
	_ = st.SetDeadline(time.Now().Add(DefaultOpenTimeout))
	if err := writeFrame(st, req); err != nil {
		_ = st.Close()
		return nil, fmt.Errorf("mesh: send the request to replica %s: %w", o.ID, err)
	}
	var rep Reply
	if err := readFrame(st, &rep); err != nil {
		_ = st.Close()
		return nil, fmt.Errorf("mesh: replica %s did not answer: %w", o.ID, err)
	}
	if !rep.OK {
		_ = st.Close()
		return nil, &RefusedError{Replica: o.ID, Reply: rep}
	}
	_ = st.SetDeadline(time.Time{})
	return st, nil
}

// peerPool keeps one yamux session per peer replica.
type peerPool struct {
	m        *Mesh
	mu       sync.Mutex
	sessions map[string]*yamux.Session
	closed   bool
}

func (p *peerPool) get(ctx context.Context, o Replica) (*yamux.Session, error) {
	p.mu.Lock()
	if s := p.sessions[o.ID]; s != nil && !s.IsClosed() {
		p.mu.Unlock()
		return s, nil
	}
	p.mu.Unlock()
	dctx, cancel := context.WithTimeout(ctx, DefaultDialTimeout)
	defer cancel()
	raw, err := p.m.cfg.Dial(dctx, "tcp", o.PeerAddr)
	if err != nil {
		return nil, fmt.Errorf("mesh: dial replica %s at %s: %w", o.ID, o.PeerAddr, err)
	}
	conn := tls.Client(raw, p.m.clientTLS(o.ID))
	if err := conn.HandshakeContext(dctx); err != nil {
		_ = raw.Close()
		return nil, fmt.Errorf("mesh: TLS with replica %s at %s: %w", o.ID, o.PeerAddr, err)
	}
	s, err := yamux.Client(conn, p.m.yamuxConfig())
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("mesh: session with replica %s: %w", o.ID, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		_ = s.Close()
		return nil, errors.New("mesh: closed")
	}
	if old := p.sessions[o.ID]; old != nil && !old.IsClosed() {
		_ = s.Close()
		return old, nil
	}
	if p.sessions == nil {
		p.sessions = map[string]*yamux.Session{}
	}
	p.sessions[o.ID] = s
	return s, nil
}

func (p *peerPool) drop(id string, s *yamux.Session) {
	p.mu.Lock()
	if p.sessions[id] == s {
		delete(p.sessions, id)
	}
	p.mu.Unlock()
	_ = s.Close()
}

func (p *peerPool) close() {
	p.mu.Lock()
	p.closed = true
	ss := p.sessions
	p.sessions = nil
	p.mu.Unlock()
	for _, s := range ss {
		_ = s.Close()
	}
}

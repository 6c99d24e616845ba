package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// RefusedError is a refusal by the peer: a Welcome or OpenReply that was not
// OK. Reason is one of the Reason constants.
type RefusedError struct {
	Frame   FrameType
	Reason  string
	Message string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("tunnel: %s refused: %s: %s", e.Frame, e.Reason, e.Message)
}

// Refuse returns the error an Authorize function gives to refuse a session
// with reason (a Reason constant) and a message for the agent's operator.
func Refuse(reason, message string) error {
	return &RefusedError{Frame: FrameWelcome, Reason: reason, Message: message}
}

// Defaults for the session configurations' zero values.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultOpenTimeout      = 10 * time.Second
	DefaultMaxRogueStreams  = 8
	// DefaultMaxPendingOpens is the relay's own default cap on one
	// cluster's open streams (1,024). An honest relay writes each Open right
	// after opening its stream, so streams wait for milliseconds; a burst
	// of 1,000 concurrent opens had a few hundred waiting at once.
	DefaultMaxPendingOpens = 1024
)

// DefaultStreamWindow is the yamux stream window both ends use when none is
// given: how many bytes a peer may send on one stream before the other end
// has read them. It bounds a stream's throughput to a window per round trip
// (4 MiB per 50 ms is 84 MB/s) and what the receiver may have to hold for a
// stream whose reader is slow (the relay, for a caller that reads slowly:
// the relay's router caps its streams so that window × streams stays
// within its stream memory, docs/performance.md).
const DefaultStreamWindow = 4 << 20

// MinStreamWindow is the smallest stream window yamux accepts (its initial
// window, 256 KiB).
const MinStreamWindow = 256 << 10

// DefaultYamuxConfig is the yamux configuration both sides use when none is
// given: yamux's defaults with keepalives every 15 s, so a dead peer is
// noticed and idle sessions survive NAT and proxy timeouts, and a stream
// window of DefaultStreamWindow.
func DefaultYamuxConfig() *yamux.Config { return YamuxConfig(0) }

// YamuxConfig is DefaultYamuxConfig with a stream window of window bytes;
// zero means DefaultStreamWindow. yamux refuses a configuration whose
// window is below MinStreamWindow.
func YamuxConfig(window uint32) *yamux.Config {
	c := yamux.DefaultConfig()
	c.EnableKeepAlive = true
	c.KeepAliveInterval = 15 * time.Second
	c.MaxStreamWindowSize = DefaultStreamWindow
	if window != 0 {
		c.MaxStreamWindowSize = window
	}
	c.LogOutput = nil
	c.Logger = discardYamuxLogger{}
	return c
}

type discardYamuxLogger struct{}

func (discardYamuxLogger) Print(...any)          {}
func (discardYamuxLogger) Printf(string, ...any) {}
func (discardYamuxLogger) Println(...any)        {}

// RelayConfig configures the relay's side of a session.
type RelayConfig struct {
	// Authorize decides whether the agent may hold a session: it checks the
	// Hello against the TLS state (the peer's cluster credential). Return
	// Refuse(...) to refuse with a reason the agent sees; any other error
	// refuses with ReasonRevoked. Required.
	Authorize func(ctx context.Context, h *Hello, state tls.ConnectionState) error
	// Session and Relay are IDs sent in the Welcome, for logs.
	Session, Relay string
	// Software is the relay's version, sent in the Welcome for the
	// agent's logs.
	Software string
	// HandshakeTimeout bounds the TLS handshake and the Hello. Zero means
	// DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// OpenTimeout bounds the agent's OpenReply to each stream. Zero means
	// DefaultOpenTimeout.
	OpenTimeout time.Duration
	// MaxRogueStreams is how many streams the agent may open (it never
	// should) before the relay ends the session. Zero means
	// DefaultMaxRogueStreams.
	MaxRogueStreams int
	// Yamux configures the multiplexer. Nil means DefaultYamuxConfig().
	Yamux *yamux.Config
	// Logger receives session events. Nil discards.
	Logger *slog.Logger
}

// RelaySession is the relay's end of an agent's session.
type RelaySession struct {
	// Hello is what the agent said, after Authorize accepted it.
	Hello    Hello
	mux      *yamux.Session
	guard    *frameGuard
	cfg      RelayConfig
	log      *slog.Logger
	done     sync.WaitGroup
	draining atomic.Bool
	closeMu  sync.Mutex
	ended    bool     // the session's goroutine has seen it end
	onClose  []func() // AfterClose's functions
}

// AcceptAgent runs the relay's side of the handshake on conn (a *tls.Conn,
// whose handshake it completes, or any net.Conn in tests) and returns the
// session. On error conn is closed.
func AcceptAgent(ctx context.Context, conn net.Conn, cfg RelayConfig) (_ *RelaySession, err error) {
	if err := cfg.Validate(); err != nil {
		_ = conn.Close()
		return nil, err
	}
	cfg = cfg.withDefaults()
	defer func() {
		if err != nil {
			_ = conn.Close()
		}
	}()
	_ = conn.SetDeadline(time.Now().Add(cfg.HandshakeTimeout))
	state, err := handshakeTLS(ctx, conn)
	if err != nil {
		return nil, err
	}
	var hello Hello
	if err := ReadFrame(conn, &hello); err != nil {
		if errors.Is(err, ErrVersion) {
			_ = WriteFrame(conn, &Welcome{Reason: ReasonVersion, Message: fmt.Sprintf("this relay speaks protocol version %d", Version)})
		}
		return nil, fmt.Errorf("tunnel: agent handshake: %w", err)
	}
	if err := cfg.Authorize(ctx, &hello, state); err != nil {
		var ref *RefusedError
		if !errors.As(err, &ref) {
			ref = &RefusedError{Reason: ReasonRevoked, Message: "the agent's credential was not accepted"}
		}
		_ = WriteFrame(conn, &Welcome{Reason: ref.Reason, Message: ref.Message})
		return nil, fmt.Errorf("tunnel: agent %s for cluster %s refused: %w", hello.Agent, hello.Cluster, err)
	}
	if err := WriteFrame(conn, &Welcome{OK: true, Session: cfg.Session, Relay: cfg.Relay, Software: cfg.Software}); err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	log := cfg.Logger.With("cluster", hello.Cluster, "agent", hello.Agent, "slot", hello.Slot, "session", cfg.Session)
	guarded := newFrameGuard(conn, guardConfig{peer: "agent", peerParity: 0, maxOpens: cfg.MaxRogueStreams,
		endOnGoAway: true, maxData: cfg.Yamux.MaxStreamWindowSize, log: log})
	mux, err := yamux.Client(guarded, cfg.Yamux)
	if err != nil {
		return nil, fmt.Errorf("tunnel: start session: %w", err)
	}
	s := &RelaySession{Hello: hello, mux: mux, guard: guarded, cfg: cfg, log: log}
	s.done.Add(1)
	go s.refuseAgentStreams()
	s.log.Info("tunnel: agent session established")
	return s, nil
}

// handshakeTLS completes the TLS handshake if conn is TLS and returns its
// state; for other connections (tests) it returns the zero state, which
// Authorize refuses in production (no peer certificate).
func handshakeTLS(ctx context.Context, conn net.Conn) (tls.ConnectionState, error) {
	if hc, ok := conn.(interface{ HandshakeContext(context.Context) error }); ok {
		if err := hc.HandshakeContext(ctx); err != nil {
			return tls.ConnectionState{}, fmt.Errorf("tunnel: TLS handshake: %w", err)
		}
	}
	// A *tls.Conn, or a wrapper of one that reports its state (the relay's
	// ServerConfig.WrapAgentConn).
	if sc, ok := conn.(interface{ ConnectionState() tls.ConnectionState }); ok {
		return sc.ConnectionState(), nil
	}
	return tls.ConnectionState{}, nil
}

// refuseAgentStreams resets every stream the agent opens; an agent that
// keeps opening them loses its session.
func (s *RelaySession) refuseAgentStreams() {
	defer s.done.Done()
	defer s.runAfterClose()
	for n := 1; ; n++ {
		st, err := s.mux.AcceptStream()
		if err != nil {
			return
		}
		_ = st.Close()
		s.log.Warn("tunnel: agent opened a stream toward the relay; refused", "count", n)
		if n >= s.cfg.MaxRogueStreams {
			s.log.Warn("tunnel: ending the session of an agent that keeps opening streams")
			_ = s.mux.Close()
			return
		}
	}
}

// AfterClose calls f once the session has ended: at once, in the caller's
// goroutine, if it already has; otherwise in the session's own goroutine,
// before Close returns. It costs no goroutine of its own (the relay holds
// many idle sessions).
func (s *RelaySession) AfterClose(f func()) {
	s.closeMu.Lock()
	if s.ended {
		s.closeMu.Unlock()
		f()
		return
	}
	s.onClose = append(s.onClose, f)
	s.closeMu.Unlock()
}

func (s *RelaySession) runAfterClose() {
	s.closeMu.Lock()
	s.ended = true
	fs := s.onClose
	s.onClose = nil
	s.closeMu.Unlock()
	for _, f := range fs {
		f()
	}
}

// Open opens a stream to the agent for a caller's request and returns it
// once the agent accepted it. A refusal is a *RefusedError.
func (s *RelaySession) Open(ctx context.Context, o *Open) (net.Conn, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	st, err := s.mux.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("tunnel: open stream to cluster %s: %w", s.Hello.Cluster, err)
	}
	deadline := time.Now().Add(s.cfg.OpenTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = st.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = st.Close() })
	defer stop()
	if err := WriteFrame(st, o); err != nil {
		_ = st.Close()
		return nil, err
	}
	var reply OpenReply
	if err := ReadFrame(st, &reply); err != nil {
		_ = st.Close()
		return nil, fmt.Errorf("tunnel: open stream to cluster %s: %w", s.Hello.Cluster, errors.Join(err, ctx.Err()))
	}
	if !reply.OK {
		_ = st.Close()
		return nil, &RefusedError{Frame: FrameOpenReply, Reason: reply.Reason, Message: reply.Message}
	}
	_ = st.SetDeadline(time.Time{})
	return deadlineConn{st}, nil
}

// GoAway tells the agent that this relay is draining (see GoAway): the
// agent opens a replacement session elsewhere and this session gets no new
// stream from the router. The streams on it keep running until they end or
// the session is closed, which the caller does after grace at most.
func (s *RelaySession) GoAway(ctx context.Context, grace time.Duration, message string) error {
	if s.draining.Swap(true) {
		return nil
	}
	st, err := s.mux.OpenStream()
	if err != nil {
		return fmt.Errorf("tunnel: send GoAway to cluster %s: %w", s.Hello.Cluster, err)
	}
	defer st.Close()
	deadline := time.Now().Add(s.cfg.OpenTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = st.SetDeadline(deadline)
	if err := WriteFrame(st, &GoAway{Reason: ReasonDraining, Message: message, GraceMillis: grace.Milliseconds()}); err != nil {
		return fmt.Errorf("tunnel: send GoAway to cluster %s: %w", s.Hello.Cluster, err)
	}
	s.log.Info("tunnel: told the agent to move (GoAway)", "grace", grace)
	return nil
}

// Draining reports whether GoAway was sent on this session.
func (s *RelaySession) Draining() bool { return s.draining.Load() }

// NumStreams returns the number of open streams.
func (s *RelaySession) NumStreams() int { return s.mux.NumStreams() }

// CloseChan is closed when the session ends.
func (s *RelaySession) CloseChan() <-chan struct{} { return s.mux.CloseChan() }

// Close ends the session and every stream on it, and waits for the
// session's goroutines.
func (s *RelaySession) Close() error {
	err := s.mux.Close()
	s.done.Wait()
	return err
}

// AgentConfig configures the agent's side of a session.
type AgentConfig struct {
	// Hello is what the agent says about itself. Required.
	Hello Hello
	// HandshakeTimeout bounds the TLS handshake and the Welcome, and each
	// stream's Open. Zero means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// MaxPendingOpens is how many of the relay's streams may wait for
	// their Open at once: the agent accepts no more until one has sent it
	// (yamux resets those beyond its accept backlog of 256), so that a relay
	// opening streams it never uses cannot make the agent hold a goroutine
	// for each. Zero means DefaultMaxPendingOpens.
	MaxPendingOpens int
	// Yamux configures the multiplexer. Nil means DefaultYamuxConfig().
	Yamux *yamux.Config
	// Logger receives session events. Nil discards.
	Logger *slog.Logger
}

// AgentSession is the agent's end of a session. It is a net.Listener whose
// connections are the streams the relay opened for callers and the agent
// accepted, so an http.Server can serve it.
type AgentSession struct {
	// Welcome is the relay's answer to the Hello.
	Welcome Welcome
	mux     *yamux.Session
	guard   *frameGuard
	cfg     AgentConfig
	log     *slog.Logger
	streams chan *Stream
	closed  chan struct{}
	once    sync.Once
	done    sync.WaitGroup
	goAway  chan struct{}
	goOnce  sync.Once
	goMsg   GoAway
	pending chan struct{} // a slot per stream waiting for its Open
	peak    atomic.Int64  // the most streams waiting at once (tests)
}

// ConnectAgent runs the agent's side of the handshake on conn and returns the
// session. A refusal by the relay is a *RefusedError. On error conn is
// closed.
func ConnectAgent(ctx context.Context, conn net.Conn, cfg AgentConfig) (_ *AgentSession, err error) {
	if err := cfg.Validate(); err != nil {
		_ = conn.Close()
		return nil, err
	}
	cfg = cfg.withDefaults()
	defer func() {
		if err != nil {
			_ = conn.Close()
		}
	}()
	_ = conn.SetDeadline(time.Now().Add(cfg.HandshakeTimeout))
	if _, err := handshakeTLS(ctx, conn); err != nil {
		return nil, err
	}
	if err := WriteFrame(conn, &cfg.Hello); err != nil {
		return nil, err
	}
	var w Welcome
	if err := ReadFrame(conn, &w); err != nil {
		return nil, fmt.Errorf("tunnel: relay handshake: %w", err)
	}
	if !w.OK {
		return nil, &RefusedError{Frame: FrameWelcome, Reason: w.Reason, Message: w.Message}
	}
	_ = conn.SetDeadline(time.Time{})
	log := cfg.Logger.With("session", w.Session, "relay", w.Relay, "slot", cfg.Hello.Slot)
	guarded := newFrameGuard(conn, guardConfig{peer: "relay", peerParity: 1, maxData: cfg.Yamux.MaxStreamWindowSize, log: log})
	mux, err := yamux.Server(guarded, cfg.Yamux)
	if err != nil {
		return nil, fmt.Errorf("tunnel: start session: %w", err)
	}
	s := &AgentSession{Welcome: w, mux: mux, cfg: cfg, streams: make(chan *Stream), closed: make(chan struct{}), goAway: make(chan struct{}),
		pending: make(chan struct{}, cfg.MaxPendingOpens), guard: guarded, log: log}
	s.done.Add(1)
	go s.acceptStreams()
	return s, nil
}

// acceptStreams accepts the relay's streams and checks each one's Open in
// its own goroutine, so a slow stream cannot hold up the others. At most
// MaxPendingOpens wait for their Open at once: until one of them has, no
// stream is accepted, and yamux resets those beyond its accept backlog, so
// a relay that opens streams and never uses them costs the agent a bounded
// number of goroutines.
func (s *AgentSession) acceptStreams() {
	defer s.done.Done()
	warned := false
	for {
		select {
		case s.pending <- struct{}{}:
		default:
			if !warned {
				warned = true
				s.log.Warn("tunnel: the relay's streams are slow to send their Open; accepting no more until they do",
					"waiting", len(s.pending), "limit", cap(s.pending))
			}
			select {
			case s.pending <- struct{}{}:
			case <-s.closed:
				return
			}
		}
		if n := int64(len(s.pending)); n > s.peak.Load() {
			s.peak.Store(n) // only this goroutine stores it
		}
		st, err := s.mux.AcceptStream()
		if err != nil {
			_ = s.shutdown()
			return
		}
		s.done.Add(1)
		go func() {
			defer s.done.Done()
			s.checkOpen(st)
		}()
	}
}

// checkOpen reads a stream's Open and accepts it only for this cluster; a
// GoAway instead marks the session as draining.
func (s *AgentSession) checkOpen(st *yamux.Stream) {
	_ = st.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	var o Open
	var g GoAway
	p, err := ReadFrameOf(st, &o, &g)
	<-s.pending
	if err != nil {
		s.log.Warn("tunnel: bad stream opening; stream closed", "error", err)
		_ = st.Close()
		return
	}
	if p == &g {
		_ = st.Close()
		s.goOnce.Do(func() {
			s.goMsg = g
			s.log.Info("tunnel: the relay is draining this session (GoAway)", "message", g.Message, "graceMillis", g.GraceMillis)
			close(s.goAway)
		})
		return
	}
	if o.Cluster != s.cfg.Hello.Cluster {
		s.log.Warn("tunnel: stream for another cluster refused", "asked", o.Cluster, "request", o.Request)
		_ = WriteFrame(st, &OpenReply{Reason: ReasonClusterMismatch, Message: "this agent serves cluster " + s.cfg.Hello.Cluster})
		_ = st.Close()
		return
	}
	if err := WriteFrame(st, &OpenReply{OK: true}); err != nil {
		_ = st.Close()
		return
	}
	_ = st.SetDeadline(time.Time{})
	select {
	case s.streams <- &Stream{Conn: deadlineConn{st}, Open: o}:
	case <-s.closed:
		_ = st.Close()
	}
}

// Accept implements net.Listener: it returns the next accepted stream.
func (s *AgentSession) Accept() (net.Conn, error) {
	select {
	case st := <-s.streams:
		return st, nil
	case <-s.closed:
		return nil, net.ErrClosed
	}
}

// Addr implements net.Listener.
func (s *AgentSession) Addr() net.Addr { return s.mux.LocalAddr() }

// GoAwayChan is closed when the relay sent GoAway: the session will get no
// new stream, and the agent should open a replacement.
func (s *AgentSession) GoAwayChan() <-chan struct{} { return s.goAway }

// GoAwayNotice returns the GoAway the relay sent; valid once GoAwayChan is
// closed.
func (s *AgentSession) GoAwayNotice() GoAway {
	<-s.goAway
	return s.goMsg
}

// CloseChan is closed when the session ends.
func (s *AgentSession) CloseChan() <-chan struct{} { return s.mux.CloseChan() }

// Close implements net.Listener: it ends the session and every stream on it,
// and waits for the session's goroutines.
func (s *AgentSession) Close() error {
	err := s.shutdown()
	s.done.Wait()
	return err
}

// shutdown ends the session without waiting; the session's own goroutines
// call it.
func (s *AgentSession) shutdown() error {
	var err error
	s.once.Do(func() {
		close(s.closed)
		err = s.mux.Close()
	})
	return err
}

// Stream is a caller's connection through the relay, as the agent sees it.
type Stream struct {
	net.Conn
	// Open is what the relay said about the stream.
	Open Open
}

// RemoteAddr returns the caller's address as the relay reported it.
func (s *Stream) RemoteAddr() net.Addr { return clientAddr(s.Open.Client) }

// deadlineConn reports a passed deadline as os.ErrDeadlineExceeded, which
// says it is temporary, instead of yamux's ErrTimeout, which does not.
// crypto/tls treats a non-temporary read error as fatal, and net/http sets a
// read deadline in the past to interrupt a read when it hands a connection
// over for an upgrade: without this, every exec, attach and port-forward
// over TLS on a stream would die the moment it started.
type deadlineConn struct{ net.Conn }

func (c deadlineConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	return n, deadlineErr(err)
}

func (c deadlineConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	return n, deadlineErr(err)
}

func deadlineErr(err error) error {
	if errors.Is(err, yamux.ErrTimeout) {
		return os.ErrDeadlineExceeded
	}
	return err
}

type clientAddr string

func (a clientAddr) Network() string { return "tether" }
func (a clientAddr) String() string  { return string(a) }

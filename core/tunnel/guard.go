package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"
)

// The frame guard. yamux (v0.1.2) answers every ping in a goroutine of its
// own, which waits up to its write timeout for the answer to go out, and
// takes any other frame a peer sends at whatever rate it comes: a peer that
// floods pings and never reads makes the other end hold a goroutine per
// ping. Both ends of a session therefore read the peer's yamux frames
// through a frameGuard, which parses each frame header (yamux's spec.md:
// version, type, flags, stream ID, length; 12 bytes) before yamux sees it,
// and ends the session, with a log line saying what the peer did, as soon
// as the peer breaks one of the rules below. Nothing an honest yamux peer
// sends breaks them; docs/protocol.md ("Frame limits") has the measurements.

// Frame limits: what one peer may send on a session. Every frame type but
// data with a payload is a control frame; data is bounded by the stream
// windows.
const (
	// PingBurst is how many pings a peer may send at once, and PingsPerSecond
	// how many more it may send each second after that: a token bucket. A
	// tether peer pings every 15 s (its yamux keepalive). Every ping costs
	// the receiver a goroutine for up to its write timeout (10 s), so a
	// peer can make the other end hold at most PingBurst + 10 ×
	// PingsPerSecond of them.
	PingBurst      = 20
	PingsPerSecond = 1
	// ControlFrameSlack, ControlFramesPerStream and ControlFrameBytes bound
	// the window updates (and data frames without payload) a peer may send:
	// in all, at most ControlFrameSlack + ControlFramesPerStream for every
	// stream either end opened + one for every ControlFrameBytes of payload
	// this end sent. An honest peer sends at most 3 per stream (the SYN or
	// ACK, the FIN, a RST) and one per half stream window it reads (at
	// least 128 KiB: yamux's smallest window is 256 KiB).
	ControlFrameSlack      = 4096
	ControlFramesPerStream = 16
	ControlFrameBytes      = 16 << 10
)

// ErrMisbehavingPeer is the error a session ends with when the peer broke
// the frame limits or sent a frame no honest yamux sends.
var ErrMisbehavingPeer = errors.New("tunnel: the peer misbehaved")

// yamux's wire format (hashicorp/yamux spec.md).
const (
	yamuxHeaderLen = 12
	yamuxVersion   = 0

	yamuxData         = 0
	yamuxWindowUpdate = 1
	yamuxPing         = 2
	yamuxGoAway       = 3

	yamuxSYN = 1
	yamuxACK = 2
)

// guardConfig says what a frameGuard allows.
type guardConfig struct {
	// peer names the other end in messages: "agent" or "relay".
	peer string
	// peerParity is the parity of the stream IDs the peer opens: 1 (odd)
	// when the peer is the yamux client (the relay), 0 when the server.
	peerParity uint32
	// maxOpens is how many streams the peer may open in all; 0 is no limit.
	maxOpens int
	// endOnGoAway ends the session at the peer's first GoAway: for the
	// relay, as an agent that accepts no stream makes the session useless.
	endOnGoAway bool
	// maxData is the largest data frame: this end's stream window.
	maxData uint32
	log     *slog.Logger
}

// frameGuard is the net.Conn yamux runs on: it passes bytes through both
// ways, parses the frame headers of each direction, and fails the read that
// brings a frame that breaks the limits, which ends the yamux session. yamux
// reads it from one goroutine and writes it from another.
type frameGuard struct {
	net.Conn
	cfg guardConfig
	now func() time.Time

	// Read side: yamux's receiving goroutine only.
	in         frameScanner
	err        error // sticky: the violation that ended the session
	pingTokens float64
	pingAt     time.Time
	opens      int    // streams the peer opened
	goAways    int    // GoAways the peer sent
	pings      int    // pings the peer sent
	pingAcks   uint64 // answers to this end's pings
	control    uint64 // window updates and empty data frames

	// Write side: counted by yamux's sending goroutine before each write,
	// read by the read side.
	out       frameScanner
	sentSYNs  atomic.Uint64 // streams this end opened
	sentPings atomic.Uint64
	sentBytes atomic.Uint64 // data payload
}

func newFrameGuard(conn net.Conn, cfg guardConfig) *frameGuard {
	if cfg.log == nil {
		cfg.log = slog.New(slog.DiscardHandler)
	}
	return &frameGuard{Conn: conn, cfg: cfg, now: time.Now, pingTokens: PingBurst}
}

// frameScanner finds the frame headers in a byte stream that arrives in
// pieces of any size.
type frameScanner struct {
	hdr  [yamuxHeaderLen]byte
	have int    // bytes of hdr filled
	skip uint64 // payload bytes of the current data frame still to come
}

// scan calls f with every header that p completes; it stops at f's first
// error.
func (s *frameScanner) scan(p []byte, f func(h []byte) error) error {
	for len(p) > 0 {
		if s.skip > 0 {
			k := min(uint64(len(p)), s.skip)
			s.skip -= k
			p = p[k:]
			continue
		}
		c := copy(s.hdr[s.have:], p)
		s.have += c
		p = p[c:]
		if s.have < yamuxHeaderLen {
			return nil
		}
		s.have = 0
		if err := f(s.hdr[:]); err != nil {
			return err
		}
		if s.hdr[1] == yamuxData {
			s.skip = uint64(binary.BigEndian.Uint32(s.hdr[8:]))
		}
	}
	return nil
}

// Read passes what the peer sent to yamux, unless it breaks the limits: then
// the read fails (the bytes before the offending frame are dropped too, as
// the session is over) and so does every later one.
func (g *frameGuard) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	n, err := g.Conn.Read(p)
	if verr := g.in.scan(p[:n], g.check); verr != nil {
		g.err = verr
		g.cfg.log.Warn("tunnel: ending the session of a misbehaving "+g.cfg.peer, "error", verr)
		return 0, verr
	}
	return n, err
}

// Write counts what this end sends, then sends it: counted first, as the
// peer's answer can be read before Write returns.
func (g *frameGuard) Write(p []byte) (int, error) {
	_ = g.out.scan(p, g.count)
	return g.Conn.Write(p)
}

func (g *frameGuard) count(h []byte) error {
	switch h[1] {
	case yamuxData, yamuxWindowUpdate:
		if binary.BigEndian.Uint16(h[2:])&yamuxSYN != 0 {
			g.sentSYNs.Add(1)
		}
		if h[1] == yamuxData {
			g.sentBytes.Add(uint64(binary.BigEndian.Uint32(h[8:])))
		}
	case yamuxPing:
		if binary.BigEndian.Uint16(h[2:])&yamuxSYN != 0 {
			g.sentPings.Add(1)
		}
	}
	return nil
}

// controlAllowance is how many window updates and empty data frames the peer
// may have sent by now.
func (g *frameGuard) controlAllowance() uint64 {
	streams := uint64(g.opens) + g.sentSYNs.Load()
	return ControlFrameSlack + ControlFramesPerStream*streams + g.sentBytes.Load()/ControlFrameBytes
}

func (g *frameGuard) violation(format string, args ...any) error {
	return fmt.Errorf("%w: the %s %s", ErrMisbehavingPeer, g.cfg.peer, fmt.Sprintf(format, args...))
}

// check applies the limits to one header from the peer.
func (g *frameGuard) check(h []byte) error {
	version, typ := h[0], h[1]
	flags := binary.BigEndian.Uint16(h[2:])
	id := binary.BigEndian.Uint32(h[4:])
	length := binary.BigEndian.Uint32(h[8:])
	if version != yamuxVersion {
		return g.violation("sent a frame of yamux version %d (this end speaks %d)", version, yamuxVersion)
	}
	switch typ {
	case yamuxData, yamuxWindowUpdate:
		if flags&yamuxSYN != 0 {
			g.opens++
			switch {
			case id == 0 || id%2 != g.cfg.peerParity:
				return g.violation("opened stream %d, an ID that is not its own to use", id)
			case g.goAways > 0:
				return g.violation("opened stream %d after its GoAway", id)
			case g.cfg.maxOpens > 0 && g.opens > g.cfg.maxOpens:
				return g.violation("opened %d streams (it may open none; at most %d are refused)", g.opens, g.cfg.maxOpens)
			}
		} else if typ == yamuxWindowUpdate || length == 0 {
			g.control++
			if allowed := g.controlAllowance(); g.control > allowed {
				return g.violation("sent %d window updates and empty frames; %d were allowed for %d streams and %d bytes sent (docs/protocol.md, Frame limits)",
					g.control, allowed, uint64(g.opens)+g.sentSYNs.Load(), g.sentBytes.Load())
			}
		}
		if typ == yamuxData && length > g.cfg.maxData {
			return g.violation("sent a data frame of %d bytes on stream %d, more than a stream window (%d)", length, id, g.cfg.maxData)
		}
	case yamuxPing:
		if id != 0 {
			return g.violation("sent a ping on stream %d (pings belong to stream 0)", id)
		}
		if flags&yamuxSYN == 0 {
			g.pingAcks++
			if sent := g.sentPings.Load(); g.pingAcks > sent {
				return g.violation("answered %d pings; it was sent %d", g.pingAcks, sent)
			}
			return nil
		}
		g.pings++
		now := g.now()
		if !g.pingAt.IsZero() {
			g.pingTokens = min(PingBurst, g.pingTokens+now.Sub(g.pingAt).Seconds()*PingsPerSecond)
		}
		g.pingAt = now
		if g.pingTokens < 1 {
			return g.violation("sent pings faster than the limit (%d at once, then %d a second)", PingBurst, PingsPerSecond)
		}
		g.pingTokens--
	case yamuxGoAway:
		g.goAways++
		switch {
		case id != 0:
			return g.violation("sent a GoAway on stream %d (GoAways belong to stream 0)", id)
		case g.cfg.endOnGoAway:
			return g.violation("sent a yamux GoAway (code %d): it accepts no stream, so the session can carry none", length)
		case g.goAways > 1:
			return g.violation("sent a second GoAway")
		}
	default:
		return g.violation("sent a frame of unknown type %d", typ)
	}
	return nil
}

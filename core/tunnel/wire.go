package tunnel

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/tether-k8s/tether/core/clusterid"
)

// Version is the protocol version this package speaks.
const Version = 1

// MaxPayload is the largest frame payload accepted, in bytes.
const MaxPayload = 8 << 10

// headerLen is the size of a frame header: magic (2), version (1), type (1),
// payload length (2, big endian).
const headerLen = 6

// magic starts every frame: "tT".
var magic = [2]byte{'t', 'T'}

// FrameType says what a frame carries.
type FrameType uint8

// Frame types. docs/protocol.md says who sends each and when.
const (
	FrameHello     FrameType = 1 // agent → relay, first on a connection
	FrameWelcome   FrameType = 2 // relay → agent, the answer to Hello
	FrameOpen      FrameType = 3 // relay → agent, first on every stream
	FrameOpenReply FrameType = 4 // agent → relay, the answer to Open
	FrameGoAway    FrameType = 5 // relay → agent, first on a stream instead of Open: move this session elsewhere
	FrameRenew     FrameType = 6 // agent → relay, on a renewal connection (ALPN RenewALPN)
	FrameRenewed   FrameType = 7 // relay → agent, the answer to Renew
)

// ALPN protocols of the relay's agent endpoint.
const (
	// SessionALPN is a session: Hello, Welcome, then yamux.
	SessionALPN = "tether/1"
	// RenewALPN is a credential renewal: Renew, Renewed, then close.
	RenewALPN = "tether-renew/1"
)

func (t FrameType) String() string {
	switch t {
	case FrameHello:
		return "Hello"
	case FrameWelcome:
		return "Welcome"
	case FrameOpen:
		return "Open"
	case FrameOpenReply:
		return "OpenReply"
	case FrameGoAway:
		return "GoAway"
	case FrameRenew:
		return "Renew"
	case FrameRenewed:
		return "Renewed"
	}
	return fmt.Sprintf("FrameType(%d)", uint8(t))
}

// Errors ReadFrame wraps.
var (
	ErrBadMagic     = errors.New("tunnel: not a tether frame (bad magic)")
	ErrVersion      = errors.New("tunnel: unsupported protocol version")
	ErrFrameType    = errors.New("tunnel: unexpected frame type")
	ErrFrameTooBig  = errors.New("tunnel: frame payload too large")
	ErrInvalidFrame = errors.New("tunnel: invalid frame")
)

// Payload is a frame's content.
type Payload interface {
	// Validate reports what is wrong with a decoded payload.
	Validate() error
	frameType() FrameType
}

// Hello is the agent's first frame on a new connection, after TLS.
type Hello struct {
	// Cluster is the cluster the agent serves. The relay refuses the
	// connection unless it equals the cluster in the agent's certificate.
	Cluster string `json:"cluster"`
	// Agent identifies the agent process (e.g. its pod name), for logs.
	Agent string `json:"agent"`
	// Slot is which of the agent's parallel sessions this is (0, 1, ...).
	Slot int `json:"slot"`
	// Software is the agent's version, for logs.
	Software string `json:"software,omitempty"`
	// Avoid names the relay replicas (their Welcome.Relay) that hold the
	// agent's other sessions: a replica named here refuses the session
	// with ReasonElsewhere while another replica that does not drain can
	// take it, so that an agent's sessions sit on different replicas and
	// one replica's restart leaves it connected. Relays without replicas
	// ignore it.
	Avoid []string `json:"avoid,omitempty"`
	// Spread asks a replica that already holds a session of this agent
	// (same cluster and Agent, another slot) to refuse this one with
	// ReasonElsewhere too, while another replica could take it: the
	// agent's slots dial at once when it starts, before either knows
	// where the other landed. An agent stops asking after MaxElsewhere
	// such refusals in a row.
	Spread bool `json:"spread,omitempty"`
}

// Welcome is the relay's answer to Hello.
type Welcome struct {
	// OK is true when the relay accepts the session; yamux starts after it.
	OK bool `json:"ok"`
	// Reason is a machine-readable refusal reason (see Reason constants).
	Reason string `json:"reason,omitempty"`
	// Message explains a refusal to the operator.
	Message string `json:"message,omitempty"`
	// Session is the relay's ID for this session, for logs on both sides.
	Session string `json:"session,omitempty"`
	// Relay identifies the relay replica, for logs.
	Relay string `json:"relay,omitempty"`
	// Software is the relay's version, for the agent's logs.
	Software string `json:"software,omitempty"`
}

// Refusal reasons in Welcome and OpenReply.
const (
	ReasonClusterMismatch = "ClusterMismatch" // Hello or Open names another cluster
	ReasonRevoked         = "Revoked"         // the credential is no longer valid
	ReasonDraining        = "Draining"        // the relay is shutting down: reconnect elsewhere
	ReasonTooManySessions = "TooManySessions" // the cluster holds its maximum of sessions
	ReasonVersion         = "Version"         // unsupported protocol version
	ReasonElsewhere       = "Elsewhere"       // this replica holds the agent's other session: dial again for another
)

// Open is the relay's first frame on every stream it opens to an agent.
type Open struct {
	// Cluster is the cluster the caller asked for. The agent refuses the
	// stream unless it is its own.
	Cluster string `json:"cluster"`
	// Request is the relay's request ID, shared by the relay's and the
	// agent's audit lines.
	Request string `json:"request"`
	// Client is the caller's address as the relay saw it.
	Client string `json:"client"`
	// User is the user the relay authenticated and admitted when it opened
	// the tunnel. The agent still authenticates every request itself, and
	// refuses one authenticated as anyone else: it narrows, never grants.
	User string `json:"user,omitempty"`
}

// OpenReply is the agent's answer to Open. After an OK reply the stream
// carries the caller's bytes both ways, unparsed by the relay.
type OpenReply struct {
	// OK is true when the agent accepts the stream.
	OK bool `json:"ok"`
	// Reason and Message explain a refusal.
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
}

// GoAway is the relay's notice that it is draining: the agent opens a
// replacement session (which a load balancer sends to another replica, or
// which this relay refuses with ReasonDraining until it is back), while the
// streams already on this session run until they end or the relay closes
// the session. The relay opens no new stream on a session it sent GoAway.
type GoAway struct {
	// Reason is ReasonDraining.
	Reason string `json:"reason"`
	// Message explains, for the agent's logs.
	Message string `json:"message,omitempty"`
	// GraceMillis is how long the relay keeps the session open for the
	// streams on it, at most.
	GraceMillis int64 `json:"graceMillis,omitempty"`
}

// Renew asks the relay for a new certificate for the cluster the agent's
// current one (its TLS client certificate) names.
type Renew struct {
	// CSR is a DER certificate signing request for the agent's new key.
	CSR []byte `json:"csr"`
}

// Renewed is the relay's answer to Renew.
type Renewed struct {
	// OK is true when Certificate holds the new certificate.
	OK bool `json:"ok"`
	// Certificate is the new client certificate, PEM.
	Certificate string `json:"certificate,omitempty"`
	// Reason and Message explain a refusal (ReasonRevoked, or
	// ReasonBadRequest for a CSR that cannot be signed).
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
}

// Reasons of a refused Renew: besides ReasonRevoked, a CSR that cannot be
// signed, or a relay that cannot reach its store now (retry later; the
// credential in use stays valid).
const (
	ReasonBadRequest  = "BadRequest"
	ReasonUnavailable = "Unavailable"
)

func (*Hello) frameType() FrameType     { return FrameHello }
func (*Welcome) frameType() FrameType   { return FrameWelcome }
func (*Open) frameType() FrameType      { return FrameOpen }
func (*OpenReply) frameType() FrameType { return FrameOpenReply }
func (*GoAway) frameType() FrameType    { return FrameGoAway }
func (*Renew) frameType() FrameType     { return FrameRenew }
func (*Renewed) frameType() FrameType   { return FrameRenewed }

var (
	idRE   = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)
	textRE = regexp.MustCompile(`^[\x20-\x7e]{0,512}$`)
)

func invalid(t FrameType, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalidFrame, t, fmt.Sprintf(format, args...))
}

// Validate implements Payload.
func (h *Hello) Validate() error {
	if err := clusterid.Validate(h.Cluster); err != nil {
		return invalid(FrameHello, "%v", err)
	}
	if !idRE.MatchString(h.Agent) {
		return invalid(FrameHello, "agent %q: want 1 to 128 of A-Z a-z 0-9 . _ -", h.Agent)
	}
	if h.Slot < 0 || h.Slot > 15 {
		return invalid(FrameHello, "slot %d: want 0 to 15", h.Slot)
	}
	if !textRE.MatchString(h.Software) {
		return invalid(FrameHello, "software: want printable ASCII, at most 512 bytes")
	}
	if len(h.Avoid) > MaxSessions {
		return invalid(FrameHello, "avoid: %d replicas, want at most %d", len(h.Avoid), MaxSessions)
	}
	for _, r := range h.Avoid {
		if !idRE.MatchString(r) {
			return invalid(FrameHello, "avoid %q: want 1 to 128 of A-Z a-z 0-9 . _ -", r)
		}
	}
	return nil
}

// Validate implements Payload.
func (w *Welcome) Validate() error {
	if w.OK == (w.Reason != "") {
		return invalid(FrameWelcome, "a refusal needs a reason and an acceptance has none")
	}
	for _, s := range []string{w.Reason, w.Message, w.Session, w.Relay, w.Software} {
		if !textRE.MatchString(s) {
			return invalid(FrameWelcome, "fields must be printable ASCII, at most 512 bytes")
		}
	}
	return nil
}

// Validate implements Payload.
func (o *Open) Validate() error {
	if err := clusterid.Validate(o.Cluster); err != nil {
		return invalid(FrameOpen, "%v", err)
	}
	if !idRE.MatchString(o.Request) {
		return invalid(FrameOpen, "request %q: want 1 to 128 of A-Z a-z 0-9 . _ -", o.Request)
	}
	if o.Client == "" || !textRE.MatchString(o.Client) {
		return invalid(FrameOpen, "client: want printable ASCII, 1 to 512 bytes")
	}
	if len(o.User) > 1024 || strings.ContainsAny(o.User, "\r\n\x00") || !utf8.ValidString(o.User) {
		return invalid(FrameOpen, "user: want UTF-8 without control characters, at most 1024 bytes")
	}
	return nil
}

// Validate implements Payload.
func (o *OpenReply) Validate() error {
	if o.OK == (o.Reason != "") {
		return invalid(FrameOpenReply, "a refusal needs a reason and an acceptance has none")
	}
	if !textRE.MatchString(o.Reason) || !textRE.MatchString(o.Message) {
		return invalid(FrameOpenReply, "fields must be printable ASCII, at most 512 bytes")
	}
	return nil
}

// Validate implements Payload.
func (g *GoAway) Validate() error {
	if g.Reason == "" || !textRE.MatchString(g.Reason) || !textRE.MatchString(g.Message) {
		return invalid(FrameGoAway, "want a reason, and printable ASCII of at most 512 bytes")
	}
	if g.GraceMillis < 0 || g.GraceMillis > int64(24*time.Hour/time.Millisecond) {
		return invalid(FrameGoAway, "graceMillis %d: want 0 to 86400000", g.GraceMillis)
	}
	return nil
}

// Validate implements Payload.
func (r *Renew) Validate() error {
	if len(r.CSR) == 0 || len(r.CSR) > 4096 {
		return invalid(FrameRenew, "csr: want 1 to 4096 bytes of DER, got %d", len(r.CSR))
	}
	return nil
}

// Validate implements Payload.
func (r *Renewed) Validate() error {
	if r.OK == (r.Reason != "") || r.OK == (r.Certificate == "") {
		return invalid(FrameRenewed, "an acceptance has a certificate and no reason; a refusal has a reason and no certificate")
	}
	if !textRE.MatchString(r.Reason) || !textRE.MatchString(r.Message) {
		return invalid(FrameRenewed, "reason and message must be printable ASCII, at most 512 bytes")
	}
	if len(r.Certificate) > 6144 || !strings.HasPrefix(r.Certificate, "-----BEGIN CERTIFICATE-----") && r.OK {
		return invalid(FrameRenewed, "certificate: want one PEM certificate of at most 6144 bytes")
	}
	return nil
}

// WriteFrame validates p and writes it as one frame.
func WriteFrame(w io.Writer, p Payload) error {
	t := p.frameType()
	if err := p.Validate(); err != nil {
		return fmt.Errorf("tunnel: write %s: %w", t, err)
	}
	var enc bytes.Buffer
	je := json.NewEncoder(&enc)
	je.SetEscapeHTML(false)
	if err := je.Encode(p); err != nil {
		return fmt.Errorf("tunnel: encode %s: %w", t, err)
	}
	body := bytes.TrimSuffix(enc.Bytes(), []byte("\n"))
	if len(body) > MaxPayload {
		return fmt.Errorf("tunnel: write %s: %w (%d bytes)", t, ErrFrameTooBig, len(body))
	}
	buf := make([]byte, headerLen, headerLen+len(body))
	copy(buf, magic[:])
	buf[2] = Version
	buf[3] = byte(t)
	binary.BigEndian.PutUint16(buf[4:], uint16(len(body)))
	if _, err := w.Write(append(buf, body...)); err != nil {
		return fmt.Errorf("tunnel: write %s: %w", t, err)
	}
	return nil
}

// ReadFrame reads exactly one frame of p's type into p and validates it. It
// never reads past the frame. A frame of another version fails with
// ErrVersion, naming the version, so the caller can answer with a refusal.
func ReadFrame(r io.Reader, p Payload) error {
	_, err := ReadFrameOf(r, p)
	return err
}

// ReadFrameOf reads exactly one frame whose type is one of ps', decodes it
// into that payload, validates it and returns it. Otherwise it behaves as
// ReadFrame.
func ReadFrameOf(r io.Reader, ps ...Payload) (Payload, error) {
	want := ps[0].frameType()
	var hdr [headerLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("tunnel: read %s header: %w", want, err)
	}
	if hdr[0] != magic[0] || hdr[1] != magic[1] {
		return nil, fmt.Errorf("%w: % x", ErrBadMagic, hdr[:2])
	}
	if hdr[2] != Version {
		return nil, fmt.Errorf("%w: peer speaks %d, this side %d", ErrVersion, hdr[2], Version)
	}
	got := FrameType(hdr[3])
	i := slices.IndexFunc(ps, func(p Payload) bool { return p.frameType() == got })
	if i < 0 {
		return nil, fmt.Errorf("%w: got %s, want %s", ErrFrameType, got, want)
	}
	p := ps[i]
	n := int(binary.BigEndian.Uint16(hdr[4:]))
	if n > MaxPayload {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrFrameTooBig, n, MaxPayload)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("tunnel: read %s payload: %w", got, err)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(p); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalidFrame, got, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: %s: trailing data after the JSON object", ErrInvalidFrame, got)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return p, nil
}

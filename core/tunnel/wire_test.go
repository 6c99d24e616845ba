package tunnel_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/tether-k8s/tether/core/tunnel"
)

func frame(version, typ byte, payload string) []byte {
	b := []byte{'t', 'T', version, typ, 0, 0}
	binary.BigEndian.PutUint16(b[4:], uint16(len(payload)))
	return append(b, payload...)
}

func TestFramesRoundTrip(t *testing.T) {
	for _, p := range []tunnel.Payload{
		&tunnel.Hello{Cluster: "prod", Agent: "tether-agent-7d9f-x2", Slot: 1, Software: "tether v0.1.0"},
		&tunnel.Welcome{OK: true, Session: "s-1", Relay: "relay-0"},
		&tunnel.Welcome{Reason: tunnel.ReasonClusterMismatch, Message: "certificate names cluster prod"},
		&tunnel.Open{Cluster: "prod", Request: "0123abcd", Client: "203.0.113.7:51234"},
		&tunnel.OpenReply{OK: true},
		&tunnel.OpenReply{Reason: tunnel.ReasonClusterMismatch, Message: "this agent serves prod"},
		&tunnel.GoAway{Reason: tunnel.ReasonDraining, Message: "relay-0 is restarting", GraceMillis: 25000},
	} {
		var buf bytes.Buffer
		if err := tunnel.WriteFrame(&buf, p); err != nil {
			t.Fatalf("write %T: %v", p, err)
		}
		buf.WriteString("stream bytes that follow")
		got := reflect.New(reflect.TypeOf(p).Elem()).Interface().(tunnel.Payload)
		if err := tunnel.ReadFrame(&buf, got); err != nil {
			t.Fatalf("read %T: %v", p, err)
		}
		if !reflect.DeepEqual(got, p) {
			t.Fatalf("round trip: got %+v, want %+v", got, p)
		}
		if rest, _ := io.ReadAll(&buf); string(rest) != "stream bytes that follow" {
			t.Fatalf("ReadFrame consumed bytes past its frame: left %q", rest)
		}
	}
}

func TestReadFrameRefusals(t *testing.T) {
	okHello := `{"cluster":"prod","agent":"a","slot":0}`
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, io.EOF},
		{"truncated header", []byte("tT\x01"), io.ErrUnexpectedEOF},
		{"bad magic", append([]byte("GET / HTTP/1.1\r\n"), 0), tunnel.ErrBadMagic},
		{"version 2", frame(2, 1, okHello), tunnel.ErrVersion},
		{"version 0", frame(0, 1, okHello), tunnel.ErrVersion},
		{"wrong type", frame(1, 3, okHello), tunnel.ErrFrameType},
		{"unknown type", frame(1, 99, okHello), tunnel.ErrFrameType},
		{"length over the cap", append([]byte{'t', 'T', 1, 1, 0xff, 0xff}, make([]byte, 70000)...), tunnel.ErrFrameTooBig},
		{"truncated payload", frame(1, 1, okHello)[:20], io.ErrUnexpectedEOF},
		{"not JSON", frame(1, 1, "cluster=prod"), tunnel.ErrInvalidFrame},
		{"JSON array", frame(1, 1, `["prod"]`), tunnel.ErrInvalidFrame},
		{"trailing JSON", frame(1, 1, okHello+`{"cluster":"other"}`), tunnel.ErrInvalidFrame},
		{"cluster ../x", frame(1, 1, `{"cluster":"../x","agent":"a"}`), tunnel.ErrInvalidFrame},
		{"cluster %2e%2e", frame(1, 1, `{"cluster":"%2e%2e","agent":"a"}`), tunnel.ErrInvalidFrame},
		{"cluster with trailing dot", frame(1, 1, `{"cluster":"prod.","agent":"a"}`), tunnel.ErrInvalidFrame},
		{"cluster in upper case", frame(1, 1, `{"cluster":"PROD","agent":"a"}`), tunnel.ErrInvalidFrame},
		{"empty cluster", frame(1, 1, `{"agent":"a"}`), tunnel.ErrInvalidFrame},
		{"agent with a newline", frame(1, 1, `{"cluster":"prod","agent":"a\nb"}`), tunnel.ErrInvalidFrame},
		{"slot out of range", frame(1, 1, `{"cluster":"prod","agent":"a","slot":99}`), tunnel.ErrInvalidFrame},
		{"cluster as a number", frame(1, 1, `{"cluster":7,"agent":"a"}`), tunnel.ErrInvalidFrame},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tunnel.ReadFrame(bytes.NewReader(tc.in), &tunnel.Hello{})
			if !errors.Is(err, tc.want) {
				t.Fatalf("ReadFrame = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestReadFrameOfPicksThePayloadByType(t *testing.T) {
	var buf bytes.Buffer
	_ = tunnel.WriteFrame(&buf, &tunnel.GoAway{Reason: tunnel.ReasonDraining})
	_ = tunnel.WriteFrame(&buf, &tunnel.Open{Cluster: "prod", Request: "r", Client: "c"})
	_ = tunnel.WriteFrame(&buf, &tunnel.Hello{Cluster: "prod", Agent: "a"})
	var o tunnel.Open
	var g tunnel.GoAway
	if p, err := tunnel.ReadFrameOf(&buf, &o, &g); err != nil || p != &g || g.Reason != tunnel.ReasonDraining {
		t.Fatalf("first frame: %v, %v; want the GoAway", p, err)
	}
	if p, err := tunnel.ReadFrameOf(&buf, &o, &g); err != nil || p != &o || o.Request != "r" {
		t.Fatalf("second frame: %v, %v; want the Open", p, err)
	}
	if _, err := tunnel.ReadFrameOf(&buf, &o, &g); !errors.Is(err, tunnel.ErrFrameType) {
		t.Fatalf("a Hello where an Open or GoAway belongs: %v, want ErrFrameType", err)
	}
}

func TestPayloadValidation(t *testing.T) {
	tests := []struct {
		name string
		p    tunnel.Payload
		want string
	}{
		{"welcome OK with a reason", &tunnel.Welcome{OK: true, Reason: "x"}, "reason"},
		{"welcome refusal without a reason", &tunnel.Welcome{}, "reason"},
		{"welcome message with CR LF", &tunnel.Welcome{Reason: "x", Message: "a\r\nb"}, "printable"},
		{"open naming another cluster's look-alike", &tunnel.Open{Cluster: "prоd", Request: "r", Client: "c"}, "cluster"},
		{"open without request ID", &tunnel.Open{Cluster: "prod", Client: "c"}, "request"},
		{"open request ID with a slash", &tunnel.Open{Cluster: "prod", Request: "a/b", Client: "c"}, "request"},
		{"open without client", &tunnel.Open{Cluster: "prod", Request: "r"}, "client"},
		{"open client with NUL", &tunnel.Open{Cluster: "prod", Request: "r", Client: "a\x00"}, "client"},
		{"reply OK with a reason", &tunnel.OpenReply{OK: true, Reason: "x"}, "reason"},
		{"goaway without a reason", &tunnel.GoAway{Message: "m"}, "reason"},
		{"goaway with a negative grace", &tunnel.GoAway{Reason: "Draining", GraceMillis: -1}, "graceMillis"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tunnel.WriteFrame(io.Discard, tc.p)
			if !errors.Is(err, tunnel.ErrInvalidFrame) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("WriteFrame = %v, want ErrInvalidFrame mentioning %q", err, tc.want)
			}
		})
	}
}

// FuzzReadFrame feeds arbitrary bytes to every frame reader: no panic, never
// reading past the declared frame, and whatever is accepted is valid and
// survives a round trip.
func FuzzReadFrame(f *testing.F) {
	f.Add(frame(1, 1, `{"cluster":"prod","agent":"a","slot":0}`))
	f.Add(frame(1, 2, `{"ok":true,"session":"s"}`))
	f.Add(frame(1, 3, `{"cluster":"prod","request":"r","client":"c"}`))
	f.Add(frame(1, 4, `{"ok":false,"reason":"ClusterMismatch"}`))
	f.Add(frame(1, 5, `{"reason":"Draining","graceMillis":25000}`))
	f.Add([]byte("tT\x01\x01\xff\xff"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, p := range []tunnel.Payload{&tunnel.Hello{}, &tunnel.Welcome{}, &tunnel.Open{}, &tunnel.OpenReply{}, &tunnel.GoAway{}} {
			r := bytes.NewReader(data)
			if err := tunnel.ReadFrame(r, p); err != nil {
				continue
			}
			if consumed := len(data) - r.Len(); len(data) < 6 || consumed != 6+int(binary.BigEndian.Uint16(data[4:6])) {
				t.Fatalf("consumed %d bytes of a frame declaring %d", consumed, len(data))
			}
			if err := p.Validate(); err != nil {
				t.Fatalf("accepted an invalid %T: %v", p, err)
			}
			var buf bytes.Buffer
			if err := tunnel.WriteFrame(&buf, p); err != nil {
				t.Fatalf("cannot re-encode accepted %T %+v: %v", p, p, err)
			}
		}
	})
}

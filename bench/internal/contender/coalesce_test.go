package contender

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
)

// recorder is a net.Conn that records each Write.
type recorder struct {
	net.Conn
	writes [][]byte
}

func (r *recorder) Write(p []byte) (int, error) {
	r.writes = append(r.writes, append([]byte(nil), p...))
	return len(p), nil
}

func header(typ byte, length uint32) []byte {
	h := make([]byte, yamuxHeaderSize)
	h[1] = typ
	binary.BigEndian.PutUint32(h[8:], length)
	return h
}

func TestCoalesceJoinsOnlyDataHeadersWithTheirBody(t *testing.T) {
	rec := &recorder{}
	c := &coalesceConn{Conn: rec}
	body := []byte("hello")
	steps := [][]byte{
		header(0, uint32(len(body))), body, // a data frame: one write
		header(1, 1<<20), // a window update: passes at once
		header(0, 0),     // a data frame without body (FIN): passes at once
		[]byte("frame"),  // anything else passes
	}
	for _, p := range steps {
		if n, err := c.Write(p); err != nil || n != len(p) {
			t.Fatalf("Write(%d bytes) = %d, %v", len(p), n, err)
		}
	}
	want := [][]byte{append(header(0, 5), body...), header(1, 1<<20), header(0, 0), []byte("frame")}
	if len(rec.writes) != len(want) {
		t.Fatalf("%d writes, want %d: %q", len(rec.writes), len(want), rec.writes)
	}
	for i := range want {
		if !bytes.Equal(rec.writes[i], want[i]) {
			t.Errorf("write %d = %q, want %q", i, rec.writes[i], want[i])
		}
	}
}

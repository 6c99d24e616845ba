package contender

import (
	"crypto/tls"
	"encoding/binary"
	"net"
	"sync"
)

// yamuxHeaderSize is the size of a yamux frame header.
const yamuxHeaderSize = 12

// coalesceConn joins each yamux data-frame header with the body that
// follows it into one Write, so that TLS sends one record (and the kernel
// one segment) per frame instead of two: yamux's send loop writes the
// 12-byte header and the body separately. A header is held only when it
// announces a data frame with a body (type 0, length > 0), which yamux
// always writes next; every other write passes through at once. For the
// harness's A/B of that cost; tether itself passes the TLS connection to
// yamux as it is.
type coalesceConn struct {
	net.Conn
	mu   sync.Mutex
	held []byte
	buf  []byte
}

// Write holds a data header for the body that follows; see coalesceConn.
func (c *coalesceConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held == nil && len(p) == yamuxHeaderSize && p[0] == 0 && p[1] == 0 && binary.BigEndian.Uint32(p[8:]) > 0 {
		c.held = append(c.buf[:0], p...)
		return len(p), nil
	}
	if c.held == nil {
		return c.Conn.Write(p)
	}
	c.buf = append(c.held, p...)
	c.held = nil
	n, err := c.Conn.Write(c.buf)
	return max(0, n-yamuxHeaderSize), err
}

// coalesceTLS is coalesceConn over a TLS connection, reporting its state:
// the relay authorizes a session against the peer's certificate.
type coalesceTLS struct {
	*coalesceConn
	tc *tls.Conn
}

// ConnectionState returns the TLS connection's state.
func (c coalesceTLS) ConnectionState() tls.ConnectionState { return c.tc.ConnectionState() }

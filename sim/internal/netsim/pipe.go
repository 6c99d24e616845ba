package netsim

import (
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"time"
)

// chunk is bytes in flight, deliverable from at.
type chunk struct {
	b  []byte
	at time.Time
}

// half is one direction of a connection.
//
// What one goroutine writes at one instant is a burst: it arrives at once
// (every chunk of the burst at the arrival time of its last), and a write
// that continues a burst never waits for room in the buffer. So a message
// written as a header and then a body arrives whole, as a segment would:
// a reader never finds half of it and waits for the rest. That matters on
// virtual time (sim.Replay): yamux reads a frame's body holding the
// stream's lock, and a goroutine waiting for a lock is not durably blocked,
// so if the body took time to arrive, the bubble's clock would stop with
// the reader waiting for it.
type half struct {
	link *Link
	rnd  *rand.Rand // jitter; drawn under mu

	mu       sync.Mutex
	chunks   []chunk
	buffered int
	last     time.Time // when the last chunk becomes deliverable
	burst    time.Time // when the last write was made
	burstN   int       // how many chunks the last burst has
	eof      bool      // the writer closed: EOF after the chunks
	broken   error     // reset or reader gone: reads and writes fail
	changed  chan struct{}
}

func newHalf(l *Link) *half { return &half{link: l, rnd: l.newRand(), changed: make(chan struct{})} }

func (h *half) notifyLocked() {
	close(h.changed)
	h.changed = make(chan struct{})
}

func (h *half) fail(err error) {
	h.mu.Lock()
	if h.broken == nil {
		h.broken = err
	}
	h.notifyLocked()
	h.mu.Unlock()
}

func (h *half) closeWrite() {
	h.mu.Lock()
	h.eof = true
	h.notifyLocked()
	h.mu.Unlock()
}

// write queues p whole, first waiting while the buffer is full unless p
// continues a burst.
func (h *half) write(p []byte, dl *deadline) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var now time.Time
	for {
		if h.broken != nil {
			return 0, h.broken
		}
		if h.eof {
			return 0, net.ErrClosed
		}
		now = time.Now()
		if h.buffered < bufferSize || now.Equal(h.burst) {
			break
		}
		ch := h.changed
		h.mu.Unlock()
		select {
		case <-ch:
		case <-dl.wait():
			h.mu.Lock()
			return 0, timeoutErr{"write"}
		}
		h.mu.Lock()
	}
	if len(p) == 0 {
		return 0, nil
	}
	latency, jitter, bw := h.link.Shape()
	at := now.Add(latency)
	if jitter > 0 {
		at = at.Add(time.Duration(float64(jitter) * h.rnd.Float64()))
	}
	if at.Before(h.last) {
		at = h.last // bytes stay in order
	}
	if bw > 0 {
		at = at.Add(time.Duration(float64(len(p)) / float64(bw) * float64(time.Second)))
	}
	h.last = at
	h.chunks = append(h.chunks, chunk{b: append([]byte(nil), p...), at: at})
	h.buffered += len(p)
	if now.Equal(h.burst) {
		h.burstN++
		for i := max(len(h.chunks)-h.burstN, 0); i < len(h.chunks); i++ {
			h.chunks[i].at = at
		}
	} else {
		h.burst, h.burstN = now, 1
	}
	h.notifyLocked()
	return len(p), nil
}

// read returns deliverable bytes, waiting for them. While the link is
// paused, what arrived before the pause can be read; what arrives after
// is held until it resumes.
func (h *half) read(p []byte, dl *deadline) (int, error) {
	for {
		h.mu.Lock()
		if h.broken != nil {
			err := h.broken
			h.mu.Unlock()
			return 0, err
		}
		var wake <-chan time.Time
		if len(h.chunks) > 0 {
			c := &h.chunks[0]
			if since, paused := h.link.heldSince(); !paused || !c.at.After(since) {
				if wait := time.Until(c.at); wait <= 0 {
					n := copy(p, c.b)
					c.b = c.b[n:]
					if len(c.b) == 0 {
						h.chunks = h.chunks[1:]
					}
					h.buffered -= n
					h.notifyLocked()
					h.mu.Unlock()
					return n, nil
				} else {
					t := time.NewTimer(wait)
					defer t.Stop()
					wake = t.C
				}
			}
		} else if h.eof {
			h.mu.Unlock()
			return 0, io.EOF
		}
		ch := h.changed
		h.mu.Unlock()
		select {
		case <-ch:
		case <-h.link.watch():
		case <-wake:
		case <-dl.wait():
			return 0, timeoutErr{"read"}
		}
	}
}

// pipeEnd is one end of a connection.
type pipeEnd struct {
	n             *Network
	rd, wr        *half
	local, remote simAddr
	peer          *pipeEnd
	rdl, wdl      deadlinePair
	once          sync.Once
}

type deadlinePair struct {
	once sync.Once
	d    *deadline
}

func (p *deadlinePair) get() *deadline {
	p.once.Do(func() { p.d = newDeadline() })
	return p.d
}

func (c *pipeEnd) Read(b []byte) (int, error)  { return c.rd.read(b, c.rdl.get()) }
func (c *pipeEnd) Write(b []byte) (int, error) { return c.wr.write(b, c.wdl.get()) }

// Close ends both directions: the peer reads what was sent, then EOF; its
// writes fail.
func (c *pipeEnd) Close() error {
	c.once.Do(func() {
		c.wr.closeWrite()
		c.rd.fail(errClosedPipe)
		c.n.mu.Lock()
		delete(c.n.conns, c)
		c.n.mu.Unlock()
	})
	return nil
}

// CloseWrite half-closes: the peer reads EOF after what was sent.
func (c *pipeEnd) CloseWrite() error {
	c.wr.closeWrite()
	return nil
}

func (c *pipeEnd) reset() {
	c.rd.fail(ErrReset)
	c.wr.fail(ErrReset)
	c.n.mu.Lock()
	delete(c.n.conns, c)
	delete(c.n.conns, c.peer)
	c.n.mu.Unlock()
}

func (c *pipeEnd) LocalAddr() net.Addr  { return c.local }
func (c *pipeEnd) RemoteAddr() net.Addr { return c.remote }

func (c *pipeEnd) SetDeadline(t time.Time) error {
	c.rdl.get().set(t)
	c.wdl.get().set(t)
	return nil
}
func (c *pipeEnd) SetReadDeadline(t time.Time) error  { c.rdl.get().set(t); return nil }
func (c *pipeEnd) SetWriteDeadline(t time.Time) error { c.wdl.get().set(t); return nil }

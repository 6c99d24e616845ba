package netsim

import (
	"io"
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
type half struct {
	link *Link

	mu       sync.Mutex
	chunks   []chunk
	buffered int
	last     time.Time // when the last chunk becomes deliverable
	eof      bool      // the writer closed: EOF after the chunks
	broken   error     // reset or reader gone: reads and writes fail
	changed  chan struct{}
}

func newHalf(l *Link) *half { return &half{link: l, changed: make(chan struct{})} }

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

// write queues p, blocking while the buffer is full.
func (h *half) write(p []byte, dl *deadline) (int, error) {
	n := 0
	for len(p) > 0 {
		h.mu.Lock()
		if h.broken != nil {
			err := h.broken
			h.mu.Unlock()
			return n, err
		}
		if h.eof {
			h.mu.Unlock()
			return n, net.ErrClosed
		}
		space := bufferSize - h.buffered
		if space <= 0 {
			ch := h.changed
			h.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-dl.wait():
				return n, timeoutErr{"write"}
			}
		}
		k := min(space, len(p), 32<<10)
		b := append([]byte(nil), p[:k]...)
		latency, jitter, bw := h.link.Shape()
		now := time.Now()
		at := now.Add(latency)
		if jitter > 0 {
			at = at.Add(time.Duration(float64(jitter) * h.link.rand()))
		}
		if at.Before(h.last) {
			at = h.last // bytes stay in order
		}
		if bw > 0 {
			at = at.Add(time.Duration(float64(k) / float64(bw) * float64(time.Second)))
		}
		h.last = at
		h.chunks = append(h.chunks, chunk{b: b, at: at})
		h.buffered += k
		h.notifyLocked()
		h.mu.Unlock()
		n += k
		p = p[k:]
	}
	return n, nil
}

// read returns deliverable bytes, waiting for them.
func (h *half) read(p []byte, dl *deadline) (int, error) {
	for {
		h.mu.Lock()
		if h.broken != nil {
			err := h.broken
			h.mu.Unlock()
			return 0, err
		}
		var wake <-chan time.Time
		if len(h.chunks) > 0 && !h.link.isPaused() {
			c := &h.chunks[0]
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
		} else if len(h.chunks) == 0 && h.eof {
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

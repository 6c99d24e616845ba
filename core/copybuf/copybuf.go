package copybuf

import (
	"errors"
	"io"
	"sync"
)

// Size is the size of the pooled buffers: io.Copy's own, and larger than a
// TLS record (16 KiB), so a busy stream moves a record or more per call.
const Size = 32 << 10

// IdleSize is the buffer Copy reads into while its source has been
// sending little: what an idle stream holds while it waits.
const IdleSize = 2 << 10

var pool = sync.Pool{New: func() any {
	b := make([]byte, Size)
	return &b
}}

// Pool is an httputil.BufferPool of Size-byte buffers shared by every
// reverse proxy in the process.
var Pool bufferPool

type bufferPool struct{}

// Get returns a Size-byte buffer from the pool.
func (bufferPool) Get() []byte { return *pool.Get().(*[]byte) }

// Put returns a buffer taken with Get. Buffers of another size are
// dropped, so a caller can never shrink or grow what others get.
func (bufferPool) Put(b []byte) {
	if cap(b) != Size {
		return
	}
	b = b[:Size]
	pool.Put(&b)
}

// Copy copies from src to dst until src ends (io.EOF, which is not an
// error) or either fails, as io.Copy does, and returns the bytes copied.
// It reads into an IdleSize buffer until a read fills it, then into a
// pooled Size buffer, which it gives back once a read would have fitted
// the small one again: so a stream that waits (an idle watch, a quiet
// exec session) holds IdleSize bytes, and one that streams holds Size.
func Copy(dst io.Writer, src io.Reader) (written int64, err error) {
	small := make([]byte, IdleSize)
	buf := small
	var big *[]byte
	defer func() {
		if big != nil {
			pool.Put(big)
		}
	}()
	for {
		nr, er := src.Read(buf)
		if nr > 0 {
			nw, ew := dst.Write(buf[:nr])
			if nw < 0 || nw > nr {
				nw = 0
				if ew == nil {
					ew = errors.New("copybuf: invalid write result")
				}
			}
			written += int64(nw)
			if ew != nil {
				return written, ew
			}
			if nw != nr {
				return written, io.ErrShortWrite
			}
		}
		if er != nil {
			if er == io.EOF {
				return written, nil
			}
			return written, er
		}
		switch {
		case big == nil && nr == len(small):
			big = pool.Get().(*[]byte)
			buf = *big
		case big != nil && nr < IdleSize:
			pool.Put(big)
			big = nil
			buf = small
		}
	}
}

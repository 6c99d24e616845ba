package copybuf

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
)

// script is a reader that answers each Read with the next count of bytes
// (at most what fits) and records the size of the buffer it was given.
type script struct {
	counts []int
	sizes  []int
	src    *rand.ChaCha8
	sent   bytes.Buffer
}

func (s *script) Read(p []byte) (int, error) {
	s.sizes = append(s.sizes, len(p))
	if len(s.counts) == 0 {
		return 0, io.EOF
	}
	n := min(s.counts[0], len(p))
	s.counts = s.counts[1:]
	_, _ = s.src.Read(p[:n])
	s.sent.Write(p[:n])
	return n, nil
}

func TestCopyHoldsSmallBufferWhenIdle(t *testing.T) {
	// A burst (reads that fill the buffer), then a trickle, then a burst.
	s := &script{counts: []int{IdleSize, Size, Size, 100, 10, IdleSize, 5000, 1}, src: rand.NewChaCha8([32]byte{1})}
	var out bytes.Buffer
	n, err := Copy(&out, s)
	if err != nil {
		t.Fatalf("Copy: %v", err)
	}
	if n != int64(s.sent.Len()) || !bytes.Equal(out.Bytes(), s.sent.Bytes()) {
		t.Fatalf("copied %d bytes, want the %d sent, unchanged", n, s.sent.Len())
	}
	want := []int{IdleSize, Size, Size, Size, IdleSize, IdleSize, Size, Size, IdleSize}
	if len(s.sizes) != len(want) {
		t.Fatalf("read buffer sizes %v, want %v", s.sizes, want)
	}
	for i := range want {
		if s.sizes[i] != want[i] {
			t.Fatalf("read buffer sizes %v, want %v", s.sizes, want)
		}
	}
}

func TestCopyMatchesIOCopy(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	for i := range 50 {
		data := make([]byte, r.IntN(300_000))
		for j := range data {
			data[j] = byte(r.Uint32())
		}
		var out bytes.Buffer
		n, err := Copy(&out, &chunky{data: data, r: r})
		if err != nil || n != int64(len(data)) || !bytes.Equal(out.Bytes(), data) {
			t.Fatalf("case %d: Copy = %d, %v; want %d bytes unchanged", i, n, err, len(data))
		}
	}
}

// chunky hands out its data in random-sized reads.
type chunky struct {
	data []byte
	r    *rand.Rand
}

func (c *chunky) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), 1+c.r.IntN(len(p)))], c.data)
	c.data = c.data[n:]
	return n, nil
}

type failingWriter struct{ n int }

func (w failingWriter) Write(p []byte) (int, error) { return min(w.n, len(p)), errors.New("disk full") }

type shortWriter struct{}

func (shortWriter) Write(p []byte) (int, error) { return len(p) / 2, nil }

type failingReader struct{ err error }

func (r failingReader) Read([]byte) (int, error) { return 0, r.err }

func TestCopyErrors(t *testing.T) {
	if n, err := Copy(failingWriter{n: 3}, bytes.NewReader([]byte("hello"))); n != 3 || err == nil || err.Error() != "disk full" {
		t.Errorf("write error: Copy = %d, %v; want 3, disk full", n, err)
	}
	if n, err := Copy(shortWriter{}, bytes.NewReader([]byte("hello"))); n != 2 || !errors.Is(err, io.ErrShortWrite) {
		t.Errorf("short write: Copy = %d, %v; want 2, %v", n, err, io.ErrShortWrite)
	}
	cut := errors.New("connection reset")
	if _, err := Copy(io.Discard, failingReader{err: cut}); !errors.Is(err, cut) {
		t.Errorf("read error: Copy = %v; want %v", err, cut)
	}
}

func TestPoolKeepsSize(t *testing.T) {
	b := Pool.Get()
	if len(b) != Size {
		t.Fatalf("Pool.Get: %d bytes, want %d", len(b), Size)
	}
	Pool.Put(b[:10])
	Pool.Put(make([]byte, 5)) // another size: dropped
	for range 10 {
		if got := Pool.Get(); len(got) != Size {
			t.Fatalf("Pool.Get after Put: %d bytes, want %d", len(got), Size)
		}
	}
}

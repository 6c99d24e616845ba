package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// A link stands for a long network path where netem is not available (a
// kernel without sch_netem): a TCP forwarder that holds every chunk it reads
// for half the round-trip time before writing it on, in each direction.
// Flow control at the application level (yamux windows, SSH channel
// windows, HTTP/2 windows) sees the full round-trip time, since its window
// updates cross the link too. TCP's own window is not emulated: the link
// acknowledges at once and queues at most LinkQueue bytes per direction,
// which stands for the largest receive window TCP would grow to.

// LinkQueue bounds the bytes a link holds per direction of a connection.
const LinkQueue = 32 << 20

// linkChunk is the most a link reads at once.
const linkChunk = 64 << 10

// LinkArgs are the arguments of the link role.
type LinkArgs struct {
	// Bind is the address its forwards listen on.
	Bind string
}

// Link is a running link process.
type Link struct {
	proc *Proc
}

// StartLink starts a link at p.
func StartLink(ctx context.Context, t *Topology, dir, name string, p Place) (*Link, error) {
	proc, err := Start(ctx, t, dir, Spec{Name: name, Place: p, Role: "link", Args: LinkArgs{Bind: t.Bind(p)}})
	if err != nil {
		return nil, err
	}
	return &Link{proc: proc}, nil
}

// Forward has the link listen on a new port and forward each connection to
// target (as the link's place reaches it); it returns the port.
func (l *Link) Forward(target string) (int, error) {
	var r struct{ Port int }
	if err := l.proc.Call("forward", map[string]string{"Target": target}, &r); err != nil {
		return 0, err
	}
	return r.Port, nil
}

// SetRTT sets the round-trip time the link adds (half each way), for the
// data read from now on.
func (l *Link) SetRTT(rtt time.Duration) error {
	return l.proc.Call("rtt", map[string]int64{"Nanos": int64(rtt)}, nil)
}

// Stop stops the link.
func (l *Link) Stop() error { return l.proc.Stop() }

// LinkRole runs a link.
func LinkRole(ctx context.Context, raw json.RawMessage, c *Child) error {
	var args LinkArgs
	if err := json.Unmarshal(raw, &args); err != nil {
		return fmt.Errorf("link: arguments: %w", err)
	}
	var half atomic.Int64 // nanoseconds each way
	var wg sync.WaitGroup
	var mu sync.Mutex
	var listeners []net.Listener
	defer func() {
		mu.Lock()
		for _, l := range listeners {
			_ = l.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
	c.OnCommand("rtt", func(arg json.RawMessage) (any, error) {
		var a struct{ Nanos int64 }
		if err := json.Unmarshal(arg, &a); err != nil {
			return nil, fmt.Errorf("link: rtt: %w", err)
		}
		half.Store(a.Nanos / 2)
		return struct{}{}, nil
	})
	c.OnCommand("forward", func(arg json.RawMessage) (any, error) {
		var a struct{ Target string }
		if err := json.Unmarshal(arg, &a); err != nil {
			return nil, fmt.Errorf("link: forward: %w", err)
		}
		l, err := net.Listen("tcp", net.JoinHostPort(args.Bind, "0"))
		if err != nil {
			return nil, fmt.Errorf("link: listen: %w", err)
		}
		mu.Lock()
		listeners = append(listeners, l)
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			serveLink(ctx, l, a.Target, &half)
		}()
		return map[string]int{"Port": l.Addr().(*net.TCPAddr).Port}, nil
	})
	if err := c.Ready(struct{}{}); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

// serveLink forwards every connection l accepts to target, delayed.
func serveLink(ctx context.Context, l net.Listener, target string, half *atomic.Int64) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		in, err := l.Accept()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer in.Close()
			var d net.Dialer
			out, err := d.DialContext(ctx, "tcp", target)
			if err != nil {
				return
			}
			defer out.Close()
			stop := context.AfterFunc(ctx, func() { _ = in.Close(); _ = out.Close() })
			defer stop()
			var pipes sync.WaitGroup
			pipes.Add(2)
			go func() { defer pipes.Done(); delayedCopy(out, in, half) }()
			go func() { defer pipes.Done(); delayedCopy(in, out, half) }()
			pipes.Wait()
		}()
	}
}

type linkData struct {
	b   []byte
	due time.Time
}

// delayedCopy copies src to dst, each chunk half later than it was read,
// then half-closes dst.
func delayedCopy(dst, src net.Conn, half *atomic.Int64) {
	q := make(chan linkData, LinkQueue/linkChunk)
	done := make(chan struct{})
	go func() {
		defer close(done)
		failed := false
		for d := range q {
			if failed {
				continue // drain, so the reader is never stuck on a full queue
			}
			if w := time.Until(d.due); w > 0 {
				time.Sleep(w)
			}
			if _, err := dst.Write(d.b); err != nil {
				failed = true
				_ = src.Close()
			}
		}
		if cw, ok := dst.(interface{ CloseWrite() error }); ok && !failed {
			_ = cw.CloseWrite()
		}
	}()
	for {
		buf := make([]byte, linkChunk)
		n, err := src.Read(buf)
		if n > 0 {
			q <- linkData{b: buf[:n], due: time.Now().Add(time.Duration(half.Load()))}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				_ = dst.Close()
			}
			break
		}
	}
	close(q)
	<-done
}

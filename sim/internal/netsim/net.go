package netsim

import (
	"context"
	"fmt"
	"hash/fnv"
	"net"
	"os"
	"sort"
	"sync"
	"syscall"
	"time"
)

// Errors the network returns, wrapped with what failed.
var (
	ErrRefused = &net.OpError{Op: "dial", Net: "sim", Err: syscall.ECONNREFUSED}
	ErrReset   = syscall.ECONNRESET
)

// bufferSize is how many bytes one direction of a connection holds before
// its writer blocks, like a socket's buffers.
const bufferSize = 256 << 10

// Network is an in-memory network of named hosts. The zero value is not
// usable; call New.
type Network struct {
	mu        sync.Mutex
	listeners map[string]*listener
	links     map[[2]string]*Link
	conns     map[*pipeEnd]struct{}
	ports     map[string]int // the next local port per host
	seed      uint64
	// DialTimeout bounds a dial across a partition. Zero means 3 s.
	DialTimeout time.Duration
}

// New returns an empty network; seed drives the links' jitter, so a run
// can be replayed. Nothing on the network draws from a shared source: each
// direction of each connection has its own, seeded from seed, the link and
// the connection's place among the link's connections, and local ports
// count up per host; so what one connection draws does not depend on how
// other connections' goroutines were scheduled.
func New(seed uint64) *Network {
	return &Network{listeners: map[string]*listener{}, links: map[[2]string]*Link{}, conns: map[*pipeEnd]struct{}{},
		ports: map[string]int{}, seed: seed}
}

// Link returns the link from host a to host b: the faults on what a sends
// to b. Links are created on first use, without faults.
func (n *Network) Link(a, b string) *Link {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.link(a, b)
}

func (n *Network) link(a, b string) *Link {
	k := [2]string{a, b}
	l := n.links[k]
	if l == nil {
		h := fnv.New64a()
		_, _ = h.Write([]byte(a + "\x00" + b))
		l = &Link{From: a, To: b, changed: make(chan struct{}), seed: [2]uint64{n.seed, h.Sum64()}}
		n.links[k] = l
	}
	return l
}

// Host is one party on the network.
type Host struct {
	n    *Network
	Name string
}

// Host returns the host called name.
func (n *Network) Host(name string) *Host { return &Host{n: n, Name: name} }

// Listen listens on port of the host: "name:port".
func (h *Host) Listen(port int) (net.Listener, error) {
	addr := fmt.Sprintf("%s:%d", h.Name, port)
	h.n.mu.Lock()
	defer h.n.mu.Unlock()
	if _, ok := h.n.listeners[addr]; ok {
		return nil, fmt.Errorf("netsim: listen %s: address in use", addr)
	}
	l := &listener{n: h.n, addr: simAddr(addr), accept: make(chan *pipeEnd), closed: make(chan struct{})}
	h.n.listeners[addr] = l
	return l, nil
}

// DialContext connects from the host to addr ("name:port"), as
// net.Dialer.DialContext does; network is ignored.
func (h *Host) DialContext(ctx context.Context, _, addr string) (net.Conn, error) {
	n := h.n
	timeout := n.DialTimeout
	if timeout == 0 {
		timeout = 3 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("netsim: dial %s: %w", addr, err)
	}
	out, back := n.Link(h.Name, host), n.Link(host, h.Name)
	// A partition drops the SYN: the dial hangs until it heals or times out.
	for out.down() || back.down() {
		ch1, ch2 := out.watch(), back.watch()
		if !out.down() && !back.down() {
			break
		}
		select {
		case <-ctx.Done():
			return nil, &net.OpError{Op: "dial", Net: "sim", Addr: simAddr(addr), Err: os.ErrDeadlineExceeded}
		case <-ch1:
		case <-ch2:
		}
	}
	n.mu.Lock()
	l := n.listeners[addr]
	n.mu.Unlock()
	if l == nil {
		return nil, &net.OpError{Op: "dial", Net: "sim", Addr: simAddr(addr), Err: syscall.ECONNREFUSED}
	}
	n.mu.Lock()
	port := 40000 + n.ports[h.Name]%20000
	n.ports[h.Name]++
	n.mu.Unlock()
	local := simAddr(fmt.Sprintf("%s:%d", h.Name, port))
	a2b, b2a := newHalf(out), newHalf(back)
	client := &pipeEnd{n: n, rd: b2a, wr: a2b, local: local, remote: simAddr(addr)}
	server := &pipeEnd{n: n, rd: a2b, wr: b2a, local: simAddr(addr), remote: local}
	client.peer, server.peer = server, client
	n.mu.Lock()
	n.conns[client], n.conns[server] = struct{}{}, struct{}{}
	n.mu.Unlock()
	select {
	case l.accept <- server:
		return client, nil
	case <-l.closed:
		return nil, &net.OpError{Op: "dial", Net: "sim", Addr: simAddr(addr), Err: syscall.ECONNREFUSED}
	case <-ctx.Done():
		_ = client.Close()
		return nil, &net.OpError{Op: "dial", Net: "sim", Addr: simAddr(addr), Err: os.ErrDeadlineExceeded}
	}
}

// ResetHost resets every connection that has an end on host (a process
// killed: its peers see a reset) and returns how many.
func (n *Network) ResetHost(host string) int {
	n.mu.Lock()
	var ends []*pipeEnd
	for c := range n.conns {
		if h, _, _ := net.SplitHostPort(c.local.String()); h == host {
			ends = append(ends, c)
		}
	}
	n.mu.Unlock()
	for _, c := range ends {
		c.reset()
	}
	return len(ends)
}

// ResetLinks resets every connection between a and b (a middlebox timing
// out) and returns how many.
func (n *Network) ResetLinks(a, b string) int {
	n.mu.Lock()
	var ends []*pipeEnd
	for c := range n.conns {
		if c.wr.link.From == a && c.wr.link.To == b {
			ends = append(ends, c)
		}
	}
	n.mu.Unlock()
	for _, c := range ends {
		c.reset()
	}
	return len(ends)
}

// Conns returns how many connection ends are open: neither closed nor
// reset.
func (n *Network) Conns() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.conns)
}

// Open lists what is still open, sorted: each connection end not closed
// nor reset ("conn local -> remote") and each listener not closed
// ("listener addr"). After every party has shut down it must be empty: an
// entry is a connection or listener that its owner forgot to close.
func (n *Network) Open() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for c := range n.conns {
		out = append(out, fmt.Sprintf("conn %s -> %s", c.local, c.remote))
	}
	for addr := range n.listeners {
		out = append(out, "listener "+addr)
	}
	sort.Strings(out)
	return out
}

// Hosts lists the hosts that have a listener or a link, sorted.
func (n *Network) Hosts() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	seen := map[string]bool{}
	for _, l := range n.links {
		seen[l.From], seen[l.To] = true, true
	}
	var out []string
	for h := range seen {
		out = append(out, h)
	}
	sort.Strings(out)
	return out
}

type simAddr string

func (a simAddr) Network() string { return "sim" }
func (a simAddr) String() string  { return string(a) }

type listener struct {
	n      *Network
	addr   simAddr
	accept chan *pipeEnd
	closed chan struct{}
	once   sync.Once
}

func (l *listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.accept:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *listener) Close() error {
	l.once.Do(func() {
		close(l.closed)
		l.n.mu.Lock()
		if l.n.listeners[string(l.addr)] == l {
			delete(l.n.listeners, string(l.addr))
		}
		l.n.mu.Unlock()
	})
	return nil
}

func (l *listener) Addr() net.Addr { return l.addr }

// errClosedPipe is what a write to a closed peer returns.
var errClosedPipe = syscall.EPIPE

// deadline is a settable deadline with a channel closed when it passes.
type deadline struct {
	mu    sync.Mutex
	t     *time.Timer
	ch    chan struct{}
	fired bool
}

func newDeadline() *deadline { return &deadline{ch: make(chan struct{})} }

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.t != nil {
		d.t.Stop()
		d.t = nil
	}
	if d.fired {
		d.ch = make(chan struct{})
		d.fired = false
	}
	if t.IsZero() {
		return
	}
	dur := time.Until(t)
	if dur <= 0 {
		close(d.ch)
		d.fired = true
		return
	}
	ch := d.ch
	d.t = time.AfterFunc(dur, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.ch == ch && !d.fired {
			close(ch)
			d.fired = true
		}
	})
}

func (d *deadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ch
}

var errDeadline = os.ErrDeadlineExceeded

// errIsTimeout reports a deadline error as net.Error with Timeout.
type timeoutErr struct{ op string }

func (e timeoutErr) Error() string   { return "netsim: " + e.op + ": i/o timeout" }
func (e timeoutErr) Timeout() bool   { return true }
func (e timeoutErr) Temporary() bool { return true }
func (e timeoutErr) Is(target error) bool {
	return target == errDeadline
}

package load

import (
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"time"
)

// Dial opens a connection that reaches the target's HTTP server through a
// contender (after whatever handshakes the contender's client side needs).
type Dial func(ctx context.Context) (net.Conn, error)

// Host is the Host header of every request: tether-proxy accepts only a
// loopback name, and the target ignores it.
const Host = "127.0.0.1"

// URL returns the URL of path on the target.
func URL(path string) string { return "http://" + Host + path }

// NewClient returns an HTTP/1.1 client whose connections come from dial and
// that keeps up to conns of them alive, so that requests reuse connections
// as kubectl and client-go do.
func NewClient(dial Dial, conns int) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext:         func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) },
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     conns,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
		// Large responses are read by the caller; 64 KiB buffers keep the
		// client from being the bottleneck.
		ReadBufferSize:  64 << 10,
		WriteBufferSize: 16 << 10,
	}}
}

// CloseIdle closes the client's idle connections.
func CloseIdle(c *http.Client) { c.CloseIdleConnections() }

// Get sends GET path and reads the whole body. It fails unless the status is
// 200 and, when want is not negative, the body has want bytes.
func Get(ctx context.Context, c *http.Client, path string, want int64) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, URL(path), nil)
	if err != nil {
		return 0, fmt.Errorf("load: request %s: %w", path, err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, fmt.Errorf("load: GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return n, fmt.Errorf("load: GET %s: %s", path, resp.Status)
	}
	if err != nil {
		return n, fmt.Errorf("load: GET %s: read body after %d bytes: %w", path, n, err)
	}
	if want >= 0 && n != want {
		return n, fmt.Errorf("load: GET %s: %d bytes, want %d", path, n, want)
	}
	return n, nil
}

// Latencies is a set of measured durations.
type Latencies []time.Duration

// Sorted returns a sorted copy.
func (l Latencies) Sorted() Latencies {
	s := slices.Clone(l)
	slices.Sort(s)
	return s
}

// Quantile returns the q-quantile (0 ≤ q ≤ 1) of sorted durations, by the
// nearest-rank method; zero when there are none.
func (l Latencies) Quantile(q float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(l)))) - 1
	i = max(0, min(i, len(l)-1))
	return l[i]
}

// Counter counts outcomes of requests and keeps the first error.
type Counter struct {
	// OK and Failed count successes and failures.
	OK, Failed int64
	// First is the first failure.
	First error
}

// Add counts err (nil is a success), ignoring errors once ctx ended: those
// are requests the end of the run cut.
func (c *Counter) Add(ctx context.Context, err error) {
	switch {
	case err == nil:
		c.OK++
	case ctx.Err() != nil:
	default:
		c.Failed++
		if c.First == nil {
			c.First = err
		}
	}
}

// Merge adds o's counts to c.
func (c *Counter) Merge(o Counter) {
	c.OK += o.OK
	c.Failed += o.Failed
	if c.First == nil {
		c.First = o.First
	}
}

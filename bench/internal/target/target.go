package target

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tether-k8s/tether/bench/internal/node"
)

// Paths the target serves.
const (
	SmallPath        = "/api/v1/namespaces/bench/configmaps/small"
	LargePath        = "/api/v1/namespaces/bench/configmaps/large"
	EchoPath         = "/api/v1/namespaces/bench/pods/echo/exec"
	WatchPath        = "/api/v1/namespaces/bench/configmaps"
	ControlBroadcast = "/bench/broadcast"
	ControlStats     = "/bench/stats"
)

// SmallBodySize is the size of SmallPath's body.
const SmallBodySize = 1024

// MaxLargeBytes caps LargePath's size.
const MaxLargeBytes = 4 << 30

// Args configures the target role.
type Args struct {
	// Listen is the address to listen on.
	Listen string
}

// Ready is what the target role reports once it serves.
type Ready struct {
	// Port is the port it listens on.
	Port int
}

// Event is one line of a watch.
type Event struct {
	// Type is always MODIFIED.
	Type string `json:"type"`
	// SentUnixNano is when the target sent the event.
	SentUnixNano int64 `json:"sentUnixNano"`
}

// Server is the target's HTTP handler.
type Server struct {
	small   []byte
	pattern []byte
	mu      sync.Mutex
	watches map[chan int64]struct{}
}

// NewServer returns the target's handler.
func NewServer() *Server {
	s := &Server{pattern: make([]byte, 1<<20), watches: map[chan int64]struct{}{}}
	_, _ = rand.Read(s.pattern)
	body := map[string]any{"apiVersion": "v1", "kind": "ConfigMap", "metadata": map[string]any{"name": "small", "namespace": "bench"}}
	b, _ := json.Marshal(body)
	pad := SmallBodySize - len(b) - len(`,"data":{"pad":""}`)
	body["data"] = map[string]string{"pad": strings.Repeat("x", pad)}
	s.small, _ = json.Marshal(body)
	return s
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == SmallPath:
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(s.small)))
		_, _ = w.Write(s.small)
	case r.URL.Path == LargePath:
		s.large(w, r)
	case r.URL.Path == EchoPath && r.Header.Get("Upgrade") != "":
		s.echo(w, r)
	case r.URL.Path == WatchPath && r.URL.Query().Get("watch") == "true":
		s.watch(w, r)
	case r.URL.Path == ControlBroadcast && r.Method == http.MethodPost:
		n := s.broadcast(time.Now().UnixNano())
		_, _ = fmt.Fprintf(w, "%d\n", n)
	case r.URL.Path == ControlStats:
		s.mu.Lock()
		n := len(s.watches)
		s.mu.Unlock()
		_ = json.NewEncoder(w).Encode(map[string]int{"watches": n})
	default:
		http.NotFound(w, r)
	}
}

func (s *Server) large(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.ParseInt(r.URL.Query().Get("bytes"), 10, 64)
	if err != nil || n < 0 || n > MaxLargeBytes {
		http.Error(w, "bytes: want 0 to 4 GiB", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	for n > 0 {
		chunk := s.pattern
		if int64(len(chunk)) > n {
			chunk = chunk[:n]
		}
		m, err := w.Write(chunk)
		if err != nil {
			return
		}
		n -= int64(m)
	}
}

// echo answers an upgrade with 101 and echoes until the caller closes.
func (s *Server) echo(w http.ResponseWriter, _ *http.Request) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	_, _ = io.WriteString(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n")
	if err := brw.Flush(); err != nil {
		return
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := brw.Read(buf)
		if n > 0 {
			if _, werr := conn.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (s *Server) watch(w http.ResponseWriter, r *http.Request) {
	ch := make(chan int64, 16)
	s.mu.Lock()
	s.watches[ch] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.watches, ch)
		s.mu.Unlock()
	}()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	if err := rc.Flush(); err != nil {
		return
	}
	enc := json.NewEncoder(w)
	for {
		select {
		case <-r.Context().Done():
			return
		case ts := <-ch:
			if err := enc.Encode(Event{Type: "MODIFIED", SentUnixNano: ts}); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
		}
	}
}

// broadcast sends an event to every open watch and returns how many.
func (s *Server) broadcast(ts int64) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ch := range s.watches {
		select {
		case ch <- ts:
		default: // that watch is behind; it gets the next one
		}
	}
	return len(s.watches)
}

// Role runs the target server.
func Role(ctx context.Context, raw json.RawMessage, c *node.Child) error {
	var args Args
	if err := json.Unmarshal(raw, &args); err != nil {
		return fmt.Errorf("target: arguments: %w", err)
	}
	l, err := net.Listen("tcp", args.Listen)
	if err != nil {
		return fmt.Errorf("target: listen: %w", err)
	}
	srv := &http.Server{Handler: NewServer(), ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: 64 << 10}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	if err := c.Ready(Ready{Port: l.Addr().(*net.TCPAddr).Port}); err != nil {
		_ = srv.Close()
		<-errc
		return err
	}
	select {
	case err := <-errc:
		return fmt.Errorf("target: serve: %w", err)
	case <-ctx.Done():
	}
	_ = srv.Close()
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("target: serve: %w", err)
	}
	return nil
}

// ReadEvent reads one watch event from r.
func ReadEvent(r *bufio.Reader) (Event, error) {
	line, err := r.ReadBytes('\n')
	if err != nil {
		return Event{}, fmt.Errorf("target: read watch event: %w", err)
	}
	var e Event
	if err := json.Unmarshal(line, &e); err != nil {
		return Event{}, fmt.Errorf("target: watch event %q: %w", line, err)
	}
	return e, nil
}

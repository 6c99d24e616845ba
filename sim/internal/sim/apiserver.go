package sim

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// ClientHeader carries the simulated client's ID to the stand-in API
// server, so that what the server saw can be matched to who asked. It is
// not an identity header: the agent passes it on unchanged.
const ClientHeader = "X-Sim-Client"

// Seen is one request as a stand-in API server saw it.
type Seen struct {
	Cluster string
	Client  string
	// User is the identity the agent asked the server to act as.
	User string
	// Credential is the Authorization header: the agent's own.
	Credential string
	Path       string
	At         time.Time
}

// APIServer is the stand-in for one cluster's kube-apiserver: it answers the
// calls the simulated traffic makes, names its cluster in every answer,
// and keeps a history of what it saw.
type APIServer struct {
	Cluster string
	// Token is the agent's service-account token it expects.
	Token string

	mu      sync.Mutex
	history []Seen
	rv      int64
}

// History returns what the server saw.
func (s *APIServer) History() []Seen {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Seen(nil), s.history...)
}

func (s *APIServer) nextRV() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rv++
	return s.rv
}

// Item is a listed or watched object.
type Item struct {
	Cluster         string `json:"cluster"`
	ResourceVersion int64  `json:"resourceVersion"`
	Type            string `json:"type,omitempty"`
}

// Handler serves:
//
//	GET  /api/v1/configmaps            a list: {"cluster", "resourceVersion"}
//	GET  /api/v1/configmaps?watch=1    one Item per line, every 100 ms, in order
//	GET  /api/v1/pods/log?follow=1     a line per 100 ms naming the cluster
//	GET  /bulk?n=N&seed=S              N pseudo-random bytes from seed S
//	POST /upload                       answers the body's length and SHA-256
//	POST ExecPath (Upgrade: SPDY/3.1)  101, then echoes
func (s *APIServer) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.history = append(s.history, Seen{Cluster: s.Cluster, Client: r.Header.Get(ClientHeader), User: r.Header.Get("Impersonate-User"),
			Credential: r.Header.Get("Authorization"), Path: r.URL.Path, At: time.Now()})
		s.mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer "+s.Token {
			http.Error(w, "stand-in API server: not the agent's credential", http.StatusUnauthorized)
			return
		}
		switch {
		case r.URL.Path == "/api/v1/configmaps" && r.URL.Query().Get("watch") != "":
			s.watch(w, r)
		case r.URL.Path == "/api/v1/configmaps":
			writeItem(w, Item{Cluster: s.Cluster, ResourceVersion: s.nextRV()})
		case r.URL.Path == "/api/v1/pods/log":
			s.logs(w, r)
		case r.URL.Path == "/bulk":
			n, _ := strconv.Atoi(r.URL.Query().Get("n"))
			seed, _ := strconv.ParseUint(r.URL.Query().Get("seed"), 10, 64)
			w.Header().Set("Content-Length", strconv.Itoa(n))
			_, _ = io.CopyN(w, Payload(seed), int64(n))
		case r.URL.Path == "/upload" && r.Method == http.MethodPost:
			h := sha256.New()
			n, err := io.Copy(h, r.Body)
			if err != nil {
				return
			}
			_ = json.NewEncoder(w).Encode(map[string]any{"cluster": s.Cluster, "n": n, "sha256": hex.EncodeToString(h.Sum(nil))})
		case r.URL.Path == ExecPath && r.Header.Get("Upgrade") != "":
			s.exec(w)
		default:
			http.NotFound(w, r)
		}
	})
}

func writeItem(w io.Writer, it Item) {
	b, _ := json.Marshal(it)
	_, _ = w.Write(append(b, '\n'))
}

// watch streams an event every 100 ms until the client goes.
func (s *APIServer) watch(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		writeItem(w, Item{Cluster: s.Cluster, ResourceVersion: s.nextRV(), Type: "MODIFIED"})
		if rc.Flush() != nil {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-t.C:
		}
	}
}

// logs follows a log: one line per 100 ms.
func (s *APIServer) logs(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for i := 0; ; i++ {
		if _, err := fmt.Fprintf(w, "%s line %d\n", s.Cluster, i); err != nil || rc.Flush() != nil {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-t.C:
		}
	}
}

// exec answers an upgrade and echoes, as a shell running cat would.
func (s *APIServer) exec(w http.ResponseWriter) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	_, _ = io.WriteString(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n")
	_ = brw.Flush()
	_, _ = io.Copy(conn, bufio.NewReader(brw))
}

// Payload returns the endless pseudo-random byte stream for seed that /bulk
// serves, so that the client can check what it received.
func Payload(seed uint64) io.Reader { return &payload{r: rand.New(rand.NewPCG(seed, 7))} }

type payload struct{ r *rand.Rand }

func (p *payload) Read(b []byte) (int, error) {
	for i := range b {
		b[i] = byte(p.r.Uint32())
	}
	return len(b), nil
}

// ExecPath is where the stand-in API server answers exec upgrades.
const ExecPath = "/api/v1/namespaces/default/pods/sim/exec"

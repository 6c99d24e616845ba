package authn

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// DefaultKeySetRefresh is the default least time between two fetches of
// one issuer document (discovery, keys).
const DefaultKeySetRefresh = 10 * time.Second

// maxIssuerDocument caps an issuer document's size.
const maxIssuerDocument = 1 << 20

// refreshLimiter is the transport of an issuer's client. A token signed
// with a key the authenticator does not know makes it fetch the issuer's
// keys again; without a limit anyone could make the relay fetch them once
// per token it sends. Within every of a URL's last fetch, the limiter
// answers from that fetch's document (or, if it failed, with an error)
// instead of asking the issuer again. Keys an issuer adds are picked up
// at most every later.
type refreshLimiter struct {
	next  http.RoundTripper
	every time.Duration
	mu    sync.Mutex
	last  map[string]issuerDoc
}

type issuerDoc struct {
	at     time.Time
	header http.Header
	body   []byte // nil when that fetch failed
}

func (l *refreshLimiter) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method != http.MethodGet {
		return l.next.RoundTrip(r)
	}
	key := r.URL.String()
	l.mu.Lock()
	d, seen := l.last[key]
	l.mu.Unlock()
	if seen && time.Since(d.at) < l.every {
		if d.body == nil {
			return nil, fmt.Errorf("authn: %s failed less than %s ago; not asking again yet", key, l.every)
		}
		return &http.Response{Status: "200 OK", StatusCode: http.StatusOK, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: d.header.Clone(), Body: io.NopCloser(bytes.NewReader(d.body)), ContentLength: int64(len(d.body)), Request: r}, nil
	}
	remember := func(doc issuerDoc) {
		l.mu.Lock()
		l.last[key] = doc
		l.mu.Unlock()
	}
	resp, err := l.next.RoundTrip(r)
	if err != nil {
		remember(issuerDoc{at: time.Now()})
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		remember(issuerDoc{at: time.Now()})
		return resp, nil
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxIssuerDocument+1))
	_ = resp.Body.Close()
	if err == nil && len(body) > maxIssuerDocument {
		err = fmt.Errorf("authn: %s is over %d bytes", key, maxIssuerDocument)
	}
	if err != nil {
		remember(issuerDoc{at: time.Now()})
		return nil, err
	}
	remember(issuerDoc{at: time.Now(), header: resp.Header.Clone(), body: body})
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp, nil
}

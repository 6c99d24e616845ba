package registry

import (
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Defaults for JoinLimitConfig's zero values.
const (
	DefaultJoinsPerClient     = 1.0 // per second
	DefaultJoinBurstPerClient = 5
	DefaultJoinsTotal         = 20.0 // per second
	DefaultJoinBurstTotal     = 50
	DefaultJoinClients        = 10000
)

// JoinLimitConfig configures a JoinLimiter.
type JoinLimitConfig struct {
	// PerClient is the steady rate of joins one client address may make,
	// per second, and PerClientBurst how many at once. Zero means
	// DefaultJoinsPerClient (1/s) and DefaultJoinBurstPerClient (5).
	PerClient      float64
	PerClientBurst int
	// Total and TotalBurst bound every client together. Zero means
	// DefaultJoinsTotal (20/s) and DefaultJoinBurstTotal (50).
	Total      float64
	TotalBurst int
	// MaxClients bounds the addresses remembered; past it they are
	// forgotten together (each starts with a full burst again). Zero means
	// DefaultJoinClients (10,000).
	MaxClients int
}

// Validate reports the first problem with c.
func (c *JoinLimitConfig) Validate() error {
	if c.PerClient < 0 || c.Total < 0 || c.PerClientBurst < 0 || c.TotalBurst < 0 || c.MaxClients < 0 {
		return fmt.Errorf("registry: JoinLimitConfig %+v: rates, bursts and MaxClients must not be negative", *c)
	}
	return nil
}

// JoinLimiter rate-limits the relay's unauthenticated join endpoint before
// it reaches the registry: a join costs a store read (and, for a token that
// exists, a write), so a flood of made-up tokens must be refused first.
// The relay's handler calls Allow with the request's remote address and
// answers 429 with Retry-After when it says no. Safe for concurrent use.
type JoinLimiter struct {
	cfg   JoinLimitConfig
	total *rate.Limiter

	mu      sync.Mutex
	clients map[string]*rate.Limiter
}

// NewJoinLimiter returns a JoinLimiter for cfg (its zero values the
// defaults).
func NewJoinLimiter(cfg JoinLimitConfig) (*JoinLimiter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.PerClient == 0 {
		cfg.PerClient = DefaultJoinsPerClient
	}
	if cfg.PerClientBurst == 0 {
		cfg.PerClientBurst = DefaultJoinBurstPerClient
	}
	if cfg.Total == 0 {
		cfg.Total = DefaultJoinsTotal
	}
	if cfg.TotalBurst == 0 {
		cfg.TotalBurst = DefaultJoinBurstTotal
	}
	if cfg.MaxClients == 0 {
		cfg.MaxClients = DefaultJoinClients
	}
	return &JoinLimiter{cfg: cfg, total: rate.NewLimiter(rate.Limit(cfg.Total), cfg.TotalBurst), clients: map[string]*rate.Limiter{}}, nil
}

// Allow reports whether a join from remoteAddr (host:port, or a host) may
// go ahead now, and if not, after how long to try again.
func (l *JoinLimiter) Allow(remoteAddr string) (bool, time.Duration) {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	l.mu.Lock()
	c, ok := l.clients[host]
	if !ok {
		if len(l.clients) >= l.cfg.MaxClients {
			clear(l.clients)
		}
		c = rate.NewLimiter(rate.Limit(l.cfg.PerClient), l.cfg.PerClientBurst)
		l.clients[host] = c
	}
	l.mu.Unlock()
	now := time.Now()
	rc := c.ReserveN(now, 1)
	if d := rc.DelayFrom(now); d > 0 {
		rc.CancelAt(now)
		return false, d
	}
	rt := l.total.ReserveN(now, 1)
	if d := rt.DelayFrom(now); d > 0 {
		rt.CancelAt(now)
		rc.CancelAt(now)
		return false, d
	}
	return true, 0
}

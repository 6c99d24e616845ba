package tunnel

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// MaxStreamWindow is the largest stream window tether accepts: 1 GiB, far
// beyond what any round trip needs (1 GiB per 50 ms is 21 GB/s), and small
// enough that window × streams stays a number an operator can reason about.
const MaxStreamWindow = 1 << 30

// ValidateStreamWindow is the one rule for a yamux stream window, wherever
// one is configured (the relay's router, the agent, their flags): zero
// means DefaultStreamWindow; otherwise MinStreamWindow (yamux's own initial
// window) to MaxStreamWindow. It takes a uint64 so that a flag's value can
// be checked before it is narrowed to the uint32 yamux takes.
func ValidateStreamWindow(window uint64) error {
	if window == 0 || window >= MinStreamWindow && window <= MaxStreamWindow {
		return nil
	}
	return fmt.Errorf("stream window %d bytes: want %d (256Ki) to %d (1Gi), or 0 for the default (%d, 4Mi)",
		window, MinStreamWindow, MaxStreamWindow, DefaultStreamWindow)
}

// Validate reports the first problem with c, naming the field. Zero values
// are valid: they mean the documented defaults.
func (c *RelayConfig) Validate() error {
	switch {
	case c.Authorize == nil:
		return errors.New("tunnel: RelayConfig.Authorize is nil: every agent session must be authorized")
	case c.HandshakeTimeout < 0 || c.OpenTimeout < 0:
		return fmt.Errorf("tunnel: RelayConfig.HandshakeTimeout (%s) and OpenTimeout (%s) must not be negative", c.HandshakeTimeout, c.OpenTimeout)
	case c.MaxRogueStreams < 0:
		return fmt.Errorf("tunnel: RelayConfig.MaxRogueStreams %d: want 0 (the default, %d) or more", c.MaxRogueStreams, DefaultMaxRogueStreams)
	}
	return nil
}

// withDefaults returns c with its zero fields set to their defaults.
func (c RelayConfig) withDefaults() RelayConfig {
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.OpenTimeout == 0 {
		c.OpenTimeout = DefaultOpenTimeout
	}
	if c.MaxRogueStreams == 0 {
		c.MaxRogueStreams = DefaultMaxRogueStreams
	}
	if c.Yamux == nil {
		c.Yamux = DefaultYamuxConfig()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports the first problem with c, naming the field.
func (c *AgentConfig) Validate() error {
	if err := c.Hello.Validate(); err != nil {
		return fmt.Errorf("tunnel: AgentConfig.Hello: %w", err)
	}
	if c.HandshakeTimeout < 0 {
		return fmt.Errorf("tunnel: AgentConfig.HandshakeTimeout %s must not be negative", c.HandshakeTimeout)
	}
	if c.MaxPendingOpens < 0 {
		return fmt.Errorf("tunnel: AgentConfig.MaxPendingOpens %d: want 0 (the default, %d) or more", c.MaxPendingOpens, DefaultMaxPendingOpens)
	}
	return nil
}

// withDefaults returns c with its zero fields set to their defaults.
func (c AgentConfig) withDefaults() AgentConfig {
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.MaxPendingOpens == 0 {
		c.MaxPendingOpens = DefaultMaxPendingOpens
	}
	if c.Yamux == nil {
		c.Yamux = DefaultYamuxConfig()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Defaults of KeeperConfig.
const (
	DefaultSessions    = 2
	MaxSessions        = 16
	DefaultStableAfter = 10 * time.Second
)

// Validate reports the first problem with c, naming the field.
func (c *KeeperConfig) Validate() error {
	switch {
	case c.Dial == nil || c.Serve == nil:
		return errors.New("tunnel: KeeperConfig.Dial and Serve are required")
	case c.Sessions < 0 || c.Sessions > MaxSessions:
		return fmt.Errorf("tunnel: KeeperConfig.Sessions %d: want 1 to %d, or 0 for %d", c.Sessions, MaxSessions, DefaultSessions)
	case c.StableAfter < 0:
		return fmt.Errorf("tunnel: KeeperConfig.StableAfter %s must not be negative", c.StableAfter)
	case c.Backoff.Initial < 0 || c.Backoff.Max < 0:
		return fmt.Errorf("tunnel: KeeperConfig.Backoff (%s, %s) must not be negative", c.Backoff.Initial, c.Backoff.Max)
	}
	if err := c.Agent.Validate(); err != nil {
		return fmt.Errorf("tunnel: KeeperConfig.Agent: %w", err)
	}
	return nil
}

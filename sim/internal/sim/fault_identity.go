package sim

import (
	"fmt"
	"math/rand/v2"
	"time"
)

// clockSkew gives a client a token minted by an issuer whose clock is off
// by up to three minutes either way: ahead by more than the token's one
// minute of not-before slack, it is not valid yet and must be refused
// (401), never accepted as someone else. Undoing it gives the client a
// token from a true clock.
type clockSkew struct{}

// jwksOutage cuts the identity provider off from the relay and every agent:
// keys already fetched keep verifying tokens; a relay or agent that starts
// meanwhile refuses callers until the provider is back.
type jwksOutage struct{}

func init() { register(clockSkew{}); register(jwksOutage{}) }

func (clockSkew) Name() string          { return "clock-skew" }
func (clockSkew) Applies(w *World) bool { return len(w.Clients) > 0 }
func (clockSkew) Inject(w *World, rnd *rand.Rand) (string, func()) {
	c := w.Clients[rnd.IntN(len(w.Clients))]
	skew := time.Duration(rnd.IntN(360)-180) * time.Second
	if err := w.mintToken(c, skew); err != nil {
		return "", nil
	}
	return fmt.Sprintf("client %d's issuer clock %+v", c.ID, skew), func() { _ = w.mintToken(c, 0) }
}

func (jwksOutage) Name() string        { return "jwks-outage" }
func (jwksOutage) Applies(*World) bool { return true }
func (jwksOutage) Inject(w *World, _ *rand.Rand) (string, func()) {
	hosts := []string{RelayHost}
	for _, c := range w.Clusters {
		for _, a := range c.Agents {
			hosts = append(hosts, a.host)
		}
	}
	for _, h := range hosts {
		w.Net.Link(IssuerHost, h).Pause(true)
		w.Net.Link(h, IssuerHost).Pause(true)
	}
	return fmt.Sprintf("issuer cut off from %d hosts", len(hosts)), func() {
		for _, h := range hosts {
			w.Net.Link(IssuerHost, h).Resume(true)
			w.Net.Link(h, IssuerHost).Resume(true)
		}
	}
}

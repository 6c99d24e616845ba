package pathtest_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tether-k8s/tether/core/proxy"
	"github.com/tether-k8s/tether/core/relayapi"
)

// Tokens of alice for each hop's audience (see callers).
const (
	relayAudToken   = "relay-aud-token-0123456789abcdef"
	prodAudToken    = "prod-aud-token-0123456789abcdef"
	stagingAudToken = "staging-aud-token-0123456789abcdef"
)

// TestEachHopRefusesTheOthersTokens is issue 15's hole 4 on the whole path:
// a token one hop saw is refused by every other hop, so neither the relay
// nor an agent can replay a caller elsewhere.
func TestEachHopRefusesTheOthersTokens(t *testing.T) {
	p := startPath(t, "prod")
	t.Run("a relay token on the relay hop and prod's token at prod's agent: admitted", func(t *testing.T) {
		p.token.Store(relayAudToken)
		p.clusterToken.Store(prodAudToken)
		if code, body := p.get(t, "/api/v1/pods"); code != 200 || body["user"] != "alice" {
			t.Fatalf("%d %v, want 200 as alice", code, body)
		}
	})
	// Each attack sends, inside the end-to-end TLS of a tunnel the relay
	// admitted for a relay token, the token a hop would replay.
	for _, tc := range []struct {
		name, token, want string
	}{
		{"attack: the relay replays the relay-hop token at the agent", relayAudToken, "for the relay's audience tether:relay"},
		{"attack: staging's agent replays the token it saw at prod's agent", stagingAudToken, "another cluster's audience, tether:cluster:staging"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := p.insideTunnel(t, relayAudToken, tc.token)
			if code != http.StatusForbidden || !strings.Contains(body, tc.want) {
				t.Fatalf("%d %s, want 403 mentioning %q", code, body, tc.want)
			}
		})
	}
	t.Run("attack: prod's agent replays the token it saw at the relay, to reach staging", func(t *testing.T) {
		_, err := proxy.New(context.Background(), proxy.Config{RelayURL: p.relayURL, RelayCA: p.relayCA, Cluster: "staging",
			Token: func() (string, error) { return prodAudToken, nil }, Listen: "127.0.0.1:0"})
		if err == nil || !strings.Contains(err.Error(), "tether:cluster:prod, a cluster's audience") {
			t.Fatalf("got %v, want the relay's refusal of a cluster's audience", err)
		}
		u, _ := url.Parse(p.relayURL)
		raw, err := tls.Dial("tcp", u.Host, &tls.Config{RootCAs: p.relayCA, NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		_, err = relayapi.DialTunnel(raw, u.Host, "staging", prodAudToken)
		if te, ok := err.(*relayapi.TunnelError); !ok || te.Status.Code != http.StatusForbidden {
			t.Fatalf("a tunnel to staging with prod's token: %v, want 403", err)
		}
	})
}

// insideTunnel opens a tunnel to prod at the relay with relayToken and sends
// one request with agentToken to the agent, inside the end-to-end TLS.
func (p *path) insideTunnel(t *testing.T, relayToken, agentToken string) (int, string) {
	t.Helper()
	u, _ := url.Parse(p.relayURL)
	raw, err := tls.Dial("tcp", u.Host, &tls.Config{RootCAs: p.relayCA, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
	conn, err := relayapi.DialTunnel(raw, u.Host, "prod", relayToken)
	if err != nil {
		t.Fatal(err)
	}
	agentTLS := tls.Client(conn, &tls.Config{RootCAs: p.relayCA, ServerName: "prod", InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}) // only the agent's answer matters here
	_, _ = io.WriteString(agentTLS, "GET /api/v1/pods HTTP/1.1\r\nHost: cluster.tether\r\nAuthorization: Bearer "+agentToken+"\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(agentTLS), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

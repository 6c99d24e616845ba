package relayapi_test

import (
	"strings"
	"testing"

	"github.com/tether-k8s/tether/core/relayapi"
)

func TestCheckAgentAudiences(t *testing.T) {
	const relay, own = "tether:relay", "tether:cluster:prod"
	tests := []struct {
		name           string
		auds           []string
		relay, cluster string
		want           string // "" admits
	}{
		{"this cluster's audience", []string{own}, relay, own, ""},
		{"a shared audience (CI recipe, login client ID)", []string{"tether"}, relay, own, ""},
		{"no audience at all (the authenticator decides)", nil, relay, own, ""},
		{"attack: the relay's audience (the relay replays what it saw)", []string{relay}, relay, own, "for the relay's audience tether:relay"},
		{"attack: the relay's audience beside ours", []string{own, relay}, relay, own, "for the relay's audience"},
		{"attack: another cluster's audience (its agent replays what it saw)", []string{"tether:cluster:staging"}, relay, own, "another cluster's audience, tether:cluster:staging"},
		{"attack: ours and another cluster's in one token", []string{own, "tether:cluster:staging"}, relay, own, "tether:cluster:staging"},
		{"attack: a look-alike of ours (prefix)", []string{own + "x"}, relay, own, "tether:cluster:prodx"},
		{"attack: a look-alike of ours (case)", []string{"tether:cluster:PROD"}, relay, own, "tether:cluster:PROD"},
		{"attack: the bare prefix", []string{"tether:cluster:"}, relay, own, "another cluster's audience"},
		{"relay check off", []string{relay}, "", own, ""},
		{"cluster check off", []string{"tether:cluster:staging"}, relay, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := relayapi.CheckAgentAudiences(tc.auds, tc.relay, tc.cluster)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want a refusal mentioning %q", err, tc.want)
			}
		})
	}
}

func TestCheckRelayAudiences(t *testing.T) {
	const relay = "tether:relay"
	tests := []struct {
		name       string
		auds       []string
		wantShared bool
		want       string // "" admits
	}{
		{"the relay's audience", []string{relay}, false, ""},
		{"a shared audience (CI recipe)", []string{"tether"}, false, ""},
		{"attack: a cluster's audience (its agent replays what it saw)", []string{"tether:cluster:prod"}, false, "tether:cluster:prod, a cluster's audience"},
		{"attack: a cluster's audience beside a shared one", []string{"tether", "tether:cluster:prod"}, false, "a cluster's audience"},
		{"attack: the relay's and a cluster's in one token", []string{relay, "tether:cluster:prod"}, true, "also for tether:cluster:prod"},
		{"attack: the bare prefix", []string{"tether:cluster:"}, false, "a cluster's audience"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			shared, err := relayapi.CheckRelayAudiences(tc.auds, relay)
			if shared != tc.wantShared {
				t.Errorf("shared %v, want %v", shared, tc.wantShared)
			}
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want a refusal mentioning %q", err, tc.want)
			}
		})
	}
}

func TestClusterAudience(t *testing.T) {
	if got := relayapi.ClusterAudience("prod"); got != "tether:cluster:prod" {
		t.Fatalf("ClusterAudience(prod) = %q", got)
	}
}

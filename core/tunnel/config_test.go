package tunnel_test

import (
	"strings"
	"testing"

	"github.com/tether-k8s/tether/core/tunnel"
)

func TestValidateStreamWindow(t *testing.T) {
	for _, ok := range []uint64{0, tunnel.MinStreamWindow, tunnel.DefaultStreamWindow, tunnel.MaxStreamWindow} {
		if err := tunnel.ValidateStreamWindow(ok); err != nil {
			t.Errorf("ValidateStreamWindow(%d): %v", ok, err)
		}
	}
	for _, bad := range []uint64{1, tunnel.MinStreamWindow - 1, tunnel.MaxStreamWindow + 1, 1 << 32, 1<<32 + tunnel.DefaultStreamWindow} {
		err := tunnel.ValidateStreamWindow(bad)
		if err == nil || !strings.Contains(err.Error(), "256Ki") || !strings.Contains(err.Error(), "1Gi") {
			t.Errorf("ValidateStreamWindow(%d) = %v, want a refusal naming the bounds", bad, err)
		}
	}
}

func TestConfigsValidate(t *testing.T) {
	if err := (&tunnel.RelayConfig{}).Validate(); err == nil || !strings.Contains(err.Error(), "Authorize") {
		t.Errorf("RelayConfig without Authorize: %v", err)
	}
	if err := (&tunnel.AgentConfig{}).Validate(); err == nil || !strings.Contains(err.Error(), "Hello") {
		t.Errorf("AgentConfig without Hello: %v", err)
	}
	if err := (&tunnel.AgentConfig{Hello: tunnel.Hello{Cluster: "prod", Agent: "a"}, MaxPendingOpens: -1}).Validate(); err == nil || !strings.Contains(err.Error(), "MaxPendingOpens") {
		t.Errorf("AgentConfig with MaxPendingOpens -1: %v", err)
	}
	if err := (&tunnel.KeeperConfig{Sessions: tunnel.MaxSessions + 1}).Validate(); err == nil {
		t.Error("KeeperConfig without Dial and with too many sessions was accepted")
	}
}

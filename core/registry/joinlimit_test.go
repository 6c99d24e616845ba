package registry_test

import (
	"fmt"
	"testing"

	"github.com/tether-k8s/tether/core/registry"
)

func TestJoinLimiter(t *testing.T) {
	l, err := registry.NewJoinLimiter(registry.JoinLimitConfig{PerClient: 0.001, PerClientBurst: 3, Total: 0.001, TotalBurst: 10, MaxClients: 100})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if ok, _ := l.Allow(fmt.Sprintf("198.18.0.1:%d", 1000+i)); !ok {
			t.Fatalf("join %d of a burst of 3 refused", i+1)
		}
	}
	ok, retry := l.Allow("198.18.0.1:2000")
	if ok || retry <= 0 {
		t.Fatalf("a 4th join from one address (another port) = %v, retry %s; want a refusal with a wait", ok, retry)
	}
	// Others still get through, until the total is spent (10, of which
	// 3 went to the first address).
	for i := range 7 {
		if ok, _ := l.Allow(fmt.Sprintf("198.18.1.%d:1", i)); !ok {
			t.Fatalf("another address's join %d refused", i)
		}
	}
	if ok, _ := l.Allow("198.18.2.1:1"); ok {
		t.Fatal("a join past the total burst was allowed")
	}
	if _, err := registry.NewJoinLimiter(registry.JoinLimitConfig{Total: -1}); err == nil {
		t.Fatal("a negative rate was accepted")
	}
}

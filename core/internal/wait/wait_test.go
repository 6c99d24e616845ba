package wait_test

import (
	"context"
	"testing"
	"time"

	"github.com/tether-k8s/tether/core/internal/wait"
)

func TestSleep(t *testing.T) {
	if !wait.Sleep(context.Background(), time.Millisecond) {
		t.Fatal("a sleep that ran its course reported false")
	}
	if !wait.Sleep(context.Background(), 0) {
		t.Fatal("a zero sleep with a live context reported false")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if wait.Sleep(ctx, time.Hour) {
		t.Fatal("a sleep whose context ended reported true")
	}
	if wait.Sleep(ctx, 0) {
		t.Fatal("a zero sleep with an ended context reported true")
	}
}

package workload

import (
	"context"
	"errors"
	"testing"

	"github.com/tether-k8s/tether/bench/internal/contender"
	"github.com/tether-k8s/tether/bench/internal/load"
)

// TestCheckErrorsFailsTheRun: a contender that fails every request, or
// tether failing any, fails the run; a peer's occasional failure does not.
func TestCheckErrorsFailsTheRun(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name     string
		c        contender.Contender
		count    load.Counter
		wantFail bool
	}{
		{"peer, every request failed", contender.Chisel{}, load.Counter{Failed: 10, First: boom}, true},
		{"peer, one failure", contender.Chisel{}, load.Counter{OK: 99, Failed: 1, First: boom}, false},
		{"tether, one failure", contender.Tether{}, load.Counter{OK: 99, Failed: 1, First: boom}, true},
		{"tether, all fine", contender.Tether{}, load.Counter{OK: 100}, false},
		{"direct, nothing succeeded", contender.Direct{}, load.Counter{}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := &Run{}
			r.checkErrors("W1", &Contestant{Contender: tc.c}, tc.count)
			if got := len(r.Failures()) > 0; got != tc.wantFail {
				t.Errorf("failed = %v, want %v (%v)", got, tc.wantFail, r.Failures())
			}
		})
	}
}

// TestCounterIgnoresFailuresAfterTheEnd: requests cut by the end of a
// timed run are not failures.
func TestCounterIgnoresFailuresAfterTheEnd(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var n load.Counter
	n.Add(ctx, nil)
	n.Add(ctx, errors.New("real"))
	cancel()
	n.Add(ctx, errors.New("cut"))
	if n.OK != 1 || n.Failed != 1 || n.First.Error() != "real" {
		t.Errorf("counter = %+v", n)
	}
}

// TestThousands: counts in the report read 10,000.
func TestThousands(t *testing.T) {
	for n, want := range map[int]string{0: "0", 999: "999", 1000: "1,000", 10000: "10,000", 1234567: "1,234,567", -1000: "-1,000"} {
		if got := thousands(n); got != want {
			t.Errorf("thousands(%d) = %q, want %q", n, got, want)
		}
	}
	if got, want := joinInts([]int{1000, 5000, 10000}), "1,000, 5,000 and 10,000"; got != want {
		t.Errorf("joinInts = %q, want %q", got, want)
	}
}

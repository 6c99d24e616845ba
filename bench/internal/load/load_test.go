package load

import (
	"testing"
	"time"
)

func TestQuantileNearestRank(t *testing.T) {
	var l Latencies
	for i := 100; i >= 1; i-- {
		l = append(l, time.Duration(i)*time.Millisecond)
	}
	s := l.Sorted()
	tests := []struct {
		q    float64
		want time.Duration
	}{
		{0, time.Millisecond}, {0.5, 50 * time.Millisecond}, {0.99, 99 * time.Millisecond}, {1, 100 * time.Millisecond},
	}
	for _, tc := range tests {
		if got := s.Quantile(tc.q); got != tc.want {
			t.Errorf("Quantile(%v) = %s, want %s", tc.q, got, tc.want)
		}
	}
	if l[0] != 100*time.Millisecond {
		t.Error("Sorted changed its receiver")
	}
	if got := Latencies(nil).Quantile(0.5); got != 0 {
		t.Errorf("Quantile of nothing = %s, want 0", got)
	}
}

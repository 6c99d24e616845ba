package workload

import (
	"errors"
	"testing"
	"time"
)

// TestLongestGapAndWindows: the gap counts only successes, from the window's
// start and up to its end; a window holds the requests that started in it,
// failures counted apart from the latencies.
func TestLongestGapAndWindows(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	boom := errors.New("boom")
	ss := []sample{
		{start: at(0), end: at(10)},
		{start: at(5), end: at(20)},
		{start: at(20), end: at(30), err: boom}, // a failure is no success: the gap goes on
		{start: at(25), end: at(90)},
		{start: at(90), end: at(100)},
	}
	if got, want := longestGap(ss, at(0), at(100)), 70*time.Millisecond; got != want {
		t.Errorf("longestGap over the whole run = %s, want %s (20 ms to 90 ms)", got, want)
	}
	if got, want := longestGap(ss, at(0), at(250)), 150*time.Millisecond; got != want {
		t.Errorf("longestGap to 250 ms = %s, want %s (nothing after 100 ms)", got, want)
	}
	if got, want := longestGap(nil, at(0), at(40)), 40*time.Millisecond; got != want {
		t.Errorf("longestGap with no request = %s, want the whole window %s", got, want)
	}
	w := windowOf(ss, at(5), at(90))
	if w.n != 3 || w.failed != 1 || !errors.Is(w.first, boom) || len(w.lat) != 2 {
		t.Fatalf("windowOf(5 ms, 90 ms) = %d requests, %d failed (%v), %d latencies; want 3, 1 (boom), 2", w.n, w.failed, w.first, len(w.lat))
	}
	if w.lat[0] != 15*time.Millisecond || w.lat[1] != 65*time.Millisecond {
		t.Errorf("latencies %v, want sorted [15ms 65ms]", w.lat)
	}
}

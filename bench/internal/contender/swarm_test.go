package contender

import (
	"slices"
	"testing"
)

// TestSplitAgents: a swarm fills its processes in order, none beyond its
// share.
func TestSplitAgents(t *testing.T) {
	tests := []struct {
		name                     string
		n, perProcess, processes int
		want                     []int
	}{
		{"one process", 150, 150, 1, []int{150}},
		{"first level of two processes", 50, 100, 2, []int{50, 0}},
		{"second level of two processes", 150, 100, 2, []int{100, 50}},
		{"exactly full", 200, 100, 2, []int{100, 100}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := splitAgents(tc.n, tc.perProcess, tc.processes); !slices.Equal(got, tc.want) {
				t.Errorf("splitAgents(%d, %d, %d) = %v, want %v", tc.n, tc.perProcess, tc.processes, got, tc.want)
			}
		})
	}
}

// TestTetherForWatches: tether's set-up for many idle watches admits them
// (streams in all and per cluster), runs a proxy per perCaller watches,
// and A/B variants have none.
func TestTetherForWatches(t *testing.T) {
	tests := []struct {
		name           string
		t              Tether
		n, perCaller   int
		wantOK         bool
		wantProxies    int
		wantMinStreams int
	}{
		{"10,000 watches", Tether{}, 10000, 2500, true, 4, 10000},
		{"10,001 watches", Tether{}, 10001, 2500, true, 5, 10001},
		{"100,000 watches", Tether{}, 100000, 2500, true, 40, 100000},
		{"an A/B variant", Tether{IdleTunnels: 16, Label: "tether-idle16"}, 10000, 2500, false, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, ok := tc.t.ForWatches(tc.n, tc.perCaller)
			if ok != tc.wantOK {
				t.Fatalf("ok = %v, want %v", ok, tc.wantOK)
			}
			if !ok {
				return
			}
			got := c.(Tether)
			streams := got.StreamMemory / int64(got.YamuxWindow)
			if got.Proxies != tc.wantProxies || got.MaxStreamsPerCluster < tc.wantMinStreams || streams < int64(tc.wantMinStreams) || got.YamuxWindow != 256<<10 {
				t.Errorf("ForWatches(%d, %d) = %+v (%d streams in all)", tc.n, tc.perCaller, got, streams)
			}
			if got.Name() != "tether" {
				t.Errorf("name %q, want tether", got.Name())
			}
		})
	}
}

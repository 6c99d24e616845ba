package main

import (
	"strconv"
	"strings"
	"testing"

	"github.com/tether-k8s/tether/core/relay"
	"github.com/tether-k8s/tether/core/tunnel"
)

func TestServeStreamFlags(t *testing.T) {
	c := newServeCommand(new(string), func() string { return "" }, &storeOptions{})
	if f := c.Flags().Lookup("max-streams-per-caller"); f == nil || f.DefValue != strconv.Itoa(relay.DefaultMaxStreamsPerCaller) {
		t.Fatalf("--max-streams-per-caller: %+v, want a flag defaulting to %d", f, relay.DefaultMaxStreamsPerCaller)
	}
	ok := serveOptions{maxStreamsPerCluster: 1024, maxStreamsPerCaller: 512, streamWindow: tunnel.DefaultStreamWindow, streamMemory: relay.DefaultStreamMemory,
		maxSessionsPerCluster: relay.DefaultMaxSessionsPerCluster, maxSessionsPerCredential: relay.DefaultMaxSessionsPerCredential}
	tests := []struct {
		name string
		set  func(*serveOptions)
		want string // in the error; empty: no error
	}{
		{"defaults", func(*serveOptions) {}, ""},
		{"per-caller 0 is not unlimited", func(o *serveOptions) { o.maxStreamsPerCaller = 0 }, "--max-streams-per-caller 0: want 1 or more"},
		{"per-caller negative", func(o *serveOptions) { o.maxStreamsPerCaller = -1 }, "--max-streams-per-caller -1: want 1 or more"},
		{"per-cluster 0", func(o *serveOptions) { o.maxStreamsPerCluster = 0 }, "--max-streams-per-cluster 0: want 1 or more"},
		{"per-caller above per-cluster", func(o *serveOptions) { o.maxStreamsPerCaller = 4096 }, ""},
		{"sessions per cluster 0", func(o *serveOptions) { o.maxSessionsPerCluster = 0 }, "--max-sessions-per-cluster 0"},
		{"sessions per credential negative", func(o *serveOptions) { o.maxSessionsPerCredential = -1 }, "--max-sessions-per-credential -1: want 1 or more"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := ok
			tc.set(&o)
			cfg, err := o.routerConfig()
			switch {
			case tc.want == "" && err != nil:
				t.Fatal(err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			case tc.want == "" && cfg.MaxStreamsPerCaller != o.maxStreamsPerCaller:
				t.Fatalf("RouterConfig.MaxStreamsPerCaller %d, want %d", cfg.MaxStreamsPerCaller, o.maxStreamsPerCaller)
			}
		})
	}
}

//go:build !tether_plantedbug

package sim

import "github.com/tether-k8s/tether/core/tunnel"

// plantedMisroute is nil in the simulator's normal build: the relay routes
// every session as it was authorized. See planted_on.go.
var plantedMisroute func(*tunnel.RelaySession)

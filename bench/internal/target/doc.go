// Package target is the server every contender carries traffic to: a plain
// HTTP/1.1 server standing in for the Kubernetes API server, the same for the
// direct baseline and every tunnel.
//
// Its paths look like Kubernetes' so that tether's agent, which refuses
// upgrades anywhere but on exec, attach and port-forward, forwards them:
//
//	GET  SmallPath                  a 1 KiB JSON body (W1, W2)
//	GET  LargePath?bytes=N          N bytes of incompressible data (W3, W4)
//	POST EchoPath, Upgrade: SPDY/3.1  101, then echoes every byte (W8)
//	GET  WatchPath?watch=true       a watch: headers at once, then one JSON
//	                                line per event, each carrying the time it
//	                                was sent (W5)
//	POST ControlBroadcast           (harness only) sends an event to every
//	                                open watch and returns how many
//	GET  ControlStats               (harness only) open watches
package target

// Package tunnel owns the connection between an agent and the relay: the
// frames of tether's wire protocol (docs/protocol.md), and, as it lands, the
// yamux session over TLS, the agent's dialer with backoff and the relay's
// listener.
//
// Every frame is read with a size cap and validated before use; a frame that
// fails is an error that ends the connection, never a value to guess at.
package tunnel

// Package agent assembles tether's agent: it joins the relay once (trading a
// join token for a cluster credential it keeps in a directory), keeps its
// sessions to the relay open (tunnel.Keeper), and serves each caller's stream
// with end-to-end TLS under the cluster credential, handing the requests to
// the request path (an impersonate.Handler).
//
// End-to-end TLS means the relay splices ciphertext: it never sees the
// caller's token or the cluster's responses, and the caller's proxy verifies
// that the certificate names the cluster it asked for.
package agent

// Package proxy is tether-proxy's core: a local HTTPS endpoint that kubectl
// talks to, and the forwarding of each request through the relay to the
// cluster's agent with the caller's token.
//
// The local endpoint listens on loopback only, with a certificate authority
// made for this run, and requires a client certificate that only the written
// kubeconfig holds, so neither another local process nor a web page (DNS
// rebinding, cross-site WebSocket) can ride on it; it also refuses foreign
// Host headers and any browser Origin. It refuses kubectl's impersonation
// flags (Impersonate-* headers) rather than forward them.
//
// Each connection to the cluster is a tunnel through the relay
// (relayapi.DialTunnel, authenticated with the caller's token), inside which
// the proxy speaks TLS to the agent itself and checks that the agent's
// certificate names the requested cluster and chains to the CA the relay
// published for its clusters: the relay carries only ciphertext.
package proxy

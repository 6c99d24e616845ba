// Package copybuf owns the copy buffers of tether's data path: a pool of
// 32 KiB buffers that the reverse proxies (tether-proxy, the agent's
// impersonating proxy, the relay's cluster endpoint) borrow per response
// instead of allocating one each, and Copy, which moves a stream's bytes
// holding only a small buffer while the stream is idle and a pooled large
// one while it is busy.
//
// Both exist for what they save, measured in bench/ (docs/performance.md):
// a 32 KiB allocation per request is garbage the collector pays for on
// every small GET, and a 32 KiB buffer per direction held by every idle
// tunnel (a watch) is most of what such a tunnel costs the relay.
package copybuf

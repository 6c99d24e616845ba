//go:build !unix

package relay

import "net"

// listenPrivate listens on the Unix socket path. Without a umask the socket
// is private only once ListenAdmin's chmod has run; the relay is built and
// supported for Unix (this file lets packages that link core/relay, such
// as tether-proxy's tests, compile for Windows).
func listenPrivate(path string) (net.Listener, error) {
	return net.Listen("unix", path)
}

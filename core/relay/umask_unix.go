//go:build unix

package relay

import (
	"net"
	"syscall"
)

// listenPrivate listens on the Unix socket path, created with mode 0600
// from the start (the umask), so no other user can connect before the
// chmod that follows.
func listenPrivate(path string) (net.Listener, error) {
	old := syscall.Umask(0o177)
	defer syscall.Umask(old)
	return net.Listen("unix", path)
}

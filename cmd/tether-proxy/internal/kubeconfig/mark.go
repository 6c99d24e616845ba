package kubeconfig

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"net/url"
	"os"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// ExtensionName is the name of the extension tether adds to every cluster,
// user and context entry it writes; its value is a Mark.
const ExtensionName = "tether.io/written-by"

// Writer is Mark.Writer for entries tether-proxy writes.
const Writer = "tether-proxy"

// Mode is how the entries reach the cluster.
type Mode string

const (
	// ModeProxy entries point at a running tether-proxy on loopback; they
	// last as long as it runs.
	ModeProxy Mode = "proxy"
	// ModeEndpoint entries point at the relay's cluster endpoint, with
	// `tether-proxy token` as the user's credential plugin: no local process
	// (`tether-proxy kubeconfig`).
	ModeEndpoint Mode = "endpoint"
)

// describe says in words which command writes entries of mode m.
func (m Mode) describe() string {
	if m == ModeEndpoint {
		return "tether-proxy kubeconfig (the relay's cluster endpoint, no local process)"
	}
	return "a tether-proxy run"
}

// Mark records, in an entry's ExtensionName extension, who wrote it.
type Mark struct {
	// Writer is always Writer: an extension without it is not tether's.
	Writer string `json:"writer"`
	// Mode is the mode the entry was written for.
	Mode Mode `json:"mode"`
	// Run is random, one per Write: it tells one run's entries from those
	// another run (or an earlier one) wrote under the same names.
	Run string `json:"run"`
	// Relay and Cluster are the relay's URL and the cluster's name.
	Relay   string `json:"relay,omitempty"`
	Cluster string `json:"cluster,omitempty"`
	// PID and Host are, for ModeProxy, the process that wrote the entry
	// and the machine it runs on.
	PID  int    `json:"pid,omitempty"`
	Host string `json:"host,omitempty"`
}

// newRun returns a fresh Mark.Run.
func newRun() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// withMark returns a copy of ext with the mark m.
func withMark(ext map[string]runtime.Object, m Mark) map[string]runtime.Object {
	out := make(map[string]runtime.Object, len(ext)+1)
	for k, v := range ext {
		if k != ExtensionName {
			out[k] = v
		}
	}
	b, _ := json.Marshal(m)
	out[ExtensionName] = &runtime.Unknown{Raw: b, ContentType: runtime.ContentTypeJSON}
	return out
}

// markOf returns the tether mark among an entry's extensions, or nil when
// the entry is not tether's.
func markOf(ext map[string]runtime.Object) *Mark {
	obj, ok := ext[ExtensionName]
	if !ok || obj == nil {
		return nil
	}
	var raw []byte
	if u, ok := obj.(*runtime.Unknown); ok {
		raw = u.Raw
	} else if b, err := json.Marshal(obj); err == nil {
		raw = b
	}
	var m Mark
	if json.Unmarshal(raw, &m) != nil || m.Writer != Writer || m.Run == "" || (m.Mode != ModeProxy && m.Mode != ModeEndpoint) {
		return nil
	}
	return &m
}

// runOf returns the run of an entry's mark, or "".
func runOf(ext map[string]runtime.Object) string {
	if m := markOf(ext); m != nil {
		return m.Run
	}
	return ""
}

// hostname is this machine's name, for Mark.Host.
func hostname() string {
	h, _ := os.Hostname()
	return h
}

// proxyRunning reports whether the tether-proxy run that wrote cl (marked
// m) still serves: its server completes a TLS handshake with the CA the
// entry pins, whose key only that run holds. A run on another machine, or
// whose server cannot be checked from here, counts as running.
func proxyRunning(cl *clientcmdapi.Cluster, m *Mark, timeout time.Duration) bool {
	if m.Host != "" && m.Host != hostname() {
		return true
	}
	if cl == nil {
		return false // its cluster entry is gone: so is the run's kubeconfig
	}
	u, err := url.Parse(cl.Server)
	if err != nil || u.Scheme != "https" || u.Port() == "" {
		return true
	}
	if ip := net.ParseIP(u.Hostname()); ip == nil || !ip.IsLoopback() {
		return true
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(cl.CertificateAuthorityData) {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	d := tls.Dialer{Config: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}
	conn, err := d.DialContext(ctx, "tcp", u.Host)
	if err == nil {
		_ = conn.Close()
		return true
	}
	var verr *tls.CertificateVerificationError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return false // nothing listens there
	case errors.As(err, &verr):
		return false // another process listens there
	}
	return true
}

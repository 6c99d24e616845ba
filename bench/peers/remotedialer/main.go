// Command remotedialer runs rancher/remotedialer in the benchmark's
// topology, as Rancher uses it: an agent in the cluster holds a WebSocket
// session (over TLS) to the server, and the server dials into the cluster
// through it. The server also listens on a plain TCP port and splices each
// connection to a connection dialed through the agent to the target, so the
// benchmark's caller reaches the target through the server.
//
//	remotedialer server -listen 0.0.0.0 -target 127.0.0.1:8080 -cert-dir DIR
//	remotedialer agent  -url wss://relay:port/connect -ca DIR/ca.pem
//
// Once it serves it prints "READY {json}" on standard output (the harness's
// protocol: the server's ports); it stops when standard input closes.
package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rancher/remotedialer"
	"github.com/sirupsen/logrus"
)

// clientKey names the one agent; token is its shared secret.
const (
	clientKey = "bench"
	token     = "bench-remotedialer-token"
)

func main() { os.Exit(run()) }

// run runs the mode os.Args names and returns the exit code.
func run() int {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: remotedialer server|agent [flags]")
		return 2
	}
	logrus.SetLevel(logrus.WarnLevel)
	ctx, cancel := context.WithCancel(context.Background())
	// The harness closes standard input to stop us. Non-blocking, it goes
	// through the runtime's poller, so closing it ends the read and the
	// reader can be joined.
	_ = syscall.SetNonblock(0, true)
	stdin := os.NewFile(0, "stdin")
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _ = io.Copy(io.Discard, stdin)
		cancel()
	}()
	defer func() {
		cancel()
		_ = stdin.Close()
		wg.Wait()
	}()
	var err error
	switch os.Args[1] {
	case "server":
		err = server(ctx, os.Args[2:])
	case "agent":
		err = agent(ctx, os.Args[2:])
	default:
		err = fmt.Errorf("no mode %q", os.Args[1])
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(os.Stderr, "remotedialer: %v\n", err)
		return 1
	}
	return 0
}

// ready tells the harness we serve.
func ready(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(os.Stdout)
	fmt.Fprintf(w, "READY %s\n", b)
	return w.Flush()
}

func server(ctx context.Context, argv []string) error {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1", "address to listen on")
	target := fs.String("target", "", "the target's host:port, as the agent reaches it")
	certDir := fs.String("cert-dir", "", "where to write the server's CA (ca.pem)")
	names := fs.String("names", "127.0.0.1", "comma-separated IP addresses for the server's certificate")
	if err := fs.Parse(argv); err != nil {
		return err
	}
	cert, caPEM, err := selfSigned(*names)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(*certDir, "ca.pem"), caPEM, 0o644); err != nil {
		return fmt.Errorf("write CA: %w", err)
	}
	rd := remotedialer.New(func(req *http.Request) (string, bool, error) {
		return clientKey, req.Header.Get("X-Bench-Token") == token, nil
	}, remotedialer.DefaultErrorWriter)
	mux := http.NewServeMux()
	mux.Handle("/connect", rd)
	wsL, err := tls.Listen("tcp", net.JoinHostPort(*listen, "0"), &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	fwdL, err := net.Listen("tcp", net.JoinHostPort(*listen, "0"))
	if err != nil {
		_ = wsL.Close()
		return fmt.Errorf("listen: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = srv.Serve(wsL) }()
	go func() { defer wg.Done(); forward(ctx, fwdL, rd.Dialer(clientKey), *target) }()
	err = ready(map[string]int{"Port": wsL.Addr().(*net.TCPAddr).Port, "ForwardPort": fwdL.Addr().(*net.TCPAddr).Port})
	if err == nil {
		<-ctx.Done()
	}
	_ = srv.Close()
	_ = fwdL.Close()
	wg.Wait()
	return err
}

// forward splices every connection on l to one dialed through the agent.
func forward(ctx context.Context, l net.Listener, dial remotedialer.Dialer, target string) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			up, err := dial(ctx, "tcp", target)
			if err != nil {
				return
			}
			defer up.Close()
			done := make(chan struct{})
			go func() {
				_, _ = io.Copy(up, c)
				closeWrite(up)
				close(done)
			}()
			_, _ = io.Copy(c, up)
			closeWrite(c)
			<-done
		}()
	}
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}

func agent(ctx context.Context, argv []string) error {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	url := fs.String("url", "", "the server's wss:// URL")
	caFile := fs.String("ca", "", "the server's CA")
	target := fs.String("target", "", "the only host:port the server may dial through us")
	if err := fs.Parse(argv); err != nil {
		return err
	}
	caPEM, err := os.ReadFile(*caFile)
	if err != nil {
		return fmt.Errorf("read CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return errors.New("no CA in " + *caFile)
	}
	d := &websocket.Dialer{HandshakeTimeout: 10 * time.Second, TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	headers := http.Header{"X-Bench-Token": {token}}
	allow := func(proto, address string) bool { return proto == "tcp" && address == *target }
	var once sync.Once
	onConnect := func(context.Context, *remotedialer.Session) error {
		once.Do(func() { _ = ready(struct{}{}) })
		return nil
	}
	for ctx.Err() == nil {
		_ = remotedialer.ClientConnect(ctx, *url, headers, d, allow, onConnect)
	}
	return ctx.Err()
}

// selfSigned makes a CA and a server certificate for the IP addresses in
// names (comma-separated).
func selfSigned(names string) (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "remotedialer bench"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	for _, n := range splitComma(names) {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

func splitComma(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			if i > start {
				out = append(out, s[start:i])
			}
			start = i + 1
		}
	}
	return out
}

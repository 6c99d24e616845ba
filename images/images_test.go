package images

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tether-k8s/tether/fixtures/cluster"
	"github.com/tether-k8s/tether/fixtures/netns"
	"github.com/tether-k8s/tether/fixtures/stack"
)

// tether's images, and the e2e workload's.
var binaries = []string{"tether-relay", "tether-agent", "tether-proxy"}

const workload = "tether-e2e-workload"

// nonroot is the user and group the images run as.
const nonroot = 65532

// hardened are the docker run flags that run a container as the charts run
// their pods: read-only root file system, no capabilities, no privilege
// escalation (the image's own user, 65532).
var hardened = []string{"--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"}

// requireImages skips the test without a Docker engine or without the
// images' names, and returns a function naming an image.
func requireImages(t *testing.T) func(name string) string {
	t.Helper()
	if out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		t.Skipf("skipped: no Docker engine (docker info: %v: %s)", err, firstLine(out))
	}
	repo, tag := os.Getenv("TETHER_IMAGE_REPO"), os.Getenv("TETHER_IMAGE_TAG")
	if repo == "" || tag == "" {
		t.Skip("skipped: TETHER_IMAGE_REPO and TETHER_IMAGE_TAG are not set: run `make images-test`, which builds the images and sets them")
	}
	return func(name string) string { return repo + "/" + name + ":" + tag }
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return s
}

// docker runs the docker command with args and returns its combined output.
func docker(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// containerName returns a name for a container of this test, which
// t.Cleanup removes (with its volumes) however the test ends.
func containerName(t *testing.T, what string) string {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "tether-imagetest-" + what + "-" + hex.EncodeToString(b)
	removeOnCleanup(t, name)
	return name
}

// removeOnCleanup has t.Cleanup remove container name, if it exists.
func removeOnCleanup(t *testing.T, name string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "docker", "rm", "-f", "-v", name).CombinedOutput()
		if err != nil && !strings.Contains(string(out), "No such container") {
			t.Errorf("remove container %s: %v: %s", name, err, out)
		}
	})
}

// imageConfig is the part of `docker image inspect` the test checks.
type imageConfig struct {
	User         string
	Entrypoint   []string
	Cmd          []string
	Env          []string
	Labels       map[string]string
	ExposedPorts map[string]struct{}
}

func TestImageContents(t *testing.T) {
	image := requireImages(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, b := range append(slices.Clone(binaries), workload) {
		t.Run(b, func(t *testing.T) {
			ref := image(b)
			out, err := docker(ctx, "image", "inspect", "--format", "{{json .Config}}", ref)
			if err != nil {
				t.Fatalf("%v (build it with `make images-test`)", err)
			}
			var cfg imageConfig
			if err := json.Unmarshal([]byte(out), &cfg); err != nil {
				t.Fatalf("image %s: decode its configuration: %v", ref, err)
			}
			if want := fmt.Sprintf("%d:%d", nonroot, nonroot); cfg.User != want {
				t.Errorf("image %s: User %q, want %q", ref, cfg.User, want)
			}
			if want := []string{"/usr/local/bin/" + b}; !slices.Equal(cfg.Entrypoint, want) {
				t.Errorf("image %s: Entrypoint %q, want %q", ref, cfg.Entrypoint, want)
			}
			if want := "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"; !slices.Contains(cfg.Env, want) {
				t.Errorf("image %s: Env %q, want %s (e2e's chart specs assume it)", ref, cfg.Env, want)
			}
			for _, l := range []string{"version", "revision", "source"} {
				if cfg.Labels["org.opencontainers.image."+l] == "" {
					t.Errorf("image %s: label org.opencontainers.image.%s is empty or missing", ref, l)
				}
			}
			if got := cfg.Labels["org.opencontainers.image.title"]; got != b {
				t.Errorf("image %s: label org.opencontainers.image.title %q, want %q", ref, got, b)
			}

			// The file system, as `docker export` of a container created
			// from the image (not started) shows it.
			name := containerName(t, "fs")
			if _, err := docker(ctx, "create", "--name", name, ref); err != nil {
				t.Fatal(err)
			}
			files := exportFiles(ctx, t, name)
			want := map[string]func(*tar.Header) error{
				"usr/local/bin/" + b:                mode(0o755, 0),
				"etc/passwd":                        content(fmt.Sprintf("nonroot:x:%d:%d:", nonroot, nonroot)),
				"etc/group":                         content(fmt.Sprintf("nonroot:x:%d:", nonroot)),
				"etc/ssl/certs/ca-certificates.crt": content("-----BEGIN CERTIFICATE-----"),
				"tmp/":                              mode(0o777|fs.ModeSticky, 0),
			}
			if b != workload {
				want["home/nonroot/"] = mode(0o755, nonroot)
			}
			for path, check := range want {
				h, ok := files[path]
				if !ok {
					t.Errorf("image %s: no /%s", ref, path)
					continue
				}
				if err := check(h); err != nil {
					t.Errorf("image %s: /%s: %v", ref, path, err)
				}
			}
			for _, shell := range []string{"bin/sh", "bin/bash", "bin/busybox"} {
				if _, ok := files[shell]; ok {
					t.Errorf("image %s has /%s: the images have no shell", ref, shell)
				}
			}
		})
	}
}

// exportFiles returns the headers of container name's files, with the
// content of the small ones in their PAXRecords["content"].
func exportFiles(ctx context.Context, t *testing.T, name string) map[string]*tar.Header {
	t.Helper()
	cmd := exec.CommandContext(ctx, "docker", "export", name)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	files := map[string]*tar.Header{}
	tr := tar.NewReader(stdout)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("docker export %s: %v", name, err)
		}
		head, err := io.ReadAll(io.LimitReader(tr, 4096))
		if err != nil {
			t.Fatalf("docker export %s: read %s: %v", name, h.Name, err)
		}
		h.PAXRecords = map[string]string{"content": string(head)}
		files[strings.TrimPrefix(h.Name, "./")] = h
	}
	_, _ = io.Copy(io.Discard, stdout)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("docker export %s: %v: %s", name, err, stderr.Bytes())
	}
	return files
}

// mode checks a file's permissions and owner.
func mode(perm fs.FileMode, uid int) func(*tar.Header) error {
	return func(h *tar.Header) error {
		got := h.FileInfo().Mode() & (fs.ModePerm | fs.ModeSticky)
		if got != perm || h.Uid != uid {
			return fmt.Errorf("mode %v owner %d, want %v owner %d", got, h.Uid, perm, uid)
		}
		return nil
	}
}

// content checks that a file is not empty and holds s in its first 4 KiB.
func content(s string) func(*tar.Header) error {
	return func(h *tar.Header) error {
		if h.Size == 0 || !strings.Contains(h.PAXRecords["content"], s) {
			return fmt.Errorf("%d bytes, without %q", h.Size, s)
		}
		return nil
	}
}

func TestImageHelp(t *testing.T) {
	image := requireImages(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, b := range binaries {
		t.Run(b, func(t *testing.T) {
			ref := image(b)
			out, err := docker(ctx, append(append([]string{"run", "--rm", "--name", containerName(t, "help"), "--network", "none"}, hardened...), ref, "--help")...)
			if err != nil {
				t.Fatalf("%s --help as a container: %v", ref, err)
			}
			if !strings.Contains(out, b) {
				t.Errorf("%s --help does not name %s:\n%s", ref, b, out)
			}
			out, err = docker(ctx, append(append([]string{"run", "--rm", "--name", containerName(t, "version"), "--network", "none"}, hardened...), ref, "--version")...)
			if err != nil {
				t.Fatalf("%s --version as a container: %v", ref, err)
			}
			label, err := docker(ctx, "image", "inspect", "--format", `{{index .Config.Labels "org.opencontainers.image.version"}}`, ref)
			if err != nil {
				t.Fatal(err)
			}
			if label = strings.TrimSpace(label); !strings.Contains(out, b) || !strings.Contains(out, label) {
				t.Errorf("%s --version = %q, want the binary's name and the image's version label %q", ref, strings.TrimSpace(out), label)
			}
		})
	}
	t.Run(workload, func(t *testing.T) {
		ref := image(workload)
		run := func(args ...string) (string, error) {
			return docker(ctx, append(append([]string{"run", "--rm", "-i", "--name", containerName(t, "workload"), "--network", "none"}, hardened...), append([]string{ref}, args...)...)...)
		}
		if out, err := run("echo", "hello", "tether"); err != nil || out != "hello tether\n" {
			t.Errorf("%s echo hello tether = %q, %v; want %q", ref, out, err, "hello tether\n")
		}
		if out, err := run("exit", "3"); err == nil || !strings.Contains(err.Error(), "exit status 3") {
			t.Errorf("%s exit 3 = %q, %v; want exit status 3", ref, out, err)
		}
	})
}

// TestImageJoin runs the relay and agent images as containers around the
// fixtures' real cluster: the agent joins with the relay's join token, and
// the real kubectl on the laptop host reaches the API server through the
// host's tether-proxy, the relay's container and the agent's.
func TestImageJoin(t *testing.T) {
	image := requireImages(t)
	if err := netns.Check(); err != nil {
		t.Skipf("skipped: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	begin := time.Now()

	// The router's and the cluster's namespaces are those of containers of
	// the workload image (pause), so that the relay's and the agent's
	// containers can join them; the laptop's is a plain namespace.
	attach := func(ctx context.Context, host, namespace string) (int, error) {
		if host != cluster.HostRelay && host != cluster.HostCluster {
			return 0, nil
		}
		removeOnCleanup(t, namespace)
		if _, err := docker(ctx, append(append([]string{"run", "-d", "--rm", "--name", namespace, "--network", "none"}, hardened...), image(workload), "pause")...); err != nil {
			return 0, err
		}
		out, err := docker(ctx, "inspect", "--format", "{{.State.Pid}}", namespace)
		if err != nil {
			return 0, err
		}
		pid, err := strconv.Atoi(strings.TrimSpace(out))
		if err != nil || pid <= 0 {
			return 0, fmt.Errorf("container %s: PID %q: %v", namespace, out, err)
		}
		return pid, nil
	}
	c, err := cluster.Start(ctx, cluster.Config{Name: "images", Logger: log, Attach: attach})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("stop the cluster: %v", err)
		}
	})
	t.Logf("cluster up in %s", time.Since(begin).Round(time.Millisecond))

	// The relay and the agent as containers of their images in their
	// hosts' namespaces, hardened as the charts run them. Their files are
	// in the stack's directory, which the container mounts at the same path
	// and which is given to user 65532, as a kubelet gives a pod's volumes.
	images := map[string]string{"relay": "tether-relay", "agent": "tether-agent"}
	var containers []string
	command := func(name string, h *netns.Host, _ string, args []string) *exec.Cmd {
		img := images[name]
		if img == "" {
			return nil
		}
		run := append([]string{"run", "--rm", "--name", h.Namespace + "-" + name, "--network", "container:" + h.Namespace}, hardened...)
		dirs := map[string]bool{}
		for _, a := range args {
			if _, path, ok := strings.Cut(a, "="); ok && strings.HasPrefix(a, "--") {
				a = path
			}
			if filepath.IsAbs(a) {
				dirs[filepath.Dir(a)] = true
			}
		}
		for _, d := range slices.Sorted(maps.Keys(dirs)) {
			if err := chownTree(d, nonroot); err != nil {
				t.Errorf("give %s to user %d: %v", d, nonroot, err)
			}
			run = append(run, "-v", d+":"+d)
		}
		removeOnCleanup(t, h.Namespace+"-"+name)
		containers = append(containers, h.Namespace+"-"+name)
		return exec.Command("docker", append(append(run, image(img)), args...)...)
	}
	start := time.Now()
	st, err := stack.Start(ctx, stack.Config{Cluster: c, Logger: log, Command: command})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Stop(); err != nil {
			t.Errorf("stop the stack: %v", err)
		}
	})
	t.Logf("relay and agent containers joined, proxy up, in %s", time.Since(start).Round(time.Millisecond))

	if len(containers) != 2 {
		t.Fatalf("containers started: %q, want the relay's and the agent's", containers)
	}
	for _, name := range containers {
		out, err := docker(ctx, "inspect", "--format", "{{.State.Running}} {{.Config.Image}} {{.Config.User}}", name)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("container %s: running, image, user: %s", name, strings.TrimSpace(out))
		if !strings.HasPrefix(out, "true ") {
			t.Errorf("container %s is not running: %s", name, out)
		}
	}

	request := time.Now()
	out, err := st.Kubectl(ctx, "get", "--raw", "/version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"gitVersion"`) {
		t.Fatalf("kubectl get --raw /version through tether: %v\n%s\n--- relay ---\n%s\n--- agent ---\n%s", err, out, st.Tail("relay", 20), st.Tail("agent", 20))
	}
	// The demo user may read nodes, as oidc:demo-user: the agent's
	// container impersonated the caller its token names.
	out, err = st.Kubectl(ctx, "get", "nodes", "-o", "name").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "node/") {
		t.Fatalf("kubectl get nodes through tether: %v\n%s", err, out)
	}
	out, err = st.Kubectl(ctx, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").CombinedOutput()
	if err != nil || string(out) != "oidc:demo-user" {
		t.Fatalf("kubectl auth whoami through tether = %q, %v; want oidc:demo-user", out, err)
	}
	t.Logf("kubectl get --raw /version, get nodes and auth whoami through the containers in %s; whole test %s",
		time.Since(request).Round(time.Millisecond), time.Since(begin).Round(time.Millisecond))
}

// chownTree gives dir and everything in it to uid:uid.
func chownTree(dir string, uid int) error {
	return filepath.WalkDir(dir, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, uid, uid)
	})
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

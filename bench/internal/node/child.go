package node

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Environment variables that make the harness binary run a role.
const (
	// EnvRole names the role a child process runs.
	EnvRole = "TETHER_BENCH_ROLE"
	// EnvArgs holds the role's arguments as JSON.
	EnvArgs = "TETHER_BENCH_ARGS"
	// EnvProfileDir, when set, makes every role write a CPU profile of its
	// whole life to <dir>/<role>-<pid>.pprof, and a heap profile there when
	// the parent sends "heap" (for finding where a component's time and
	// memory go; see the -profile flag).
	EnvProfileDir = "TETHER_BENCH_PROFILE_DIR"
)

// Role is a component that runs in a child process. It serves until ctx ends
// (the parent stopped it), calling c.Ready once it is ready for traffic, and
// returns nil after a clean stop.
type Role func(ctx context.Context, args json.RawMessage, c *Child) error

// Child is a role's side of the conversation with its parent.
type Child struct {
	mu       sync.Mutex
	out      *bufio.Writer
	stats    func() map[string]any
	commands map[string]func(json.RawMessage) (any, error)
}

// IsChild reports whether this process was started to run a role.
func IsChild() bool { return os.Getenv(EnvRole) != "" }

// ChildMain runs the role named by EnvRole with the arguments in EnvArgs and
// returns the process's exit code. It is meant to be called first thing from
// main (or TestMain) when IsChild is true.
func ChildMain(roles map[string]Role) int {
	name := os.Getenv(EnvRole)
	role, ok := roles[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "bench: no role %q\n", name)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if dir := os.Getenv(EnvProfileDir); dir != "" {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("%s-%d.pprof", name, os.Getpid())))
		if err == nil && pprof.StartCPUProfile(f) == nil {
			defer func() {
				pprof.StopCPUProfile()
				_ = f.Close()
				// And what the role allocated over its life, for
				// `go tool pprof -sample_index=alloc_space`.
				if a, err := os.Create(filepath.Join(dir, fmt.Sprintf("%s-%d-allocs.pprof", name, os.Getpid()))); err == nil {
					_ = pprof.Lookup("allocs").WriteTo(a, 0)
					_ = a.Close()
				}
			}()
		}
	}
	c := &Child{out: bufio.NewWriter(os.Stdout), commands: map[string]func(json.RawMessage) (any, error){}}
	// Standard input in non-blocking mode goes through the runtime's
	// poller, so that closing it ends a read in progress and the reader
	// can be joined.
	_ = syscall.SetNonblock(0, true)
	stdin := os.NewFile(0, "stdin")
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.serveParent(ctx, stdin, cancel)
	}()
	err := role(ctx, json.RawMessage(os.Getenv(EnvArgs)), c)
	cancel()
	_ = stdin.Close()
	wg.Wait()
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(os.Stderr, "bench: role %s: %v\n", name, err)
		return 1
	}
	return 0
}

// serveParent reads the parent's commands until standard input closes, then
// cancels the role.
func (c *Child) serveParent(ctx context.Context, stdin io.Reader, cancel context.CancelFunc) {
	defer cancel()
	sc := bufio.NewScanner(stdin)
	for sc.Scan() {
		if ctx.Err() != nil {
			return
		}
		name, arg, _ := strings.Cut(sc.Text(), " ")
		c.mu.Lock()
		f, cmd := c.stats, c.commands[name]
		c.mu.Unlock()
		switch {
		case name == "heap":
			_ = c.send("REPLY", writeHeapProfile())
		case name == "stats":
			m := map[string]any{}
			if f != nil {
				m = f()
			}
			m["goroutines"] = runtime.NumGoroutine()
			_ = c.send("REPLY", m)
		case cmd != nil:
			v, err := cmd(json.RawMessage(arg))
			if err != nil {
				v = map[string]string{"error": err.Error()}
			}
			_ = c.send("REPLY", v)
		default:
			_ = c.send("REPLY", map[string]string{"error": "no command " + name})
		}
	}
}

// writeHeapProfile writes a heap profile (after a GC) and the goroutines'
// stacks next to the CPU profile when EnvProfileDir is set; the "heap"
// command.
func writeHeapProfile() map[string]string {
	dir := os.Getenv(EnvProfileDir)
	if dir == "" {
		return map[string]string{}
	}
	runtime.GC()
	path := filepath.Join(dir, fmt.Sprintf("%s-%d-heap-%d.pprof", os.Getenv(EnvRole), os.Getpid(), time.Now().UnixNano()))
	f, err := os.Create(path)
	if err != nil {
		return map[string]string{"error": err.Error()}
	}
	defer f.Close()
	if err := pprof.WriteHeapProfile(f); err != nil {
		return map[string]string{"error": err.Error()}
	}
	// The goroutines too, grouped by stack, as text.
	g, err := os.Create(strings.TrimSuffix(path, ".pprof") + "-goroutines.txt")
	if err != nil {
		return map[string]string{"error": err.Error()}
	}
	defer g.Close()
	if err := pprof.Lookup("goroutine").WriteTo(g, 1); err != nil {
		return map[string]string{"error": err.Error()}
	}
	return map[string]string{"path": path}
}

// OnCommand sets what the role does when the parent sends command name
// (see Proc.Call): f gets the command's JSON argument and returns the
// reply, or an error that the parent's Call returns.
func (c *Child) OnCommand(name string, f func(arg json.RawMessage) (any, error)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.commands[name] = f
}

// Ready tells the parent the role serves, with v (JSON) for it to read.
func (c *Child) Ready(v any) error { return c.send("READY", v) }

// OnStats sets what the role answers when the parent asks for its stats. The
// runtime's goroutine count is always added as "goroutines".
func (c *Child) OnStats(f func() map[string]any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stats = f
}

func (c *Child) send(kind string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("node: encode %s: %w", kind, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := fmt.Fprintf(c.out, "%s %s\n", kind, b); err != nil {
		return fmt.Errorf("node: tell the parent %s: %w", kind, err)
	}
	if err := c.out.Flush(); err != nil {
		return fmt.Errorf("node: tell the parent %s: %w", kind, err)
	}
	return nil
}

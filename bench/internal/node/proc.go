package node

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ReadyTimeout bounds how long a child may take to say it is ready, unless
// its Spec says otherwise.
const ReadyTimeout = 60 * time.Second

// Spec describes a child process.
type Spec struct {
	// Name labels the process in reports and names its log file
	// ("relay", "agent"...). Required.
	Name string
	// Component groups processes that play one component for accounting
	// (several tether-proxy processes are all the "proxy"). Empty means
	// Name.
	Component string
	// Place is where the process runs.
	Place Place
	// Role, when set, runs this harness binary as that role, with Args
	// (encoded as JSON). Otherwise Path runs with Argv.
	Role string
	// Args are the role's arguments.
	Args any
	// Path and Argv are the command of a process that is not a role.
	Path string
	Argv []string
	// Protocol says that the command at Path speaks the roles' protocol
	// (READY and REPLY lines), as roles always do.
	Protocol bool
	// Env is added to the process's environment.
	Env []string
	// ReadyTimeout bounds how long a role may take to say it is ready.
	// Zero means ReadyTimeout.
	ReadyTimeout time.Duration
}

// Proc is a running child process. Its owner must call Stop (or Kill then
// Stop) to end it and release the goroutines that watch it.
type Proc struct {
	// Name is Spec.Name.
	Name string
	// Component is Spec.Component, or Name when that is empty.
	Component string
	// Ready is what a role child sent with READY; nil for other processes.
	Ready json.RawMessage

	cmd     *exec.Cmd
	stdin   io.WriteCloser
	logFile *os.File
	stats   chan json.RawMessage
	exited  chan struct{}
	waitErr error
	readers sync.WaitGroup
	stopMu  sync.Mutex
	stopped bool
	statsMu sync.Mutex
}

// Start starts the child described by spec in topology t, with its log in
// dir, and for a role waits until it is ready.
func Start(ctx context.Context, t *Topology, dir string, spec Spec) (_ *Proc, err error) {
	path, argv := spec.Path, spec.Argv
	env := append(os.Environ(), spec.Env...)
	if spec.Role != "" {
		self, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("node: find this binary: %w", err)
		}
		args, err := json.Marshal(spec.Args)
		if err != nil {
			return nil, fmt.Errorf("node: encode the arguments of %s: %w", spec.Name, err)
		}
		path, argv = self, nil
		env = append(env, EnvRole+"="+spec.Role, EnvArgs+"="+string(args))
	}
	cmd := t.Command(spec.Place, path, argv...)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	logFile, err := os.Create(filepath.Join(dir, spec.Name+".log"))
	if err != nil {
		return nil, fmt.Errorf("node: log of %s: %w", spec.Name, err)
	}
	component := spec.Component
	if component == "" {
		component = spec.Name
	}
	p := &Proc{Name: spec.Name, Component: component, cmd: cmd, logFile: logFile, stats: make(chan json.RawMessage, 1), exited: make(chan struct{})}
	cmd.Stderr = logFile
	protocol := spec.Role != "" || spec.Protocol
	var stdout io.ReadCloser
	if protocol {
		if stdout, err = cmd.StdoutPipe(); err != nil {
			_ = logFile.Close()
			return nil, fmt.Errorf("node: stdout of %s: %w", spec.Name, err)
		}
	} else {
		cmd.Stdout = logFile
	}
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		_ = logFile.Close()
		return nil, fmt.Errorf("node: stdin of %s: %w", spec.Name, err)
	}
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return nil, fmt.Errorf("node: start %s: %w", spec.Name, err)
	}
	ready := make(chan json.RawMessage, 1)
	if stdout != nil {
		p.readers.Add(1)
		go func() {
			defer p.readers.Done()
			p.readLines(stdout, ready)
		}()
	}
	p.readers.Add(1)
	go func() {
		defer p.readers.Done()
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	defer func() {
		if err != nil {
			_ = p.Stop()
		}
	}()
	if !protocol {
		return p, nil
	}
	readyTimeout := spec.ReadyTimeout
	if readyTimeout == 0 {
		readyTimeout = ReadyTimeout
	}
	timer := time.NewTimer(readyTimeout)
	defer timer.Stop()
	select {
	case p.Ready = <-ready:
		return p, nil
	case <-p.exited:
		return nil, fmt.Errorf("node: %s exited before it was ready: %w%s", spec.Name, p.waitErr, p.logTail())
	case <-timer.C:
		return nil, fmt.Errorf("node: %s not ready after %s%s", spec.Name, readyTimeout, p.logTail())
	case <-ctx.Done():
		return nil, fmt.Errorf("node: start %s: %w", spec.Name, ctx.Err())
	}
}

// readLines reads a role child's standard output: the READY line, REPLY
// answers; anything else goes to the log.
func (p *Proc) readLines(r io.Reader, ready chan<- json.RawMessage) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "READY "):
			select {
			case ready <- json.RawMessage(strings.TrimPrefix(line, "READY ")):
			default:
			}
		case strings.HasPrefix(line, "REPLY "):
			select {
			case p.stats <- json.RawMessage(strings.TrimPrefix(line, "REPLY ")):
			default:
			}
		default:
			_, _ = fmt.Fprintln(p.logFile, line)
		}
	}
}

// logTail returns the end of the process's log, for error messages.
func (p *Proc) logTail() string {
	b, err := os.ReadFile(p.logFile.Name())
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return "; its log ends:\n" + string(b)
}

// PID returns the process ID.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Exited is closed when the process has exited.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// Stats asks a role child for its stats (with "goroutines" always) and
// decodes them into v.
func (p *Proc) Stats(v any) error { return p.Call("stats", nil, v) }

// Call sends a role child command name with arg (as JSON), and decodes its
// reply into reply (which may be nil). A reply {"error": "..."} is
// returned as an error.
func (p *Proc) Call(name string, arg, reply any) error {
	return p.CallWithin(30*time.Second, name, arg, reply)
}

// CallWithin is Call with a time limit for the reply other than 30 s.
func (p *Proc) CallWithin(limit time.Duration, name string, arg, reply any) error {
	b, err := json.Marshal(arg)
	if err != nil {
		return fmt.Errorf("node: %s %s: %w", p.Name, name, err)
	}
	p.statsMu.Lock()
	defer p.statsMu.Unlock()
	if _, err := fmt.Fprintf(p.stdin, "%s %s\n", name, b); err != nil {
		return fmt.Errorf("node: send %s to %s: %w", name, p.Name, err)
	}
	select {
	case raw := <-p.stats:
		var e struct{ Error string }
		if json.Unmarshal(raw, &e) == nil && e.Error != "" {
			return fmt.Errorf("node: %s %s: %s", p.Name, name, e.Error)
		}
		if reply == nil {
			return nil
		}
		if err := json.Unmarshal(raw, reply); err != nil {
			return fmt.Errorf("node: reply of %s to %s: %w", p.Name, name, err)
		}
		return nil
	case <-p.exited:
		return fmt.Errorf("node: %s exited", p.Name)
	case <-time.After(limit):
		return fmt.Errorf("node: %s did not answer %s within %s", p.Name, name, limit)
	}
}

// Usage is what /proc says about a process at one moment.
type Usage struct {
	// CPU is the user and system time it used so far.
	CPU time.Duration
	// RSS is its resident memory, in bytes.
	RSS int64
	// Syscalls is how many read and write system calls it made so far
	// (/proc/PID/io's syscr + syscw; -1 where that is unreadable): unlike
	// CPU time, a count that other load on the machine does not change.
	Syscalls int64
}

// clockTick is the unit of /proc/PID/stat's times (USER_HZ, 100 on Linux).
const clockTick = 10 * time.Millisecond

// Usage reads the process's CPU time and resident memory.
func (p *Proc) Usage() (Usage, error) { return ReadUsage(p.PID()) }

// ReadUsage reads the CPU time and resident memory of process pid.
func ReadUsage(pid int) (Usage, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return Usage{}, fmt.Errorf("node: read process %d: %w", pid, err)
	}
	// The command name (field 2) is in parentheses and may hold spaces:
	// fields are counted after its closing parenthesis.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return Usage{}, fmt.Errorf("node: process %d: unreadable stat", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state): utime is field 14, stime 15, rss 24.
	if len(f) < 22 {
		return Usage{}, fmt.Errorf("node: process %d: short stat", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	rss, err3 := strconv.ParseInt(f[21], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return Usage{}, fmt.Errorf("node: process %d: stat: %w", pid, err)
	}
	return Usage{CPU: time.Duration(ut+st) * clockTick, RSS: rss * int64(os.Getpagesize()), Syscalls: readSyscalls(pid)}, nil
}

// readSyscalls returns syscr + syscw from /proc/PID/io, or -1.
func readSyscalls(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/io")
	if err != nil {
		return -1
	}
	var n int64
	seen := 0
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if !ok || (k != "syscr" && k != "syscw") {
			continue
		}
		x, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return -1
		}
		n += x
		seen++
	}
	if seen != 2 {
		return -1
	}
	return n
}

// Kill sends SIGKILL to the process, without waiting.
func (p *Proc) Kill() error {
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("node: kill %s: %w", p.Name, err)
	}
	return nil
}

// Stop ends the process: it closes its standard input (a role's signal to
// stop), sends SIGTERM, and SIGKILL after 5 s; then it waits for the
// process and the goroutines that watch it. It returns nil if the process
// had to be killed by Kill or exited on its own before.
func (p *Proc) Stop() error {
	p.stopMu.Lock()
	defer p.stopMu.Unlock()
	if p.stopped {
		return nil
	}
	p.stopped = true
	_ = p.stdin.Close()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.exited
	}
	p.readers.Wait()
	_ = p.logFile.Close()
	return nil
}

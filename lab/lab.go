// Package lab runs Edgeward as real processes on one machine: a swtpm "manufacturer"
// (a local CA that issues EK certificates), the server (`edgeward server`), and devices,
// each a swtpm process plus an `edgeward-agent device` process (which starts its own
// edgeward-runtime). It is shared by `edgeward demo` and the e2e suite, so it must not
// import testing. Every process it starts is stopped by Lab.Close.
package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/edgeward/edgeward/internal/testport"
)

// Bins are the Edgeward executables. Agent's directory must also hold
// edgeward-runtime unless Runtime is set.
type Bins struct {
	Edgeward string
	Agent    string
	Runtime  string
}

// FindBins returns the binaries next to the running executable (bin/ after make build).
func FindBins() (Bins, error) {
	self, err := os.Executable()
	if err != nil {
		return Bins{}, err
	}
	dir := filepath.Dir(self)
	b := Bins{Edgeward: self, Agent: filepath.Join(dir, "edgeward-agent"), Runtime: filepath.Join(dir, "edgeward-runtime")}
	return b, b.Check()
}

// Check reports a missing binary.
func (b Bins) Check() error {
	for _, p := range []string{b.Edgeward, b.Agent, b.Runtime} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("binary %s: %w (run make build)", p, err)
		}
	}
	return nil
}

// CheckDeps reports what the lab needs from the machine and does not find: swtpm,
// swtpm_setup and the ONNX Runtime library ($ONNXRUNTIME_LIB).
func CheckDeps() error {
	var errs []error
	for _, n := range []string{"swtpm", "swtpm_setup"} {
		if _, err := exec.LookPath(n); err != nil {
			errs = append(errs, fmt.Errorf("%s not found (make deps installs the Debian packages swtpm and swtpm-tools)", n))
		}
	}
	lib := os.Getenv("ONNXRUNTIME_LIB")
	if lib == "" {
		errs = append(errs, errors.New("ONNXRUNTIME_LIB is not set (make deps installs ONNX Runtime; the Makefile exports it)"))
	} else if _, err := os.Stat(lib); err != nil {
		errs = append(errs, fmt.Errorf("ONNX Runtime library: %w (run make deps)", err))
	}
	return errors.Join(errs...)
}

// Lab is a set of processes under one directory.
type Lab struct {
	Dir  string
	Bins Bins
	// Env is added to every child's environment.
	Env []string

	mu    sync.Mutex
	procs map[*Proc]bool
	maker *Manufacturer
}

// New makes a lab in dir (created if needed).
func New(dir string, bins Bins) (*Lab, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		return nil, err
	}
	return &Lab{Dir: dir, Bins: bins, procs: map[*Proc]bool{}}, nil
}

// Close stops every process the lab started that is still running (SIGTERM, then
// SIGKILL after 10 s) and waits for them.
func (l *Lab) Close() {
	l.mu.Lock()
	var ps []*Proc
	for p := range l.procs {
		ps = append(ps, p)
	}
	l.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Add(1)
		go func() { defer wg.Done(); p.Stop(10 * time.Second) }()
	}
	wg.Wait()
}

// Proc is a child process whose output goes to a log file.
type Proc struct {
	Name    string
	LogPath string
	cmd     *exec.Cmd
	done    chan struct{}
	lab     *Lab
}

// Start starts a child process; its stdout and stderr are appended to logs/<name>.log.
// The child gets SIGKILL if this process dies.
func (l *Lab) Start(name string, env []string, bin string, args ...string) (*Proc, error) {
	logPath := filepath.Join(l.Dir, "logs", name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "=== %s %s %s\n", time.Now().UTC().Format(time.RFC3339Nano), bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Env = append(append(os.Environ(), l.Env...), env...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, LogPath: logPath, cmd: cmd, done: make(chan struct{}), lab: l}
	l.mu.Lock()
	l.procs[p] = true
	l.mu.Unlock()
	go func() {
		cmd.Wait()
		f.Close()
		l.mu.Lock()
		delete(l.procs, p)
		l.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process ID.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Done is closed when the process has ended.
func (p *Proc) Done() <-chan struct{} { return p.done }

// ExitCode is the exit status (-1 if killed by a signal or still running).
func (p *Proc) ExitCode() int {
	if !p.Exited() {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// Stop sends SIGTERM and waits up to grace, then SIGKILL.
func (p *Proc) Stop(grace time.Duration) {
	if p == nil || p.Exited() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.Kill()
	}
}

// Kill sends SIGKILL and waits for the process to end.
func (p *Proc) Kill() {
	if p == nil {
		return
	}
	p.cmd.Process.Kill()
	<-p.done
}

// Tail returns the last n lines of the process's log.
func (p *Proc) Tail(n int) string { return Tail(p.LogPath, n) }

// Tail returns the last n lines of a file.
func Tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// Run runs a command to completion and returns its combined output.
func (l *Lab) Run(ctx context.Context, env []string, bin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(append(os.Environ(), l.Env...), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w\n%s", filepath.Base(bin), strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// WaitFor polls cond every 100 ms until it holds, ctx ends or timeout passes. cond
// returns whether the condition holds and, if not, what it saw (for the error).
func WaitFor(ctx context.Context, timeout time.Duration, what string, cond func(ctx context.Context) (bool, string, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	last := ""
	for {
		ok, seen, err := cond(ctx)
		var fe *finalError
		if errors.As(err, &fe) {
			return fmt.Errorf("waiting for %s: %w", what, fe.err)
		}
		if err != nil && ctx.Err() == nil {
			last = err.Error()
		} else if ok {
			return nil
		} else if seen != "" {
			last = seen
		}
		select {
		case <-ctx.Done():
			if last != "" {
				return fmt.Errorf("timed out after %s waiting for %s; last seen: %s", timeout, what, last)
			}
			return fmt.Errorf("timed out after %s waiting for %s", timeout, what)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Final marks an error of a WaitFor condition as final: WaitFor returns it at once
// instead of polling until its timeout.
func Final(err error) error { return &finalError{err} }

type finalError struct{ err error }

func (e *finalError) Error() string { return e.err.Error() }
func (e *finalError) Unwrap() error { return e.err }

// FreePort returns a TCP port on 127.0.0.1 that is free and reserved for this process,
// outside the ephemeral range (testport.Take).
func FreePort() (int, error) { return testport.Take() }

// Port reserves a free port on 127.0.0.1 (with pair, the next one too) for a process the
// caller starts itself; the lab's own processes never get it.
func (l *Lab) Port(pair bool) (int, error) { return l.port(pair) }

// port returns a free port (a pair p, p+1 with pair) reserved for this process
// (testport): never handed out twice, and outside the ephemeral range, so that no
// connection takes it before the process meant to bind it has started.
func (l *Lab) port(pair bool) (int, error) {
	if pair {
		return testport.TakePair()
	}
	return testport.Take()
}

// portOpen reports whether something accepts connections on 127.0.0.1:port.
func portOpen(port int) bool {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 200*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// waitPort waits until the port accepts connections (open) or refuses them (!open).
func waitPort(ctx context.Context, port int, open bool, timeout time.Duration, p *Proc) error {
	what := fmt.Sprintf("port %d to close", port)
	if open {
		what = fmt.Sprintf("port %d to accept connections", port)
	}
	return WaitFor(ctx, timeout, what, func(context.Context) (bool, string, error) {
		if open && p != nil && p.Exited() {
			return false, "", Final(fmt.Errorf("%s exited (%d): %s", p.Name, p.ExitCode(), p.Tail(5)))
		}
		return portOpen(port) == open, "", nil
	})
}

// httpGet returns the status code and body of a GET.
func httpGet(ctx context.Context, url string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return resp.StatusCode, b, err
}

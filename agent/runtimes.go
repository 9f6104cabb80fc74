package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// Runtimes starts and supervises the device's edgeward-runtime processes. The agent owns
// the public inference socket (Listener) and passes it to every process as fd 3, so a
// runtime swap never closes the port: a new process starts with --hold, is loaded and
// probed over its own control socket, then Serve makes it accept connections and drains
// the old one with SIGTERM (runtime/README.md, "Runtime swap"). Safe for concurrent use.
type Runtimes struct {
	// Binary is the edgeward-runtime executable. Required.
	Binary string
	// Listener is the public socket. Required.
	Listener *net.TCPListener
	// Dir holds the control sockets. Required.
	Dir string
	// Stderr receives the processes' output; nil: os.Stderr.
	Stderr io.Writer
	Logger *slog.Logger

	mu  sync.Mutex
	cur *RuntimeProc
	all map[*RuntimeProc]bool
	seq int
}

// RuntimeProc is one edgeward-runtime process.
type RuntimeProc struct {
	// Client calls its control API.
	Client *runtimeapi.Client
	// Lib is the ONNX Runtime library it was started with ("" = its default), SHA256 the
	// digest of that file's bytes when it was started.
	Lib, SHA256 string
	sock        string
	cmd         *exec.Cmd
	done        chan struct{}
}

// Start starts a runtime process with the ONNX Runtime library lib ("" = the runtime's
// default, $ONNXRUNTIME_LIB) and waits until its control API answers. With hold it does
// not accept public connections until Serve.
func (r *Runtimes) Start(ctx context.Context, lib string, hold bool) (*RuntimeProc, error) {
	p := &RuntimeProc{Lib: lib, done: make(chan struct{})}
	if lib != "" {
		sum, err := artifact.FileSHA256(lib)
		if err != nil {
			return nil, fmt.Errorf("runtime library: %w", err)
		}
		p.SHA256 = sum
	}
	f, err := r.Listener.File()
	if err != nil {
		return nil, fmt.Errorf("public socket: %w", err)
	}
	defer f.Close()
	r.mu.Lock()
	r.seq++
	sock := filepath.Join(r.Dir, fmt.Sprintf("runtime-%d.sock", r.seq))
	r.mu.Unlock()
	os.Remove(sock)
	args := []string{"--listen-fd", "3", "--control", "unix:" + sock}
	if lib != "" {
		args = append(args, "--ort-lib", lib)
	}
	if hold {
		args = append(args, "--hold")
	}
	cmd := exec.Command(r.Binary, args...)
	cmd.ExtraFiles = []*os.File{f}
	cmd.Stdout, cmd.Stderr = r.stderr(), r.stderr()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM} // never outlive the agent
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start runtime %s: %w", r.Binary, err)
	}
	p.cmd, p.sock = cmd, sock
	go func() { cmd.Wait(); close(p.done) }()
	p.Client = runtimeapi.NewUnixClient(sock)
	r.mu.Lock()
	if r.all == nil {
		r.all = map[*RuntimeProc]bool{}
	}
	r.all[p] = true
	r.mu.Unlock()
	r.log().Info("runtime started", "pid", cmd.Process.Pid, "lib", lib, "hold", hold)
	if err := p.waitControl(ctx, 30*time.Second); err != nil {
		r.Stop(p)
		return nil, err
	}
	if !hold {
		r.mu.Lock()
		old := r.cur
		r.cur = p
		r.mu.Unlock()
		if old != nil {
			go r.Stop(old)
		}
	}
	return p, nil
}

// Serve makes p accept public connections and the current runtime, then drains the
// previous one (SIGTERM; it finishes in-flight requests).
func (r *Runtimes) Serve(ctx context.Context, p *RuntimeProc) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.Client.BaseURL+"/v2/edgeward/serve", nil)
	if err != nil {
		return err
	}
	resp, err := p.Client.HTTPClient.Do(req)
	if err != nil {
		return fmt.Errorf("runtime serve: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("runtime serve: HTTP %d", resp.StatusCode)
	}
	r.mu.Lock()
	old := r.cur
	r.cur = p
	r.mu.Unlock()
	if old != nil && old != p {
		go r.Stop(old)
	}
	return nil
}

// Current is the runtime serving the public socket (nil before the first Start without
// hold or Serve).
func (r *Runtimes) Current() *RuntimeProc {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur
}

// Stop drains p (SIGTERM) and waits for it, killing it after 15 s.
func (r *Runtimes) Stop(p *RuntimeProc) {
	if p == nil || p.cmd == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
	os.Remove(p.sock)
	r.mu.Lock()
	delete(r.all, p)
	if r.cur == p {
		r.cur = nil
	}
	r.mu.Unlock()
}

// Close stops every process.
func (r *Runtimes) Close() {
	r.mu.Lock()
	var ps []*RuntimeProc
	for p := range r.all {
		ps = append(ps, p)
	}
	r.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Add(1)
		go func() { defer wg.Done(); r.Stop(p) }()
	}
	wg.Wait()
}

func (p *RuntimeProc) waitControl(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		_, err := p.Client.Index(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("runtime exited before its control API answered (lib %q)", p.Lib)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("runtime control API not reachable: %w", err)
		}
	}
}

func (r *Runtimes) stderr() io.Writer {
	if r.Stderr != nil {
		return r.Stderr
	}
	return os.Stderr
}

func (r *Runtimes) log() *slog.Logger {
	if r.Logger != nil {
		return r.Logger
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

var errNoRuntimes = errors.New("runtime trials need the agent to supervise its runtime processes")

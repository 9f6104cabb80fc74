// Package nginxtest runs Debian's nginx for tests: a foreground master process (never
// the system service) with its own prefix directory (configuration, logs, pid file and
// every temporary path inside it), listening on a free port of 127.0.0.1, stopped when
// the test ends. The caller writes the body of the http block: upstreams and servers.
//
//	ng := nginxtest.Start(t, func(port int) string {
//		return fmt.Sprintf(`upstream app { server 127.0.0.1:%d; }
//	server { listen 127.0.0.1:%d; location / { proxy_pass http://app; } }`, appPort, port)
//	})
//	http.Get(ng.URL + "/healthz")
//
// StartStream does the same with a stream block (TCP proxying, e.g. TLS passed through
// to the upstreams), logging each session (StreamSessions).
//
// The access log (AccessLog) has one line per request in the format AccessFormat names
// (the upstream that answered, its status, the cache status), so a test can see where
// requests went. A machine without nginx skips the test, unless EDGEWARD_REQUIRE_DEPS=1:
// then it fails (scripts/deps/00-apt.sh installs the package).
package nginxtest

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/testport"
)

// ErrMissing says the nginx binary is not installed.
var ErrMissing = errors.New("nginx not found (Debian package nginx; bash scripts/deps/00-apt.sh)")

// AccessFormat is the access log's format, named "edgeward" in the configuration: one
// line per request, fields separated by single spaces, the request line quoted:
//
//	$status "$request" $upstream_addr $upstream_status $upstream_cache_status $request_time
//
// $upstream_addr and $upstream_status list every upstream tried, comma-separated ("-"
// when none was): "127.0.0.1:4001, 127.0.0.1:4002" is a request nginx passed on to the
// next upstream after the first failed.
const AccessFormat = `$status "$request" $upstream_addr $upstream_status $upstream_cache_status $request_time`

// Bin finds nginx: $EDGEWARD_NGINX, else /usr/sbin/nginx (Debian), else $PATH.
func Bin() (string, error) {
	if b := os.Getenv("EDGEWARD_NGINX"); b != "" {
		if _, err := os.Stat(b); err != nil {
			return "", fmt.Errorf("EDGEWARD_NGINX=%s: %w: %w", b, err, ErrMissing)
		}
		return b, nil
	}
	if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
		return "/usr/sbin/nginx", nil
	}
	if b, err := exec.LookPath("nginx"); err == nil {
		return b, nil
	}
	return "", ErrMissing
}

// RequireDeps reports whether EDGEWARD_REQUIRE_DEPS=1 (a missing dependency fails).
func RequireDeps() bool { return os.Getenv("EDGEWARD_REQUIRE_DEPS") == "1" }

// Server is a running nginx.
type Server struct {
	// Dir is the prefix: nginx.conf, logs/access.log, logs/error.log, nginx.pid, tmp/.
	Dir string
	// Port is the port http's servers were given; URL is http://127.0.0.1:Port.
	Port int
	URL  string

	cmd  *exec.Cmd
	exit chan struct{}
	err  error // the process's exit status, once exit is closed
}

// Start starts nginx with the http block's body http(port), port being a free port of
// 127.0.0.1 for its server(s) to listen on, and waits until it accepts connections
// there. It stops nginx when t ends (printing the error log's tail when t failed). A
// port taken meanwhile by another process is retried with another. Without nginx t is
// skipped (failed under EDGEWARD_REQUIRE_DEPS=1).
func Start(t testing.TB, http func(port int) string) *Server {
	t.Helper()
	return startT(t, func(port int) block { return block{http: http(port)} })
}

// StartStream is Start with the body of a stream block instead (TCP proxying: the
// upstreams and servers of ngx_stream_core_module), for a proxy that passes TLS
// through to its upstreams untouched:
//
//	ng := nginxtest.StartStream(t, func(port int) string {
//		return fmt.Sprintf(`upstream app { server 127.0.0.1:%d; }
//	server { listen 127.0.0.1:%d; proxy_pass app; }`, appPort, port)
//	})
//
// Debian builds the stream module as a dynamic module (package libnginx-mod-stream);
// StartStream loads it. Without it t is skipped (failed under EDGEWARD_REQUIRE_DEPS=1).
// Each session is logged when it ends (StreamSessions).
func StartStream(t testing.TB, stream func(port int) string) *Server {
	t.Helper()
	return startT(t, func(port int) block { return block{stream: stream(port)} })
}

// block is the configuration's variable part: the bodies of the http and the stream
// blocks ("": no such block).
type block struct{ http, stream string }

func startT(t testing.TB, conf func(port int) block) *Server {
	t.Helper()
	bin, err := Bin()
	if err == nil && conf(0).stream != "" {
		_, err = streamModule(bin)
	}
	if err != nil {
		if RequireDeps() {
			t.Fatalf("nginx: %v", err)
		}
		t.Skipf("nginx: %v", err)
	}
	dir := t.TempDir()
	for attempt := 0; ; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		s, err := start(bin, dir, port, conf(port))
		if err == nil {
			t.Cleanup(func() {
				if err := s.Stop(); err != nil {
					t.Errorf("nginx: %v", err)
				}
				if t.Failed() {
					t.Logf("--- nginx error log (tail)\n%s", tailFile(filepath.Join(dir, "logs", "error.log"), 20))
				}
			})
			return s
		}
		if attempt == 2 {
			t.Fatalf("nginx: %v", err)
		}
	}
}

// userDirective keeps the workers under the test's own user: nginx started as root
// would switch them to nobody, who may not enter the test's temporary directories.
func userDirective() string {
	if os.Geteuid() != 0 {
		return ""
	}
	u, err := user.Current()
	if err != nil {
		return ""
	}
	g, err := user.LookupGroupId(u.Gid)
	if err != nil {
		return ""
	}
	return fmt.Sprintf("user %s %s;\n", u.Username, g.Name)
}

// ErrNoStream says nginx has no stream module.
var ErrNoStream = errors.New("nginx has no stream module (Debian package libnginx-mod-stream; bash scripts/deps/00-apt.sh)")

// streamModule returns the load_module directive nginx (bin) needs for the stream
// block: "" when the module is built in, the module's path under --modules-path when
// it is a dynamic one (Debian's --with-stream=dynamic), or ErrNoStream.
func streamModule(bin string) (string, error) {
	out, err := exec.Command(bin, "-V").CombinedOutput() // nginx -V prints to stderr
	if err != nil {
		return "", fmt.Errorf("%s -V: %v: %s", bin, err, out)
	}
	args := strings.Fields(string(out))
	dynamic, modules := false, "/usr/lib/nginx/modules"
	for _, a := range args {
		switch {
		case a == "--with-stream":
			return "", nil
		case a == "--with-stream=dynamic":
			dynamic = true
		case strings.HasPrefix(a, "--modules-path="):
			modules = strings.TrimPrefix(a, "--modules-path=")
		}
	}
	if !dynamic {
		return "", ErrNoStream
	}
	so := filepath.Join(modules, "ngx_stream_module.so")
	if _, err := os.Stat(so); err != nil {
		return "", fmt.Errorf("%w: %v", ErrNoStream, err)
	}
	return fmt.Sprintf("load_module %s;\n", so), nil
}

// StreamFormat is the stream sessions' log format (logs/stream.log), one line per
// session when it ends:
//
//	$remote_addr:$remote_port $upstream_addr $status $bytes_received $bytes_sent $session_time
//
// $upstream_addr lists the upstreams tried, comma-separated; $status is 200 for a
// session that ended normally, 502 when no upstream could be reached.
const StreamFormat = `$remote_addr:$remote_port $upstream_addr $status $bytes_received $bytes_sent $session_time`

func start(bin, dir string, port int, b block) (*Server, error) {
	for _, d := range []string{"logs", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	var conf strings.Builder
	if b.stream != "" {
		load, err := streamModule(bin)
		if err != nil {
			return nil, err
		}
		conf.WriteString(load)
	}
	fmt.Fprintf(&conf, `%sworker_processes 1;
pid %[2]s/nginx.pid;
error_log %[2]s/logs/error.log notice;
events { worker_connections 1024; }
`, userDirective(), dir)
	if b.http != "" || b.stream == "" {
		fmt.Fprintf(&conf, `http {
    default_type application/octet-stream;
    log_format edgeward '%[2]s';
    access_log %[1]s/logs/access.log edgeward;
    client_body_temp_path %[1]s/tmp/body;
    proxy_temp_path %[1]s/tmp/proxy;
    fastcgi_temp_path %[1]s/tmp/fastcgi;
    uwsgi_temp_path %[1]s/tmp/uwsgi;
    scgi_temp_path %[1]s/tmp/scgi;
%[3]s
}
`, dir, AccessFormat, b.http)
	}
	if b.stream != "" {
		fmt.Fprintf(&conf, `stream {
    log_format edgeward_stream '%[2]s';
    access_log %[1]s/logs/stream.log edgeward_stream;
%[3]s
}
`, dir, StreamFormat, b.stream)
	}
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf.String()), 0o644); err != nil {
		return nil, err
	}
	os.Remove(filepath.Join(dir, "logs", "error.log")) // this attempt's errors only
	cmd := exec.Command(bin, "-p", dir+"/", "-c", confPath, "-e", filepath.Join(dir, "logs", "error.log"), "-g", "daemon off;")
	out, err := os.Create(filepath.Join(dir, "logs", "stderr.log"))
	if err != nil {
		return nil, err
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group (Stop reaches the workers too); when the test binary dies
	// without Stop, the master gets SIGTERM and takes its workers down.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start nginx: %w", err)
	}
	s := &Server{Dir: dir, Port: port, URL: fmt.Sprintf("http://127.0.0.1:%d", port), cmd: cmd, exit: make(chan struct{})}
	go func() { s.err = cmd.Wait(); close(s.exit) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 200*time.Millisecond)
		if err == nil {
			c.Close()
			return s, nil
		}
		select {
		case <-s.exit:
			b, _ := os.ReadFile(filepath.Join(dir, "logs", "stderr.log"))
			return nil, fmt.Errorf("nginx exited (%v) on port %d:\n%s\n%s", s.err, port, b, tailFile(filepath.Join(dir, "logs", "error.log"), 10))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.Stop()
			return nil, fmt.Errorf("nginx does not accept connections on port %d within 30 s", port)
		}
	}
}

// Stop stops nginx (fast shutdown: SIGTERM; SIGKILL to the process group after 10 s)
// and waits for it. Safe to call more than once.
func (s *Server) Stop() error {
	select {
	case <-s.exit:
		return nil
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exit:
		return nil
	case <-time.After(10 * time.Second):
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.exit
		return errors.New("nginx did not stop within 10 s of SIGTERM")
	}
}

// AccessLog returns the access log's lines (AccessFormat) so far. nginx writes each
// line when the request completes.
func (s *Server) AccessLog() ([]string, error) {
	f, err := os.Open(filepath.Join(s.Dir, "logs", "access.log"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines, sc.Err()
}

// Entry is one access log line, parsed.
type Entry struct {
	Status int
	// Method and Path are from the request line.
	Method, Path string
	// Upstreams are the upstream addresses tried, in order (none: nginx answered
	// itself, e.g. from its cache); UpstreamStatus their answers ("502", or "-" when
	// the connection failed before an answer).
	Upstreams      []string
	UpstreamStatus []string
	// Cache is $upstream_cache_status: HIT, MISS, EXPIRED, REVALIDATED, … ("-": no cache).
	Cache string
}

// Entries parses the access log.
func (s *Server) Entries() ([]Entry, error) {
	lines, err := s.AccessLog()
	if err != nil {
		return nil, err
	}
	var es []Entry
	for _, l := range lines {
		e, err := ParseEntry(l)
		if err != nil {
			return nil, err
		}
		es = append(es, e)
	}
	return es, nil
}

// ParseEntry parses one line of AccessFormat.
func ParseEntry(line string) (Entry, error) {
	var e Entry
	q1 := strings.IndexByte(line, '"')
	q2 := strings.LastIndexByte(line, '"')
	if q1 < 0 || q2 <= q1 {
		return e, fmt.Errorf("access log line %q: no quoted request", line)
	}
	if _, err := fmt.Sscanf(strings.TrimSpace(line[:q1]), "%d", &e.Status); err != nil {
		return e, fmt.Errorf("access log line %q: status: %v", line, err)
	}
	if req := strings.Fields(line[q1+1 : q2]); len(req) >= 2 {
		e.Method, e.Path = req[0], req[1]
	}
	// The rest: upstream addresses and statuses are lists ("a, b" or "a : b" across
	// upstream groups); split on the fields' own separators.
	rest := strings.TrimSpace(line[q2+1:])
	rest = strings.ReplaceAll(rest, ", ", ",")
	rest = strings.ReplaceAll(rest, " : ", ",")
	f := strings.Fields(rest)
	if len(f) != 4 {
		return e, fmt.Errorf("access log line %q: want 4 fields after the request, got %d", line, len(f))
	}
	if f[0] != "-" {
		e.Upstreams = strings.Split(f[0], ",")
	}
	if f[1] != "-" || e.Upstreams != nil {
		e.UpstreamStatus = strings.Split(f[1], ",")
	}
	e.Cache = f[2]
	return e, nil
}

// StreamSession is one line of the stream log (StreamFormat), parsed.
type StreamSession struct {
	// Client is the client's address (host:port) as nginx saw it.
	Client string
	// Upstreams are the upstream addresses tried, in order (none: none was tried).
	Upstreams []string
	// Status is 200 for a session that ended normally, 502 when no upstream answered.
	Status int
	// Received and Sent are the bytes nginx received from the client and sent to it.
	Received, Sent int64
}

// StreamSessions parses the stream log: the sessions that have ended so far. The
// first is StartStream's own probe (connected and closed: no bytes either way).
func (s *Server) StreamSessions() ([]StreamSession, error) {
	b, err := os.ReadFile(filepath.Join(s.Dir, "logs", "stream.log"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []StreamSession
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		ss, err := ParseStreamSession(line)
		if err != nil {
			return nil, err
		}
		out = append(out, ss)
	}
	return out, nil
}

// ParseStreamSession parses one line of StreamFormat.
func ParseStreamSession(line string) (StreamSession, error) {
	var ss StreamSession
	f := strings.Fields(strings.ReplaceAll(line, ", ", ","))
	if len(f) != 6 {
		return ss, fmt.Errorf("stream log line %q: want 6 fields, got %d", line, len(f))
	}
	ss.Client = f[0]
	if f[1] != "-" {
		ss.Upstreams = strings.Split(f[1], ",")
	}
	if _, err := fmt.Sscanf(f[2]+" "+f[3]+" "+f[4], "%d %d %d", &ss.Status, &ss.Received, &ss.Sent); err != nil {
		return ss, fmt.Errorf("stream log line %q: %v", line, err)
	}
	return ss, nil
}

// freePort is a free port on 127.0.0.1, reserved for this process outside the
// ephemeral range (testport.Take).
func freePort() (int, error) { return testport.Take() }

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Package pgtest runs a throwaway PostgreSQL server for tests: Debian's binaries
// (/usr/lib/postgresql/15/bin, or EDGEWARD_PG_BINDIR), a cluster initialised into a
// temporary directory by an unprivileged user (the server refuses to run as root),
// listening on a free port of 127.0.0.1 with its unix socket inside that directory, and
// one fresh database per test. Nothing is left behind when Stop returns.
//
// One cluster per test binary keeps tests fast; start it lazily and stop it in TestMain:
//
//	var pg = pgtest.New()
//
//	func TestMain(m *testing.M) { code := m.Run(); pg.Stop(); os.Exit(code) }
//
//	func TestX(t *testing.T) { url := pg.Database(t) … }
//
// A machine without PostgreSQL skips those tests, unless EDGEWARD_REQUIRE_DEPS=1: then
// they fail (scripts/deps/00-apt.sh installs the package).
package pgtest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"

	"github.com/edgeward/edgeward/internal/testport"
)

// ErrMissing says the PostgreSQL server binaries are not installed.
var ErrMissing = errors.New("postgresql server binaries not found (Debian package postgresql; bash scripts/deps/00-apt.sh)")

// superuser is the cluster's bootstrap role; tests connect as it (trust auth, local only).
const superuser = "edgeward"

// Cluster is a lazily started PostgreSQL server. The zero value is not usable: New.
type Cluster struct {
	opt  Options
	once sync.Once
	err  error

	mu    sync.Mutex
	dir   string // owned by the server's user; removed by Stop
	port  int
	cmd   *exec.Cmd
	exit  chan error
	admin *sql.DB
	n     int // databases created
}

// Options configure a cluster. The zero value suits tests.
type Options struct {
	// Durable keeps PostgreSQL's defaults for durability (fsync, synchronous_commit,
	// full_page_writes), for benchmarks whose figures should mean what they would on a
	// real server. False turns them off: a test cluster dies with its test binary.
	Durable bool
}

// New returns a cluster that starts on first use.
func New() *Cluster { return &Cluster{} }

// NewWith is New with options.
func NewWith(o Options) *Cluster { return &Cluster{opt: o} }

// RequireDeps reports whether EDGEWARD_REQUIRE_DEPS=1 (a missing dependency fails).
func RequireDeps() bool { return os.Getenv("EDGEWARD_REQUIRE_DEPS") == "1" }

// BinDir finds the PostgreSQL server binaries: EDGEWARD_PG_BINDIR, else Debian's
// /usr/lib/postgresql/15/bin, else the newest /usr/lib/postgresql/*/bin.
func BinDir() (string, error) {
	ok := func(dir string) bool {
		_, err := os.Stat(filepath.Join(dir, "postgres"))
		_, err2 := os.Stat(filepath.Join(dir, "initdb"))
		return err == nil && err2 == nil
	}
	if d := os.Getenv("EDGEWARD_PG_BINDIR"); d != "" {
		if ok(d) {
			return d, nil
		}
		return "", fmt.Errorf("EDGEWARD_PG_BINDIR=%s: no postgres and initdb there: %w", d, ErrMissing)
	}
	if d := "/usr/lib/postgresql/15/bin"; ok(d) {
		return d, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[j])))
		return vi > vj
	})
	for _, d := range dirs {
		if ok(d) {
			return d, nil
		}
	}
	return "", ErrMissing
}

// Database creates a fresh database for t and returns its URL; it is dropped when t
// ends. The cluster starts on first use. Without PostgreSQL, t is skipped (failed under
// EDGEWARD_REQUIRE_DEPS=1).
func (c *Cluster) Database(t testing.TB) string {
	t.Helper()
	c.once.Do(func() { c.err = c.start() })
	if c.err != nil {
		if errors.Is(c.err, ErrMissing) && !RequireDeps() {
			t.Skipf("PostgreSQL: %v", c.err)
		}
		t.Fatalf("PostgreSQL: %v", c.err)
	}
	url, name, err := c.create()
	if err != nil {
		t.Fatalf("PostgreSQL: %v", err)
	}
	t.Cleanup(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.admin == nil {
			return // the cluster stopped first, and took its databases with it
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := c.admin.ExecContext(ctx, `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`); err != nil {
			t.Errorf("PostgreSQL: drop database %s: %v", name, err)
		}
	})
	return url
}

// CreateDatabase is Database for programs that are not tests (the bench driver): a
// fresh database, its URL, kept until Stop removes the cluster. The error wraps
// ErrMissing without PostgreSQL.
func (c *Cluster) CreateDatabase() (string, error) {
	c.once.Do(func() { c.err = c.start() })
	if c.err != nil {
		return "", c.err
	}
	url, _, err := c.create()
	return url, err
}

// create creates a database on the started cluster.
func (c *Cluster) create() (url, name string, err error) {
	c.mu.Lock()
	c.n++
	name = fmt.Sprintf("t%d_%d", c.n, time.Now().UnixNano()%1e6)
	admin, port := c.admin, c.port
	c.mu.Unlock()
	if admin == nil {
		return "", "", errors.New("the cluster is stopped")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := admin.ExecContext(ctx, `CREATE DATABASE `+name); err != nil {
		return "", "", fmt.Errorf("create database: %w", err)
	}
	return URL(port, name), name, nil
}

// PID is the postmaster's process ID (0 when the cluster is not running): its
// children are the cluster's background processes and backends, e.g. to measure the
// CPU time PostgreSQL spends.
func (c *Cluster) PID() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd == nil || c.cmd.Process == nil {
		return 0
	}
	return c.cmd.Process.Pid
}

// URL is the connection URL of database name on the cluster at port.
func URL(port int, name string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", superuser, port, name)
}

// Port is the port the cluster listens on (0 before it started).
func (c *Cluster) Port() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.port
}

// Main runs a test binary's tests and then stops its clusters; it returns the exit code
// for os.Exit, failing the run when a cluster does not stop cleanly:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, pg)) }
func Main(m *testing.M, clusters ...*Cluster) int {
	code := m.Run()
	for _, c := range clusters {
		if err := c.Stop(); err != nil && code == 0 {
			code = 1
		}
	}
	return code
}

// Stop stops the server (fast shutdown) and removes its directory. Safe to call when
// it never started, and more than once.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var err error
	if c.admin != nil {
		c.admin.Close()
		c.admin = nil
	}
	if c.cmd != nil {
		c.cmd.Process.Signal(syscall.SIGINT) // fast shutdown: disconnect clients, no checkpoint wait
		select {
		case <-c.exit:
		case <-time.After(20 * time.Second):
			c.cmd.Process.Signal(syscall.SIGQUIT)
			<-c.exit
			err = errors.New("postgres did not stop within 20 s")
		}
		c.cmd = nil
	}
	if c.dir != "" {
		if rerr := os.RemoveAll(c.dir); rerr != nil && err == nil {
			err = rerr
		}
		c.dir = ""
	}
	return err
}

// serverUser is who runs initdb and postgres: the current user, or when that is root
// an unprivileged one ("postgres", which Debian's package creates, else "nobody").
func serverUser() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.Atoi(u.Uid)
		gid, err2 := strconv.Atoi(u.Gid)
		if err1 != nil || err2 != nil || uid == 0 {
			continue
		}
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
	}
	return nil, errors.New("running as root and no unprivileged user (postgres, nobody) to run PostgreSQL as")
}

func (c *Cluster) start() error {
	bin, err := BinDir()
	if err != nil {
		return err
	}
	cred, err := serverUser()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "edgeward-pg-")
	if err != nil {
		return err
	}
	c.dir = dir
	ok := false
	defer func() {
		if !ok {
			c.Stop()
		}
	}()
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return err
		}
	}
	data, sock := filepath.Join(dir, "data"), dir
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", superuser, "--auth=trust",
		"-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	initdb.Dir = dir
	if out, err := initdb.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %v\n%s", err, out)
	}
	for attempt := 0; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		err = c.serve(bin, data, sock, port, cred)
		if err == nil {
			break
		}
		if attempt == 2 {
			return err
		}
	}
	ok = true
	return nil
}

// serve starts postgres on port and waits until it accepts connections.
func (c *Cluster) serve(bin, data, sock string, port int, cred *syscall.Credential) error {
	logf, err := os.Create(filepath.Join(c.dir, "postgres.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	args := []string{"-D", data,
		"-p", strconv.Itoa(port), "-k", sock,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "max_connections=300",
		"-c", "shared_buffers=64MB"}
	if !c.opt.Durable {
		// A test cluster lives as long as the test binary: durability across a machine
		// crash buys nothing, and fsync would slow every commit.
		args = append(args, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	}
	cmd := exec.Command(filepath.Join(bin, "postgres"), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so a ^C to the tests reaches it only through Stop; and
	// when the test binary dies without Stop, postgres shuts down (immediately).
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true, Pdeathsig: syscall.SIGQUIT}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	exit := make(chan error, 1)
	go func() { exit <- cmd.Wait() }()
	admin, err := sql.Open("pgx", URL(port, "postgres"))
	if err != nil {
		cmd.Process.Kill()
		<-exit
		return err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err = admin.PingContext(ctx)
		cancel()
		if err == nil {
			break
		}
		select {
		case werr := <-exit:
			admin.Close()
			log, _ := os.ReadFile(filepath.Join(c.dir, "postgres.log"))
			return fmt.Errorf("postgres exited (%v) on port %d:\n%s", werr, port, tail(string(log), 2000))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			admin.Close()
			cmd.Process.Kill()
			<-exit
			return fmt.Errorf("postgres not ready within 60 s: %v", err)
		}
	}
	c.mu.Lock()
	c.cmd, c.exit, c.admin, c.port = cmd, exit, admin, port
	c.mu.Unlock()
	return nil
}

// freePort is a free port on 127.0.0.1, reserved for this process outside the
// ephemeral range (testport.Take).
func freePort() (int, error) { return testport.Take() }

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

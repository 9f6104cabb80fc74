package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/deviceapi"
	"github.com/edgeward/edgeward/internal/pgtest"
	"github.com/edgeward/edgeward/internal/wire"
)

// CheckInHTTPRow is whole check-ins over HTTP against real `edgeward server` processes,
// one row per setup: the embedded sqlite store on one server, PostgreSQL on one server,
// and three replicas on one PostgreSQL behind nginx (round-robin). Each check-in is
// what a device does: the check-in with a quote over wire.QuoteData and the nonce its
// previous check-in's answer issued (or, the first time, one from a nonce request),
// verified by the server (AK certificate, signature, log replay) and admitted in one
// transaction with the nonce's consumption, the next nonce and the audit record.
//
// Besides check-ins per second, it reports the CPU time per check-in of each process
// (from /proc: utime + stime, and the reaped children's for PostgreSQL and nginx), so
// that the figure stays meaningful on a shared machine, and the capacity 2 cores would
// give the server side alone: 2e6 µs / (server + database + proxy µs per check-in).
// The load generator (this driver: the devices' quotes, JSON, HTTP client) runs on the
// same machine and is reported apart; real devices sign with their own TPMs.
type CheckInHTTPRow struct {
	Setup    string  `json:"setup"`
	Servers  int     `json:"servers"`
	CheckIns int     `json:"check_ins"` // per round
	InFlight int     `json:"in_flight"`
	PerSec   float64 `json:"check_ins_per_s"`
	// CPU time per check-in (µs) by process, medians over rounds.
	ServerCPU float64 `json:"server_cpu_us"`
	DBCPU     float64 `json:"db_cpu_us"`
	ProxyCPU  float64 `json:"proxy_cpu_us"`
	ClientCPU float64 `json:"load_generator_cpu_us"`
	// Capacity2 is 2e6 / (ServerCPU + DBCPU + ProxyCPU): check-ins per second two
	// cores would sustain at that cost, with the devices elsewhere.
	Capacity2 float64 `json:"two_core_capacity_per_s"`
	Rounds    int     `json:"rounds"`
	// NonceRequests is the most check-ins of a round that asked for a nonce first
	// (wire.PathNonce); the others quoted over the nonce their previous check-in's
	// answer issued (wire.CheckInResponse.NextNonce), as the agent does.
	NonceRequests int `json:"nonce_requests"`
}

// checkInHTTPDevices is the number of simulated devices; checkInHTTPInFlight of them
// check in at once (each one check-in at a time, on its own keep-alive connection).
// Group commit's batch is bounded by the check-ins in flight: with 64 the server
// waited on its fsyncs with CPU to spare (1,809–2,467/s at load 3, 420 µs of server
// CPU per check-in); a fleet that needs 3,000 check-ins/s has far more than 256 devices
// checking in at once (at that rate 256 in flight is about 85 ms per check-in).
const (
	checkInHTTPDevices  = 1024
	checkInHTTPInFlight = 256
)

// benchCheckInHTTP measures the three setups one after another, in this run.
func benchCheckInHTTP(ctx context.Context, cfg *config, n, rounds int) ([]CheckInHTTPRow, error) {
	// The load generator runs on the same cores as the servers: it collects garbage a
	// quarter as often (its heap is a few MiB), leaving them more of the CPU. Only this
	// process; the servers run with Go's defaults.
	defer debug.SetGCPercent(debug.SetGCPercent(400))
	pg := pgtest.NewWith(pgtest.Options{Durable: true})
	defer pg.Stop()
	var rows []CheckInHTTPRow
	for _, s := range []struct {
		key      string // of cfg.checkinSetups
		name     string
		servers  int
		postgres bool
	}{
		{"sqlite", "sqlite, 1 server", 1, false},
		{"postgres", "PostgreSQL, 1 server", 1, true},
		{"replicas", "PostgreSQL, 3 replicas behind nginx", 3, true},
	} {
		if !slices.Contains(strings.Split(cfg.checkinSetups, ","), s.key) {
			continue
		}
		db := ""
		if s.postgres {
			var err error
			if db, err = pg.CreateDatabase(); err != nil {
				return nil, fmt.Errorf("check-in over HTTP, %s: %w", s.name, err)
			}
		}
		row, err := checkInHTTPSetup(ctx, cfg, s.name, s.servers, db, pg, n, rounds)
		if err != nil {
			return nil, fmt.Errorf("check-in over HTTP, %s: %w", s.name, err)
		}
		rows = append(rows, row)
	}
	return rows, nil
}

func checkInHTTPSetup(ctx context.Context, cfg *config, name string, servers int, db string, pg *pgtest.Cluster, n, rounds int) (CheckInHTTPRow, error) {
	row := CheckInHTTPRow{Setup: name, Servers: servers, CheckIns: n, InFlight: checkInHTTPInFlight, Rounds: rounds}
	dir, err := os.MkdirTemp(cfg.work, "checkin-http-")
	if err != nil {
		return row, err
	}
	defer os.RemoveAll(dir)
	edgeward := filepath.Join(cfg.bin, "edgeward")
	env := []string{"EDGEWARD_PASSPHRASE=" + benchPassphrase}
	if db != "" {
		env = append(env, "EDGEWARD_DB="+db)
	}
	repo := filepath.Join(dir, "repo")
	if _, err := runChild(ctx, edgeward, []string{"repo", "init", repo}, env); err != nil {
		return row, err
	}
	// The attestation CA the servers load from DIR/attest: the driver keeps its key to
	// issue the simulated devices' AK certificates.
	caKey, caCert, err := writeAttestCA(filepath.Join(repo, "attest"))
	if err != nil {
		return row, err
	}
	var procs []*service
	defer func() {
		for _, p := range procs {
			p.stop()
		}
	}()
	var ports []int
	for i := range servers {
		port := freePort()
		s, err := startService(fmt.Sprintf("edgeward server %d", i), filepath.Join(dir, fmt.Sprintf("server-%d.log", i)), env,
			// Each simulated device checks in as fast as its turn comes: far beyond the
			// per-device bound a real fleet never reaches, which is off here.
			edgeward, "server", "--repo", repo, "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--plain-devices", "--check-in-burst", "-1")
		if err != nil {
			return row, err
		}
		procs = append(procs, s)
		if err := waitHTTP(fmt.Sprintf("http://127.0.0.1:%d/healthz", port), 60*time.Second); err != nil {
			return row, fmt.Errorf("%w (log: %s)", err, s.log.Name())
		}
		ports = append(ports, port)
	}
	serverPIDs := make([]int, len(procs))
	for i, p := range procs {
		serverPIDs[i] = p.pid()
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	var proxy *service
	if servers > 1 {
		if proxy, base, err = startProxy(filepath.Join(dir, "nginx"), ports); err != nil {
			return row, err
		}
		procs = append(procs, proxy)
	}
	devs := make([]*benchDevice, checkInHTTPDevices)
	for i := range devs {
		soft, err := attesttest.NewSoftDevice(caKey, caCert, fmt.Sprintf("bench-%04d", i))
		if err != nil {
			return row, err
		}
		if devs[i], err = newBenchDevice(soft, wire.CheckInRequest{DeviceID: soft.ID, Labels: map[string]string{"line": "press"},
			Hardware: "x86_64", AgentVersion: "0.1.0", Slots: map[artifact.Kind]wire.Slot{}}); err != nil {
			return row, err
		}
	}
	// One keep-alive connection per device in flight, as a device keeps its own.
	conns := newConnPool(strings.TrimPrefix(base, "http://"), checkInHTTPInFlight)
	defer conns.close()
	// Warm up: every device enrolls (first check-in), the servers prepare their
	// statements and keep the AK certificates verified.
	if _, err := driveCheckIns(ctx, conns, devs, checkInHTTPDevices); err != nil {
		return row, err
	}
	var perSec, srv, dbc, prx, cli []float64
	for r := range rounds {
		s0, d0, p0 := procTreeCPU(serverPIDs, false), pgCPU(pg, db), proxyCPU(proxy)
		c0 := selfCPU()
		t0 := time.Now()
		asked, err := driveCheckIns(ctx, conns, devs, n)
		if err != nil {
			return row, err
		}
		wall := time.Since(t0)
		row.NonceRequests = max(row.NonceRequests, int(asked))
		per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(n) }
		perSec = append(perSec, float64(n)/wall.Seconds())
		srv = append(srv, per(procTreeCPU(serverPIDs, false)-s0))
		dbc = append(dbc, per(pgCPU(pg, db)-d0))
		prx = append(prx, per(proxyCPU(proxy)-p0))
		cli = append(cli, per(selfCPU()-c0))
		logf("check-in over HTTP, %s, round %d: %.0f/s; CPU per check-in: server %.0f µs, database %.0f µs, nginx %.0f µs, load generator %.0f µs; %d of %d asked for a nonce first",
			name, r, perSec[r], srv[r], dbc[r], prx[r], cli[r], asked, n)
	}
	row.PerSec = round(median(perSec), 0)
	row.ServerCPU, row.DBCPU, row.ProxyCPU, row.ClientCPU = round(median(srv), 0), round(median(dbc), 0), round(median(prx), 0), round(median(cli), 0)
	if side := row.ServerCPU + row.DBCPU + row.ProxyCPU; side > 0 {
		row.Capacity2 = round(2e6/side, 0)
	}
	return row, nil
}

// benchDevice is a simulated device, its check-in's facts (the same at every check-in)
// and the nonce its last check-in's answer issued for the next one
// (wire.CheckInResponse.NextNonce), as the agent keeps it.
type benchDevice struct {
	mu   sync.Mutex
	soft *attesttest.SoftDevice
	req  wire.CheckInRequest // without nonce and evidence
	next []byte
	tmpl checkInTemplate
}

func newBenchDevice(soft *attesttest.SoftDevice, req wire.CheckInRequest) (*benchDevice, error) {
	d := &benchDevice{soft: soft, req: req}
	var err error
	d.tmpl, err = newCheckInTemplate(soft, &d.req)
	return d, err
}

// checkInTemplate is a device's check-in request as JSON, cut where what changes at
// every check-in goes: the nonce, the quote's TPMS_ATTEST and its signature (base64,
// as encoding/json writes []byte). What is between them (the facts, the AK
// certificate, the quoted PCR's value, the measurement log) is marshalled once by
// encoding/json, as is what QuoteData digests beside the nonce (wire.QuoteFields):
// the load generator runs on the server's cores, and re-encoding the same facts at
// every check-in was a sixth of its CPU. TestCheckInTemplate checks that the bytes are
// json.Marshal's for the whole request.
type checkInTemplate struct {
	parts  [4][]byte // before the nonce, before the attest, before the signature, after it
	fields []byte    // wire.QuoteFields of the request
	pcrs   map[int][]byte
	logLen int
}

// newCheckInTemplate marshals req with evidence from d (its AK certificate, and a quote
// for the PCR values and the log) and placeholders for the nonce, the attest and the
// signature, and cuts the JSON at the placeholders.
func newCheckInTemplate(d *attesttest.SoftDevice, req *wire.CheckInRequest) (checkInTemplate, error) {
	var t checkInTemplate
	var err error
	if t.fields, err = wire.QuoteFields(req); err != nil {
		return t, err
	}
	q, log, err := d.Quote(make([]byte, sha256.Size))
	if err != nil {
		return t, err
	}
	t.pcrs, t.logLen = q.PCRs, len(log)
	// Placeholders whose base64 cannot occur elsewhere in the JSON (0xfb… encodes as
	// "+/…", which no facts, certificate or digest of a few bytes can repeat 48 times).
	marks := [3][]byte{bytes.Repeat([]byte{0xfb, 0xef, 0xbe}, 16), bytes.Repeat([]byte{0xfb, 0xff, 0xbe}, 16), bytes.Repeat([]byte{0xfb, 0xef, 0xff}, 16)}
	r := *req
	r.Nonce = marks[0]
	q.Attest, q.Signature = marks[1], marks[2]
	r.Evidence = wire.Evidence{AKCert: d.AKCert, Quote: q, Log: log}
	b, err := json.Marshal(&r)
	if err != nil {
		return t, err
	}
	for i, m := range marks {
		enc := `"` + base64.StdEncoding.EncodeToString(m) + `"`
		at := bytes.Index(b, []byte(enc))
		if at < 0 || bytes.Count(b, []byte(enc)) != 1 {
			return t, fmt.Errorf("check-in template of %s: placeholder %d found %d times", d.ID, i, bytes.Count(b, []byte(enc)))
		}
		t.parts[i] = slices.Clone(b[:at+1])
		b = b[at+len(enc)-1:]
	}
	t.parts[3] = slices.Clone(b)
	return t, nil
}

// appendRequest appends the JSON of the request with nonce and the quote (attest,
// signature): json.Marshal's bytes for the template's request with that evidence.
func (t *checkInTemplate) appendRequest(b, nonce, attest, sig []byte) []byte {
	b = append(b, t.parts[0]...)
	b = base64.StdEncoding.AppendEncode(b, nonce)
	b = append(b, t.parts[1]...)
	b = base64.StdEncoding.AppendEncode(b, attest)
	b = append(b, t.parts[2]...)
	b = base64.StdEncoding.AppendEncode(b, sig)
	return append(b, t.parts[3]...)
}

// checkInAnswer is what the device takes from a check-in's answer
// (wire.CheckInResponse): whether the server trusted it, and the next nonce. The
// bench devices keep no audit log (agent.Attested.Audit nil), so they do not check the
// answer's checkpoint, as the agent does not then.
type checkInAnswer struct {
	DeviceID  string   `json:"device_id"`
	Trusted   bool     `json:"trusted"`
	Reasons   []string `json:"reasons"`
	NextNonce []byte   `json:"next_nonce"`
}

// driveCheckIns runs n whole check-ins, checkInHTTPInFlight at a time, each device one
// at a time, and fails on the first that is not answered trusted. It returns how many
// of them asked for a nonce first (the others quoted over the nonce their last answer
// issued).
func driveCheckIns(ctx context.Context, conns *connPool, devs []*benchDevice, n int) (int64, error) {
	var next, asked atomic.Int64
	_, err := parallel(n, checkInHTTPInFlight, func(int) error {
		d := devs[int(next.Add(1)-1)%len(devs)]
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.next == nil {
			asked.Add(1)
		}
		c := conns.get()
		defer conns.put(c)
		return softCheckIn(ctx, c, d)
	})
	return asked.Load(), err
}

// softCheckIn is one device's check-in, as the agent does it: the nonce its last
// answer issued (or, without one or when the server refuses it, a new nonce from
// PathNonce), a quote over the request, the check-in. Every quote is a new ECDSA
// signature by the device's key over this request and nonce, which the server verifies.
func softCheckIn(ctx context.Context, c *devConn, d *benchDevice) error {
	nonce, held := d.next, d.next != nil
	d.next = nil
	for {
		if !held {
			var out wire.NonceResponse
			body, err := json.Marshal(wire.NonceRequest{DeviceID: d.soft.ID})
			if err != nil {
				return err
			}
			if err := c.post(ctx, wire.PathNonce, body, &out); err != nil {
				return err
			}
			nonce = out.Nonce
		}
		q, log, err := d.soft.Quote(wire.QuoteDigest(nonce, d.tmpl.fields))
		if err != nil {
			return err
		}
		if len(log) != d.tmpl.logLen || !maps.EqualFunc(q.PCRs, d.tmpl.pcrs, bytes.Equal) {
			return fmt.Errorf("device %s measured since its check-in template was made", d.soft.ID)
		}
		c.body = d.tmpl.appendRequest(c.body[:0], nonce, q.Attest, q.Signature)
		var resp checkInAnswer
		err = c.post(ctx, wire.PathCheckIn, c.body, &resp)
		var apiErr *deviceapi.Error
		if held && errors.As(err, &apiErr) && apiErr.Status == http.StatusUnauthorized {
			held = false
			continue
		}
		if err != nil {
			return err
		}
		if resp.DeviceID != d.soft.ID {
			return fmt.Errorf("check-in of %s answered for %q", d.soft.ID, resp.DeviceID)
		}
		if !resp.Trusted {
			return fmt.Errorf("check-in of %s not trusted: %v", d.soft.ID, resp.Reasons)
		}
		d.next = resp.NextNonce
		return nil
	}
}

// connPool holds the load generator's keep-alive connections to the server, one per
// check-in in flight.
type connPool struct {
	addr string
	free chan *devConn
}

func newConnPool(addr string, size int) *connPool {
	p := &connPool{addr: addr, free: make(chan *devConn, size)}
	for range size {
		p.free <- &devConn{addr: addr}
	}
	return p
}

func (p *connPool) get() *devConn  { return <-p.free }
func (p *connPool) put(c *devConn) { p.free <- c }

func (p *connPool) close() {
	for range cap(p.free) {
		(<-p.free).close()
	}
}

// devConn is a device's keep-alive HTTP/1.1 connection to the device API: what it sends
// is what internal/deviceapi sends (a POST of the JSON request, Content-Type
// application/json), written in one write; the answer is read with the standard
// library's parser (http.ReadResponse, chunked bodies included) and judged as deviceapi
// does (a status other than 200 is a *deviceapi.Error). It spares the load generator
// http.Transport's goroutine hand-offs per request, CPU the server's cores then have.
// Not safe for concurrent use: one check-in at a time (connPool).
type devConn struct {
	addr string
	c    net.Conn
	br   *bufio.Reader
	buf  []byte // the request
	body []byte // the request's body, for the caller to fill
	resp []byte // the answer's body
}

func (c *devConn) close() {
	if c.c != nil {
		c.c.Close()
		c.c = nil
	}
}

// post sends the JSON body to path and decodes a 200 answer into out. A request on a
// kept connection that gets no answer at all (the server closed it while idle) is sent
// again once on a new connection.
func (c *devConn) post(ctx context.Context, path string, body []byte, out any) error {
	c.buf = append(c.buf[:0], "POST "...)
	c.buf = append(c.buf, path...)
	c.buf = append(c.buf, " HTTP/1.1\r\nHost: "...)
	c.buf = append(c.buf, c.addr...)
	c.buf = append(c.buf, "\r\nUser-Agent: edgeward-bench\r\nContent-Type: application/json\r\nContent-Length: "...)
	c.buf = strconv.AppendInt(c.buf, int64(len(body)), 10)
	c.buf = append(c.buf, "\r\n\r\n"...)
	c.buf = append(c.buf, body...)
	var status int
	var data []byte
	var err error
	for attempt := 0; ; attempt++ {
		reused := c.c != nil
		if !reused {
			var d net.Dialer
			if c.c, err = d.DialContext(ctx, "tcp", c.addr); err != nil {
				return fmt.Errorf("device API %s: %w", path, err)
			}
			c.br = bufio.NewReaderSize(c.c, 8<<10)
		}
		if status, data, err = c.roundTrip(); err == nil {
			break
		}
		c.close()
		if !reused || attempt > 0 {
			return fmt.Errorf("device API %s: %w", path, err)
		}
	}
	return deviceapi.DecodeAnswer(path, status, data, out)
}

// roundTrip writes the request in c.buf and reads the answer; the connection is
// closed afterwards when the server asked to.
func (c *devConn) roundTrip() (int, []byte, error) {
	if _, err := c.c.Write(c.buf); err != nil {
		return 0, nil, err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return 0, nil, err
	}
	var data []byte
	if n := resp.ContentLength; n >= 0 && n <= wire.MaxRequestBytes {
		// The usual answer: read into the connection's buffer.
		c.resp = slices.Grow(c.resp[:0], int(n))[:n]
		_, err = io.ReadFull(resp.Body, c.resp)
		data = c.resp
	} else {
		data, err = io.ReadAll(io.LimitReader(resp.Body, wire.MaxRequestBytes))
	}
	resp.Body.Close()
	if err != nil {
		return 0, nil, err
	}
	if resp.Close {
		c.close()
	}
	return resp.StatusCode, data, nil
}

// writeAttestCA creates the attestation CA `edgeward server` loads from dir (ca.key,
// PKCS #8, and ca.pem) and returns it.
func writeAttestCA(dir string) (crypto.Signer, *x509.Certificate, error) {
	key, cert, err := attestca.NewRoot("Bench Attestation CA", 24*time.Hour)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644); err != nil {
		return nil, nil, err
	}
	return key, cert, nil
}

const proxyConf = `# generated by bench/driver: the replicas behind nginx, round-robin
{{USER}}worker_processes 2;
daemon off;
master_process on;
pid {{PREFIX}}/nginx.pid;
error_log {{PREFIX}}/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path {{PREFIX}}/body;
    proxy_temp_path {{PREFIX}}/proxy;
    fastcgi_temp_path {{PREFIX}}/fastcgi;
    uwsgi_temp_path {{PREFIX}}/uwsgi;
    scgi_temp_path {{PREFIX}}/scgi;
    keepalive_requests 1000000;
    upstream edgeward {
{{SERVERS}}        keepalive 128;
    }
    server {
        listen 127.0.0.1:{{PORT}};
        location / {
            proxy_pass http://edgeward;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }
    }
}
`

// startProxy runs nginx in front of the servers on ports, round-robin, in prefix.
func startProxy(prefix string, ports []int) (*service, string, error) {
	if err := os.MkdirAll(prefix, 0o755); err != nil {
		return nil, "", err
	}
	var servers strings.Builder
	for _, p := range ports {
		fmt.Fprintf(&servers, "        server 127.0.0.1:%d;\n", p)
	}
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;\n" // the workers would switch to nobody, who may not enter prefix
	}
	port := freePort()
	conf := strings.NewReplacer("{{USER}}", user, "{{PREFIX}}", prefix, "{{PORT}}", strconv.Itoa(port), "{{SERVERS}}", servers.String()).Replace(proxyConf)
	confPath := filepath.Join(prefix, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, "", err
	}
	s, err := startService("nginx", filepath.Join(prefix, "stderr.log"), nil, "nginx", "-p", prefix, "-c", confPath, "-e", filepath.Join(prefix, "error.log"))
	if err != nil {
		return nil, "", err
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	if err := waitHTTP(base+"/healthz", 10*time.Second); err != nil {
		s.stop()
		return nil, "", err
	}
	return s, base, nil
}

// clockTick is the kernel's USER_HZ, the unit of /proc/PID/stat's times.
const clockTick = 100

// procCPU is a process's CPU time so far (utime + stime), and with children the
// time of its children that it has waited for (cutime + cstime); 0 when it is gone.
func procCPU(pid int, children bool) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]) // f[0] is field 3 (state)
	if len(f) < 15 {
		return 0
	}
	var ticks int64
	last := 13 // stime, field 15
	if children {
		last = 15 // cstime, field 17
	}
	for i := 11; i <= last; i++ { // utime is field 14
		v, _ := strconv.ParseInt(f[i], 10, 64)
		ticks += v
	}
	return time.Duration(ticks) * time.Second / clockTick
}

// childrenOf lists the processes whose parent is one of pids.
func childrenOf(pids []int) []int {
	parent := map[int]bool{}
	for _, p := range pids {
		parent[p] = true
	}
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 1 {
			if pp, _ := strconv.Atoi(f[1]); parent[pp] {
				out = append(out, pid)
			}
		}
	}
	return out
}

// procTreeCPU is the CPU time of pids and, with children, of their live children and
// the ones they reaped.
func procTreeCPU(pids []int, children bool) time.Duration {
	var d time.Duration
	for _, p := range pids {
		d += procCPU(p, children)
	}
	if children {
		for _, c := range childrenOf(pids) {
			d += procCPU(c, false)
		}
	}
	return d
}

// pgCPU is the CPU time of the PostgreSQL cluster (postmaster, its background
// processes and backends) when db is on it; 0 for sqlite.
func pgCPU(pg *pgtest.Cluster, db string) time.Duration {
	if db == "" || pg.PID() == 0 {
		return 0
	}
	return procTreeCPU([]int{pg.PID()}, true)
}

func proxyCPU(s *service) time.Duration {
	if s == nil {
		return 0
	}
	return procTreeCPU([]int{s.pid()}, true)
}

// selfCPU is this process's CPU time (the load generator's, when nothing else runs).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

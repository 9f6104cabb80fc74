// Package stepca embeds step-ca (github.com/smallstep/certificates) as the
// device certificate authority: one ACME provisioner that allows only the
// device-attest-01 challenge with attestation format "tpm", trusting AK
// certificates from Edgeward's attestation CA (attest/attestca). Devices get
// short-lived certificates for TPM-resident keys (see attest.RequestDeviceCert)
// and use them for mTLS.
//
// Server side only; the agent never links it.
package stepca

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/edgeward/edgeward/internal/durable"

	"github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/ca"
)

// Config configures the embedded CA. Zero values are useful defaults.
type Config struct {
	// Dir holds the CA's keys, certificates, config and database; created
	// when missing, reused (same root) when present. Required.
	Dir string
	// Address is the HTTPS listen address; empty means 127.0.0.1 on a free
	// port.
	Address string
	// DNSNames are the names in the CA's TLS certificate; nil means
	// localhost, 127.0.0.1 and ::1.
	DNSNames []string
	// AttestationRoots are the roots AK certificates must chain to: the
	// attestation CA's root. Required.
	AttestationRoots []*x509.Certificate
	// CertDuration is the device certificate lifetime; zero means 24h.
	CertDuration time.Duration
	// Provisioner is the ACME provisioner name; empty means "edgeward".
	Provisioner string
	// StateDir holds this process's step-ca configuration (ca.json) and database (the
	// ACME accounts, orders and certificates it served); empty means Dir. step-ca's
	// database admits one process at a time, so replicas sharing Dir each need their
	// own; the CA itself (its root and intermediate in Dir) is shared.
	StateDir string
	// Lock, when set, is held while the CA's root and intermediate are read or
	// created in Dir, so that processes starting together on one Dir create them once
	// and all use that one (e.g. a lease in the database the replicas share, which
	// holds across machines). A lock on Dir itself (flock(2)) is always taken too.
	Lock func(ctx context.Context) (unlock func(), err error)
	// Refuse, when set, is asked before the CA signs a certificate, new or renewed,
	// naming TPM permanent identifiers (device IDs): an error refuses it, and the ACME
	// order fails (e.g. a decommissioned device renewing its certificate). The CA then
	// signs with its intermediate through step-ca's softcas, as it would without.
	Refuse func(ctx context.Context, ids []string) error

	// pickAddr, when set, picks the address for an empty Address instead of a free
	// port on 127.0.0.1 (freeAddr); tests use it to hand out a taken one.
	pickAddr func() (string, error)
}

// Server is a running embedded step-ca.
type Server struct {
	// URL is the CA's base URL, https://host:port.
	URL string
	// DirectoryURL is the ACME directory of the device provisioner.
	DirectoryURL string
	// Root is the CA root devices' certificates chain to (trust it for
	// mTLS client certificates and for talking to the CA).
	Root *x509.Certificate

	cfg    Config // Address set: a rotation serves on the same one
	path   string // the configuration file
	dbPath string

	mu     sync.Mutex // guards ca, done and closed; held across a rotation
	ca     *ca.CA
	done   chan error
	closed bool
}

// ConfigFile is the step-ca configuration file Start writes into Dir; the
// real step-ca binary runs with it too (`step-ca Dir/ca.json`).
const ConfigFile = "ca.json"

// Start writes the configuration (keys on first start) and runs step-ca
// until ctx is done or Close is called.
func Start(ctx context.Context, c Config) (*Server, error) {
	if c.Dir == "" {
		return nil, errors.New("stepca: Dir is required")
	}
	if len(c.AttestationRoots) == 0 {
		return nil, errors.New("stepca: AttestationRoots are required")
	}
	// A free port picked for it (no Address) may be taken by another process before
	// step-ca binds it, which it does itself, later: then another is picked, up to
	// portTries times.
	auto := c.Address == ""
	var s *Server
	for try := 1; ; try++ {
		path, root, addr, err := writeConfigLocked(ctx, c)
		if err != nil {
			return nil, err
		}
		cc := c
		cc.Address = addr
		s = &Server{URL: "https://" + addr, Root: root, cfg: cc, path: path, dbPath: dbFile(cc)}
		s.DirectoryURL = s.URL + "/acme/" + provisionerName(cc) + "/directory"
		s.mu.Lock()
		err = s.runLocked(ctx)
		s.mu.Unlock()
		if err == nil {
			break
		}
		if !auto || try == portTries || !addrInUse(err) {
			return nil, err
		}
	}
	go func() {
		<-ctx.Done()
		s.Close()
	}()
	return s, nil
}

// writeConfigLocked is WriteConfig under c.Lock, if set.
func writeConfigLocked(ctx context.Context, c Config) (path string, root *x509.Certificate, addr string, err error) {
	if c.Lock != nil {
		unlock, err := c.Lock(ctx)
		if err != nil {
			return "", nil, "", fmt.Errorf("stepca: lock the CA's creation: %w", err)
		}
		defer unlock()
	}
	return WriteConfig(c)
}

// previousAddr is the listen address in the step-ca configuration at path, written by an
// earlier start; "" if there is none or it cannot be read.
func previousAddr(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var conf struct {
		Address string `json:"address"`
	}
	if json.Unmarshal(b, &conf) != nil {
		return ""
	}
	if _, _, err := net.SplitHostPort(conf.Address); err != nil {
		return ""
	}
	return conf.Address
}

// addrFree reports whether addr could be listened on a moment ago.
func addrFree(addr string) bool {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// freeAddr is an address on 127.0.0.1 whose port was free a moment ago.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// portTries is how many free ports Start tries when it picks the port itself.
const portTries = 5

// addrInUse reports whether err is a listener's "address already in use", whether or
// not step-ca's wrapping kept the error chain.
func addrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
}

// runLocked starts step-ca with the configuration at s.path and waits until it serves.
func (s *Server) runLocked(ctx context.Context) error {
	cfg, err := config.LoadConfiguration(s.path)
	if err != nil {
		return fmt.Errorf("stepca: %w", err)
	}
	opts := []ca.Option{ca.WithConfigFile(s.path), ca.WithQuiet(true)}
	if s.cfg.Refuse != nil {
		cas, err := newRefusingCAS(ctx, s.cfg.Dir, s.cfg.Refuse)
		if err != nil {
			return err
		}
		opts = append(opts, ca.WithX509CAService(cas))
	}
	srv, err := ca.New(cfg, opts...)
	if err != nil {
		return fmt.Errorf("stepca: start: %w", err)
	}
	done := make(chan error, 1)
	exited := make(chan struct{}) // closed when Run returned, with runErr
	var runErr error
	go func() {
		runErr = srv.Run()
		close(exited)
		done <- runErr
	}()
	s.ca, s.done = srv, done
	// Wait until it serves. A health check in flight ends when Run does: whatever took
	// the port (Start picks another) may accept connections and never answer.
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-exited:
			cancel()
		case <-hctx.Done():
		}
	}()
	pool := x509.NewCertPool()
	pool.AddCert(s.Root)
	hc := s.Client(pool)
	deadline := time.Now().Add(15 * time.Second)
	for {
		req, err := http.NewRequestWithContext(hctx, http.MethodGet, s.URL+"/health", nil)
		if err != nil {
			srv.Stop()
			return fmt.Errorf("stepca: %w", err)
		}
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-exited:
			return fmt.Errorf("stepca: stopped at start: %w", runErr)
		default:
		}
		if ctx.Err() != nil {
			srv.Stop()
			return fmt.Errorf("stepca: start: %w", context.Cause(ctx))
		}
		if time.Now().After(deadline) {
			srv.Stop()
			return fmt.Errorf("stepca: not serving on %s: %v", s.cfg.Address, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// DBBytes is the size of the CA's database file. step-ca keeps every ACME account,
// order, authorization and certificate it served, and its bbolt file never shrinks:
// about 10 KB per device certificate (2 MiB after 200 renewals of one device's).
// It waits for a rotation under way.
func (s *Server) DBBytes() (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fi, err := os.Stat(s.dbPath)
	if err != nil {
		return 0, fmt.Errorf("stepca: %w", err)
	}
	return fi.Size(), nil
}

// Rotate stops the CA, deletes its database and starts it again, on the same address
// with the same root, provisioner and keys, on an empty one. What the database holds is
// disposable for Edgeward's devices: they register their ACME account again on demand
// (its key is derived in their TPM, attest.RequestDeviceCert registers at every order),
// an order lasts seconds, and certificates are renewed by new ACME orders, never
// through step-ca's /renew, which would look them up. An order under way fails and is
// made again at the device's next TLS handshake. Requests while it restarts are
// refused (connection refused).
func (s *Server) Rotate(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("stepca: closed")
	}
	if err := s.ca.Stop(); err != nil {
		return fmt.Errorf("stepca: stop for the rotation: %w", err)
	}
	<-s.done
	if err := os.Remove(s.dbPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("stepca: rotate the database: %w", err)
	}
	if err := s.runLocked(ctx); err != nil {
		s.closed = true
		return fmt.Errorf("stepca: restart after the rotation: %w", err)
	}
	return nil
}

// Client returns an HTTP client that trusts roots (nil: the CA's root).
func (s *Server) Client(roots *x509.CertPool) *http.Client {
	if roots == nil {
		roots = x509.NewCertPool()
		roots.AddCert(s.Root)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig.RootCAs = roots
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// Close stops the CA. It is idempotent and safe for concurrent use.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	return s.ca.Stop()
}

// dbFile is the bbolt file of c's step-ca (WriteConfig).
func dbFile(c Config) string {
	state := c.StateDir
	if state == "" {
		state = c.Dir
	}
	return filepath.Join(state, "db", "bolt.db")
}

func provisionerName(c Config) string {
	if c.Provisioner == "" {
		return "edgeward"
	}
	return c.Provisioner
}

// WriteConfig writes Dir/ca.json (and, on first use, a root and an
// intermediate CA with unencrypted keys, mode 0600) for a step-ca with a
// single ACME provisioner: challenges ["device-attest-01"], attestation
// formats ["tpm"], attestationRoots = c.AttestationRoots, default and
// maximum TLS certificate duration c.CertDuration. It returns the config
// path, the root and the listen address.
func WriteConfig(c Config) (path string, root *x509.Certificate, addr string, err error) {
	state := c.StateDir
	if state == "" {
		state = c.Dir
	}
	if err := durable.MkdirAll(filepath.Join(state, "db"), 0o700); err != nil {
		return "", nil, "", fmt.Errorf("stepca: %w", err)
	}
	root, err = ensureCALocked(c.Dir)
	if err != nil {
		return "", nil, "", err
	}
	addr = c.Address
	if addr == "" {
		// The address of the last start, while it is free: step-ca keeps each ACME
		// account's location URL, port included, and refuses an account whose location
		// names another ("kid does not match stored account location"). Devices derive
		// their account key in their TPM, so the same account orders every renewal: on a
		// new port none of them could renew.
		prev := previousAddr(filepath.Join(state, ConfigFile))
		if prev != "" && addrFree(prev) {
			addr = prev
		} else {
			pick := c.pickAddr
			if pick == nil {
				pick = freeAddr
			}
			if addr, err = pick(); err != nil {
				return "", nil, "", fmt.Errorf("stepca: %w", err)
			}
			if prev != "" && addr != prev {
				// Another process took the port: the accounts stored name it. Start
				// with an empty database, as a rotation does (Server.Rotate): nothing in
				// it is needed again, devices register afresh at every order.
				if err := os.Remove(dbFile(c)); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return "", nil, "", fmt.Errorf("stepca: the address moved from %s: empty the database: %w", prev, err)
				}
			}
		}
	}
	dur := c.CertDuration
	if dur == 0 {
		dur = 24 * time.Hour
	}
	var attRoots []byte
	for _, r := range c.AttestationRoots {
		attRoots = append(attRoots, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	dns := c.DNSNames
	if dns == nil {
		dns = []string{"localhost", "127.0.0.1", "::1"}
	}
	prov := map[string]any{
		"type":               "ACME",
		"name":               provisionerName(c),
		"challenges":         []string{"device-attest-01"},
		"attestationFormats": []string{"tpm"},
		"attestationRoots":   attRoots,
		"claims": map[string]any{
			// A device certificate is renewed by a new ACME order (device-attest-01:
			// the key is proven to be the TPM's, and Refuse is asked), never through
			// /renew, which signs on the old certificate alone (found from outside, 2 Dec:
			// it did, with no attestation, and answered a decommissioned device 500).
			"disableRenewal":         true,
			"minTLSCertDuration":     "5m",
			"defaultTLSCertDuration": dur.String(),
			"maxTLSCertDuration":     dur.String(),
		},
	}
	// No "logger": step-ca's request log is logrus with fields of its own, a second
	// format in the server's log. Its few messages go through the standard library's
	// log package, which the server routes into its own logger.
	conf := map[string]any{
		"root":     filepath.Join(c.Dir, "root_ca.crt"),
		"crt":      filepath.Join(c.Dir, "intermediate_ca.crt"),
		"key":      filepath.Join(c.Dir, "intermediate_ca_key"),
		"address":  addr,
		"dnsNames": dns,
		"db":       map[string]any{"type": "bbolt", "dataSource": dbFile(c)},
		"authority": map[string]any{
			"provisioners": []any{prov},
		},
		"tls": map[string]any{"minVersion": 1.2, "maxVersion": 1.3},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return "", nil, "", err
	}
	path = filepath.Join(state, ConfigFile)
	// Written only when it changes: a rewrite at every start needs free blocks, and a
	// server whose disk had filled up could not start ("stepca: write …/ca.json: no
	// space left on device"; found from outside).
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, b) {
		return path, root, addr, nil
	}
	if err := durable.WriteFile(path, b, 0o600); err != nil {
		return "", nil, "", fmt.Errorf("stepca: %w", err)
	}
	return path, root, addr, nil
}

// ensureCALocked is ensureCA under an exclusive flock(2) of dir/.lock: processes of one
// machine (or on a file system whose locks are shared) create the CA once.
func ensureCALocked(dir string) (*x509.Certificate, error) {
	if err := durable.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("stepca: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("stepca: %w", err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return nil, fmt.Errorf("stepca: lock %s: %w", dir, err)
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return ensureCA(dir)
}

// ensureCA creates the root and intermediate when missing. Each file is written
// atomically and durably, the root last: its presence means the CA is complete.
func ensureCA(dir string) (*x509.Certificate, error) {
	rootPath := filepath.Join(dir, "root_ca.crt")
	b, err := os.ReadFile(rootPath)
	switch {
	case err == nil:
		blk, _ := pem.Decode(b)
		if blk == nil {
			return nil, fmt.Errorf("stepca: %s: no PEM certificate", rootPath)
		}
		return x509.ParseCertificate(blk.Bytes)
	case !errors.Is(err, fs.ErrNotExist):
		// A root that cannot be read (permissions, I/O, a bad link) is not a missing
		// one: making a new CA here would overwrite the intermediate's key and strand
		// every certificate the old root signed, with no way back.
		return nil, fmt.Errorf("stepca: read the root certificate: %w", err)
	}
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	intKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	serial := func() *big.Int {
		n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
		return n
	}
	rootT := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "Edgeward Device Root CA"},
		NotBefore: now.Add(-5 * time.Minute), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, MaxPathLen: 1,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootT, rootT, rootKey.Public(), rootKey)
	if err != nil {
		return nil, err
	}
	root, _ := x509.ParseCertificate(rootDER)
	intT := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "Edgeward Device Intermediate CA"},
		NotBefore: now.Add(-5 * time.Minute), NotAfter: now.Add(5 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	intDER, err := x509.CreateCertificate(rand.Reader, intT, root, intKey.Public(), rootKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(intKey)
	if err != nil {
		return nil, err
	}
	files := []struct {
		name string
		blk  *pem.Block
	}{
		{"intermediate_ca_key", &pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}},
		{"intermediate_ca.crt", &pem.Block{Type: "CERTIFICATE", Bytes: intDER}},
		{"root_ca.crt", &pem.Block{Type: "CERTIFICATE", Bytes: rootDER}}, // last: its presence means "done"
	}
	for _, f := range files {
		if err := durable.WriteFile(filepath.Join(dir, f.name), pem.EncodeToMemory(f.blk), 0o600); err != nil {
			return nil, fmt.Errorf("stepca: %w", err)
		}
	}
	// The root key is not kept: the intermediate signs everything, and a
	// new intermediate means a new root (re-enrollment of devices' trust).
	return root, nil
}

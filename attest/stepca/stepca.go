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
}

// Server is a running embedded step-ca.
type Server struct {
	// URL is the CA's base URL, https://host:port.
	URL string
	// DirectoryURL is the ACME directory of the device provisioner.
	DirectoryURL string
	// Root is the CA root devices' certificates chain to (trust it for
	// mTLS client certificates and for talking to the CA).
	Root     *x509.Certificate
	ca       *ca.CA
	done     chan error
	stopOnce sync.Once
	stopErr  error
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
	unlock := func() {}
	if c.Lock != nil {
		var err error
		if unlock, err = c.Lock(ctx); err != nil {
			return nil, fmt.Errorf("stepca: lock the CA's creation: %w", err)
		}
	}
	path, root, addr, err := WriteConfig(c)
	unlock()
	if err != nil {
		return nil, err
	}
	cfg, err := config.LoadConfiguration(path)
	if err != nil {
		return nil, fmt.Errorf("stepca: %w", err)
	}
	opts := []ca.Option{ca.WithConfigFile(path), ca.WithQuiet(true)}
	if c.Refuse != nil {
		cas, err := newRefusingCAS(ctx, c.Dir, c.Refuse)
		if err != nil {
			return nil, err
		}
		opts = append(opts, ca.WithX509CAService(cas))
	}
	srv, err := ca.New(cfg, opts...)
	if err != nil {
		return nil, fmt.Errorf("stepca: start: %w", err)
	}
	s := &Server{
		URL:  "https://" + addr,
		Root: root,
		ca:   srv,
		done: make(chan error, 1),
	}
	s.DirectoryURL = s.URL + "/acme/" + provisionerName(c) + "/directory"
	go func() { s.done <- srv.Run() }()
	go func() {
		<-ctx.Done()
		s.Close()
	}()
	// Wait until it serves.
	pool := x509.NewCertPool()
	pool.AddCert(root)
	hc := s.Client(pool)
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := hc.Get(s.URL + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s, nil
			}
		}
		select {
		case err := <-s.done:
			return nil, fmt.Errorf("stepca: stopped at start: %w", err)
		default:
		}
		if time.Now().After(deadline) {
			s.Close()
			return nil, fmt.Errorf("stepca: not serving on %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
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
	s.stopOnce.Do(func() { s.stopErr = s.ca.Stop() })
	return s.stopErr
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
	if err := os.MkdirAll(filepath.Join(state, "db"), 0o700); err != nil {
		return "", nil, "", fmt.Errorf("stepca: %w", err)
	}
	root, err = ensureCALocked(c.Dir)
	if err != nil {
		return "", nil, "", err
	}
	addr = c.Address
	if addr == "" {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", nil, "", fmt.Errorf("stepca: %w", err)
		}
		addr = l.Addr().String()
		l.Close()
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
		"db":       map[string]any{"type": "bbolt", "dataSource": filepath.Join(state, "db", "bolt.db")},
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
	if err := durable.WriteFile(path, b, 0o600); err != nil {
		return "", nil, "", fmt.Errorf("stepca: %w", err)
	}
	return path, root, addr, nil
}

// ensureCALocked is ensureCA under an exclusive flock(2) of dir/.lock: processes of one
// machine (or on a file system whose locks are shared) create the CA once.
func ensureCALocked(dir string) (*x509.Certificate, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
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

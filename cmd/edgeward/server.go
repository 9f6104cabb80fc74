package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/attest/stepca"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
	reposerver "github.com/edgeward/edgeward/repo-server"
	"github.com/edgeward/edgeward/repo-server/audit"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repo-server/ui"
	"github.com/edgeward/edgeward/repository"
)

func cmdServer(ctx context.Context, env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var rf repoFlags
	rf.register(fs, env)
	listen := fs.String("listen", "127.0.0.1:8440", "address to serve on")
	var witnesses listFlag
	fs.Var(&witnesses, "witness", "base URL of an 'edgeward audit witness' that cosigns the audit log's checkpoints; repeat for each")
	cpInterval := fs.Duration("checkpoint-interval", 10*time.Second, "how often the audit log's checkpoint is signed and sent to the witnesses")
	refresh := fs.Duration("refresh-interval", 0, "how often to check online metadata expiry (default: min(1m, timestamp lifetime/10))")
	attestDir := fs.String("attest-dir", "", "attestation CA key and certificate (default DIR/attest; created on first start)")
	ekRoots := fs.String("ek-roots", "", "PEM file of TPM manufacturer root certificates EK certificates must chain to")
	ekInter := fs.String("ek-intermediates", "", "PEM file of manufacturer intermediate certificates")
	policyDir := fs.String("policy", "", "fleet policy directory, hot-reloaded; rollouts created through the operator API are written there (default DIR/policy, created with an empty policy on first start)")
	checkIn := fs.Duration("check-in-interval", 30*time.Second, "check-in interval suggested to devices")
	pcr := fs.Int("measurement-pcr", 16, "the PCR devices measure artifacts into: 16 in development, 23 in production (must match the agents' --pcr)")
	tlsListen := fs.String("tls-listen", "", "also serve HTTPS here and require devices to use mTLS with certificates from the device CA (embedded step-ca unless --ca-url)")
	tlsNames := fs.String("tls-names", "localhost,127.0.0.1", "names in the server's TLS certificate (comma-separated DNS names or IPs)")
	caURL := fs.String("ca-url", "", "external step-ca ACME directory for device certificates (with --ca-root); default: embed step-ca")
	caRoot := fs.String("ca-root", "", "PEM root of the external step-ca")
	secureCookie := fs.Bool("secure-cookie", false, "mark the dashboard's session cookie Secure even on plain HTTP (set it when a TLS proxy fronts the server)")
	signing := fs.Bool("sign-delegated", false, "let the server sign published targets with the models/runtimes keys it finds (--key, DIR/keys/offline; passphrase from --passphrase-file or $EDGEWARD_PASSPHRASE); without it POST /v1/publish answers 503")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(env.stderr, nil))
	repo, err := repository.Open(repository.Config{Dir: rf.dir, Actor: "server", Logger: log, Recorder: reposerver.AuditRecorder{Dir: rf.dir}})
	if err != nil {
		return err
	}
	if _, err := repo.Load(ctx); err != nil {
		return fmt.Errorf("repository %s: %w", rf.dir, err)
	}
	srv, err := reposerver.NewServer(reposerver.ServerConfig{Repo: repo, RefreshInterval: *refresh, Logger: log, Witnesses: witnesses, CheckpointInterval: *cpInterval})
	if err != nil {
		return err
	}
	store, err := fleet.Open(ctx, filepath.Join(rf.dir, "fleet.db"))
	if err != nil {
		return err
	}
	defer store.Close()
	if *attestDir == "" {
		*attestDir = filepath.Join(rf.dir, "attest")
	}
	caKey, caCert, err := loadOrCreateAttestCA(*attestDir)
	if err != nil {
		return err
	}
	cacfg := attestca.Config{Signer: caKey, Certificate: caCert, Logger: log,
		// Every enrollment decision (challenge, issued, rejected) goes to the audit log.
		Audit: func(ctx context.Context, e attestca.Event) {
			srv.AuditEvent(ctx, "attestation-ca", "enrollment."+e.Kind, e.EKID, map[string]string{"reason": e.Reason, "serial": e.Serial})
		}}
	if *ekRoots != "" {
		if cacfg.ManufacturerRoots, err = loadPool(*ekRoots); err != nil {
			return err
		}
	} else {
		log.Warn("no --ek-roots: no TPM can enroll")
	}
	if *ekInter != "" {
		if cacfg.ManufacturerIntermediates, err = loadPool(*ekInter); err != nil {
			return err
		}
	}
	ca, err := attestca.New(cacfg)
	if err != nil {
		return err
	}
	defaultPolicy := *policyDir == ""
	if defaultPolicy {
		*policyDir = filepath.Join(rf.dir, "policy")
	}
	if err := ensurePolicyDir(*policyDir, defaultPolicy); err != nil {
		return err
	}
	var current func() *policy.Policy
	op := reposerver.OperatorConfig{Fleet: store}
	if _, err := os.Stat(*policyDir); err == nil {
		w, err := policy.NewWatcher(policy.WatcherConfig{Dir: *policyDir, Registerer: srv.Registry(), Logger: log})
		if err != nil {
			return err
		}
		defer w.Close()
		go w.Run(ctx)
		current = w.Policy
		op.PolicyDir, op.Policy, op.PolicyStatus = *policyDir, w.Policy, w.Status
		log.Info("policy", "dir", *policyDir, "status", w.Status())
	}
	if *signing {
		op.Signing = rf.keyring()
		if _, err := op.Signing.Passphrase(); err != nil {
			return fmt.Errorf("--sign-delegated: %w", err)
		}
	}
	if err := srv.EnableOperatorAPI(op); err != nil {
		return err
	}
	dash, err := ui.New(ui.Config{Fleet: store, Policy: op.Policy, PolicyStatus: op.PolicyStatus, Logger: log, SecureCookie: *secureCookie,
		Audit: func(ctx context.Context) (*audit.Log, io.Closer, error) { return reposerver.OpenAudit(ctx, repo) }})
	if err != nil {
		return err
	}
	srv.Handle("/ui/", dash.Handler())
	dcfg := reposerver.DeviceConfig{Fleet: store, AttestCA: ca, Policy: current, CheckInInterval: *checkIn, MeasurementPCR: *pcr}
	var tlsLn net.Listener
	if *tlsListen != "" {
		if *caURL != "" {
			pool, err := loadPool(*caRoot)
			if err != nil {
				return fmt.Errorf("--ca-root: %w", err)
			}
			pemBytes, _ := os.ReadFile(*caRoot)
			dcfg.ClientRoots, dcfg.DeviceCA = pool, &wire.DeviceCA{DirectoryURL: *caURL, RootPEM: string(pemBytes)}
		} else {
			sca, err := stepca.Start(ctx, stepca.Config{Dir: filepath.Join(rf.dir, "stepca"), AttestationRoots: []*x509.Certificate{caCert}})
			if err != nil {
				return fmt.Errorf("embedded step-ca: %w", err)
			}
			defer sca.Close()
			dcfg.ClientRoots = x509.NewCertPool()
			dcfg.ClientRoots.AddCert(sca.Root)
			dcfg.DeviceCA = &wire.DeviceCA{DirectoryURL: sca.DirectoryURL, RootPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: sca.Root.Raw}))}
			log.Info("device CA (embedded step-ca)", "acme", sca.DirectoryURL)
		}
		cert, err := loadOrCreateServerCert(filepath.Join(rf.dir, "tls"), strings.Split(*tlsNames, ","))
		if err != nil {
			return err
		}
		raw, err := net.Listen("tcp", *tlsListen)
		if err != nil {
			return err
		}
		tlsLn = tls.NewListener(raw, &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.VerifyClientCertIfGiven,
			ClientCAs: dcfg.ClientRoots, MinVersion: tls.VersionTLS12})
		log.Info("serving TLS (devices must use mTLS)", "addr", "https://"+raw.Addr().String(), "server_cert", filepath.Join(rf.dir, "tls", "server.pem"))
	}
	if err := srv.EnableDeviceAPI(dcfg); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	if tlsLn != nil {
		go func() {
			if err := srv.ServeListener(ctx, tlsLn); err != nil {
				log.Error("TLS listener", "err", err)
			}
		}()
	}
	log.Info("serving", "addr", "http://"+ln.Addr().String(), "repo", rf.dir, "dashboard", "http://"+ln.Addr().String()+"/ui/")
	return srv.Serve(ctx, ln)
}

func cmdTokenCreate(ctx context.Context, env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("token create", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var rf repoFlags
	rf.register(fs, env)
	name := fs.String("name", "", "operator name (attributes their actions in the audit log)")
	role := fs.String("role", "", "security-admin, release-manager or auditor")
	ttl := fs.Duration("ttl", 30*24*time.Hour, "token lifetime")
	var c opClient
	c.register(fs, env)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	r, err := fleet.ParseRole(*role)
	if err != nil {
		return err
	}
	if c.server != "" { // through the operator API, as a security admin
		res, err := createTokenRemote(ctx, &c, *name, r, *ttl)
		if err != nil {
			return err
		}
		fmt.Fprintf(env.stderr, "token %s for %s (%s), expires %s; it is shown once:\n", res.Info.ID, *name, r, res.Info.ExpiresAt.Format(time.RFC3339))
		fmt.Fprintln(env.stdout, res.Token)
		return nil
	}
	store, err := fleet.Open(ctx, filepath.Join(rf.dir, "fleet.db"))
	if err != nil {
		return err
	}
	defer store.Close()
	tok, info, err := store.CreateToken(ctx, *name, r, *ttl, time.Now())
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stderr, "token %s for %s (%s), expires %s; it is shown once:\n", info.ID, *name, r, info.ExpiresAt.Format(time.RFC3339))
	fmt.Fprintln(env.stdout, tok)
	return nil
}

// loadOrCreateAttestCA reads the attestation CA's key and certificate from dir, creating
// a self-signed CA (valid ten years) on first use. The key file is mode 0600.
func loadOrCreateAttestCA(dir string) (crypto.Signer, *x509.Certificate, error) {
	keyPath, certPath := filepath.Join(dir, "ca.key"), filepath.Join(dir, "ca.pem")
	kb, kerr := os.ReadFile(keyPath)
	cb, cerr := os.ReadFile(certPath)
	if errors.Is(kerr, os.ErrNotExist) && errors.Is(cerr, os.ErrNotExist) {
		signer, cert, err := attestca.NewRoot("Edgeward Attestation CA", 10*365*24*time.Hour)
		if err != nil {
			return nil, nil, err
		}
		der, err := x509.MarshalPKCS8PrivateKey(signer)
		if err != nil {
			return nil, nil, err
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, nil, err
		}
		fsys := repository.OSFS{}
		if err := fsys.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			return nil, nil, err
		}
		if err := fsys.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644); err != nil {
			return nil, nil, err
		}
		return signer, cert, nil
	}
	if kerr != nil || cerr != nil {
		return nil, nil, fmt.Errorf("attestation CA in %s: %v %v", dir, kerr, cerr)
	}
	kblk, _ := pem.Decode(kb)
	cblk, _ := pem.Decode(cb)
	if kblk == nil || cblk == nil {
		return nil, nil, fmt.Errorf("attestation CA in %s: not PEM", dir)
	}
	k, err := x509.ParsePKCS8PrivateKey(kblk.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("%s: not a signing key", keyPath)
	}
	cert, err := x509.ParseCertificate(cblk.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certPath, err)
	}
	return signer, cert, nil
}

// loadPool reads every certificate of a PEM file.
func loadPool(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	n := 0
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("%s: no PEM certificates", path)
	}
	return pool, nil
}

// starterPolicy is written into a new default policy directory: no rollouts yet
// ('edgeward rollout create' adds them), attestation required.
const starterPolicy = `# Edgeward fleet policy. Every *.yaml file of this directory is read in name order;
# 'edgeward rollout create' adds files named created-*.yaml. Format: policy/README.md.
version: 1
`

// ensurePolicyDir creates the default policy directory with a starter policy on first
// start, so that rollouts can be created through the operator API. A directory given
// with --policy is never created: a typo must not start an empty fleet policy.
func ensurePolicyDir(dir string, isDefault bool) error {
	if _, err := os.Stat(dir); err == nil || !isDefault || !errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return repository.OSFS{}.WriteFile(filepath.Join(dir, "fleet.yaml"), []byte(starterPolicy), 0o644)
}

// loadOrCreateServerCert reads the server's TLS certificate from dir, creating a
// self-signed one (ECDSA P-256, ten years) for names on first use. Devices pin it
// (edgeward-agent device --server-ca DIR/tls/server.pem).
func loadOrCreateServerCert(dir string, names []string) (tls.Certificate, error) {
	keyPath, certPath := filepath.Join(dir, "server.key"), filepath.Join(dir, "server.pem")
	if c, err := tls.LoadX509KeyPair(certPath, keyPath); err == nil {
		return c, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return tls.Certificate{}, fmt.Errorf("server TLS certificate: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: "edgeward server"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true}
	for _, n := range names {
		n = strings.TrimSpace(n)
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if n != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return tls.Certificate{}, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return tls.Certificate{}, err
	}
	fsys := repository.OSFS{}
	if err := fsys.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return tls.Certificate{}, err
	}
	if err := fsys.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return tls.Certificate{}, err
	}
	return tls.LoadX509KeyPair(certPath, keyPath)
}

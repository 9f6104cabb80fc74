package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"github.com/edgeward/edgeward/attest/stepca"
	"github.com/edgeward/edgeward/internal/clientip"
	"github.com/edgeward/edgeward/internal/logging"
	reposerver "github.com/edgeward/edgeward/repo-server"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repository"
)

// defaultServerGCPercent is the server's garbage collection target (--gc-percent).
// A check-in allocates tens of kilobytes (JSON, the quote, the store's rows) on a live
// heap of a few tens of megabytes, so at Go's default of 100 the collector ran every
// few hundred check-ins and took about 5 % of the server's CPU, under load on two
// cores CPU the check-ins needed; at 400 it runs a quarter as often, for a heap that
// peaks at about five times the live one instead of twice.
const defaultServerGCPercent = 400

func cmdServer(ctx context.Context, env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var rf repoFlags
	rf.register(fs, env)
	listen := fs.String("listen", "127.0.0.1:8440", "plain-HTTP address (TUF metadata and targets; the operator API and dashboard only without --tls-listen or with --plain-operators; devices only with --plain-devices); 'off' for none")
	plainOps := fs.Bool("plain-operators", false, "with --tls-listen, also serve the operator API and the dashboard on the plain --listen address (a TLS proxy in front, or loopback only)")
	plainDevices := fs.Bool("plain-devices", false, "serve the device API and enrollment on the plain --listen address (without TLS, devices need it; with --tls-listen they use mTLS)")
	var witnesses listFlag
	fs.Var(&witnesses, "witness", "base URL of an 'edgeward audit witness' that cosigns the audit log's checkpoints; repeat for each")
	cpInterval := fs.Duration("checkpoint-interval", 10*time.Second, "how often the audit log's checkpoint is signed and sent to the witnesses")
	refresh := fs.Duration("refresh-interval", 0, "how often to check online metadata expiry (default: min(1m, timestamp lifetime/10))")
	attestDir := fs.String("attest-dir", "", "attestation CA key and certificate (default DIR/attest; created on first start)")
	ekRoots := fs.String("ek-roots", "", "PEM file of TPM manufacturer root certificates EK certificates must chain to")
	ekInter := fs.String("ek-intermediates", "", "PEM file of manufacturer intermediate certificates")
	ekAllow := fs.String("ek-allowlist", "", "file of the TPMs that may enroll: EK IDs (urn:ek:sha256:…, the device IDs), one a line, and/or PEM EK certificates; read again when it changes (default: every TPM whose EK certificate chains to --ek-roots)")
	policyDir := fs.String("policy", "", "fleet policy directory, hot-reloaded; rollouts created through the operator API are written there (default DIR/policy, created with an empty policy on first start)")
	checkIn := fs.Duration("check-in-interval", 30*time.Second, "check-in interval suggested to devices")
	checkInBurst := fs.Int("check-in-burst", 20, "check-ins a device may make at once before --check-in-every applies; beyond it a check-in is refused with 429 and Retry-After (0 or -1: no bound)")
	checkInEvery := fs.Duration("check-in-every", 0, "after the burst, one check-in per device per this long (default: check-in interval / 5, at most 2s)")
	retain := fs.Duration("retain", 0, "keep the fleet's history this long (e.g. 2160h for 90 days): attestation verdicts, routing decisions and the install reports of finished rollouts older than that are deleted hourly by the leader; 0 keeps them forever. Each device's current state, the rollouts and the audit log are never pruned")
	pcr := fs.Int("measurement-pcr", 16, "the PCR devices measure artifacts into: 16 in development, 23 in production (must match the agents' --pcr)")
	newDB := fs.Bool("new-database", false, "start on a database other than the one this repository was served with (DIR/"+reposerver.DatabaseMarker+"), and serve it from then on with what it holds (an empty one: a new audit log, no devices, tokens or rollout states). Without it such a database (a mistyped --db, a deleted fleet.db) is refused")
	tlsListen := fs.String("tls-listen", "", "also serve HTTPS here and require devices to use mTLS with certificates from the device CA (embedded step-ca unless --ca-url)")
	tlsNames := fs.String("tls-names", "localhost,127.0.0.1", "names in the server's TLS certificate (comma-separated DNS names or IPs)")
	caURL := fs.String("ca-url", "", "external step-ca ACME directory for device certificates (with --ca-root); default: embed step-ca")
	caRoot := fs.String("ca-root", "", "PEM root of the external step-ca")
	secureCookie := fs.Bool("secure-cookie", false, "mark the dashboard's session cookie Secure even on plain HTTP (set it when a TLS proxy fronts the server)")
	if *checkInBurst == 0 {
		*checkInBurst = -1 // (reposerver.Config takes 0 as its default)
	}
	var proxies listFlag
	fs.Var(&proxies, "trusted-proxy", "a reverse proxy in front of the server (CIDR prefix or address, e.g. 10.0.0.5 or 10.0.0.0/24) whose X-Forwarded-For is honoured: requests from it count as coming from the rightmost address in that header that is not a trusted proxy (per-source limits then see the client); repeat for each; from any other peer the header is ignored")
	proxyProto := fs.Bool("proxy-protocol", false, "with --tls-listen and --trusted-proxy: read the PROXY protocol (v1 or v2) on the TLS listener from the trusted proxies, e.g. nginx passing TLS through with 'proxy_protocol on' in its stream block, so that per-source limits and the audit log see each device's address; a trusted proxy's connection without the header is closed, and no header is read from any other peer")
	logFormat := fs.String("log-format", logging.JSON, "log format: json (one object a line) or text; everything the server logs, the embedded step-ca's messages included, uses it")
	kekFile := fs.String("kek", env.getenv("EDGEWARD_KEK"), "key-encryption key file (edgeward keys kek; $EDGEWARD_KEK): publish encrypted targets and release their content keys to attested devices")
	gcPercent := fs.Int("gc-percent", defaultServerGCPercent, "garbage collection target, as GOGC: a collection runs when the heap has grown by this percent of what the last one left live (Go's default is 100); $GOGC, when set, wins")
	maxConns := fs.Int("max-conns", 0, "bound on the connections the listeners keep open at once, together (one over it is closed unserved); 0: half the file descriptors left after 512 for the server's own files; -1: no bound")
	maxPerSource := fs.Int("max-conns-per-source", 0, "bound on the connections one source (an IPv4 address, an IPv6 /64) keeps open at once; trusted proxies are bounded by --max-conns only; 0: 1024; -1: no bound")
	signing := fs.Bool("sign-delegated", false, "let the server sign published targets with the models/runtimes keys it finds (--key, DIR/keys/offline; passphrase from --passphrase-file or $EDGEWARD_PASSPHRASE); it never opens a root or targets key; without it POST /v1/publish answers 503")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if env.getenv("GOGC") == "" && *gcPercent != 0 {
		debug.SetGCPercent(*gcPercent)
	}
	logger, err := logging.New(env.stderr, *logFormat)
	if err != nil {
		return fmt.Errorf("--log-format: %w", err)
	}
	// The embedded step-ca writes through the standard library's log package: making
	// this logger the default sends those lines through it too, in the same format.
	slog.SetDefault(logger)
	if strings.TrimSpace(*listen) == "" {
		return errors.New("--listen: an empty address would bind every interface; give host:port, or 'off' for no plain-HTTP listener")
	}
	if *retain < 0 {
		return errors.New("--retain: a negative duration")
	}
	var trusted []netip.Prefix
	for _, p := range proxies {
		for _, one := range strings.Split(p, ",") {
			pf, err := clientip.ParsePrefix(one)
			if err != nil {
				return fmt.Errorf("--trusted-proxy: %w", err)
			}
			trusted = append(trusted, pf)
		}
	}
	cfg := reposerver.Config{
		PlainOperators: *plainOps, PlainDevices: *plainDevices,
		Dir: rf.dir, DB: rf.db, NewDatabase: *newDB, Listen: *listen, TLSListen: *tlsListen, TLSNames: strings.Split(*tlsNames, ","),
		CAURL: *caURL, CARoot: *caRoot, AttestDir: *attestDir, EKRoots: *ekRoots, EKIntermediates: *ekInter, EKAllowlist: *ekAllow,
		PolicyDir: *policyDir, CheckInInterval: *checkIn, CheckInBurst: *checkInBurst, CheckInEvery: *checkInEvery, Retention: *retain, MeasurementPCR: *pcr, RefreshInterval: *refresh,
		CheckpointInterval: *cpInterval, Witnesses: witnesses, SecureCookie: *secureCookie,
		TrustedProxies: trusted, ProxyProtocol: *proxyProto, Logger: logger, MaxConns: *maxConns, MaxConnsPerSource: *maxPerSource,
	}
	if *kekFile != "" {
		if cfg.KEK, err = readKEK(*kekFile); err != nil {
			return fmt.Errorf("--kek: %w", err)
		}
	}
	if *signing {
		cfg.Signing = rf.keyring()
		// Online: the delegated roles and the online ones, never root or targets,
		// whose keys may lie in DIR/keys/offline under the same passphrase.
		cfg.Signing.Roles = repository.DelegatedAndOnlineRoles()
		if _, err := cfg.Signing.Passphrase(); err != nil {
			return fmt.Errorf("--sign-delegated: %w", err)
		}
	}
	return reposerver.Run(ctx, cfg)
}

func cmdTokenCreate(ctx context.Context, env *cliEnv, args []string) error {
	fs, rf := newCommand("token create", env)
	name := fs.String("name", "", "operator name (attributes their actions in the audit log)")
	role := fs.String("role", "", "security-admin, release-manager or auditor")
	ttl := fs.Duration("ttl", 30*24*time.Hour, "token lifetime")
	certOut := fs.String("cert", "", "instead of printing the token, write an operator client certificate for it to PREFIX.pem and its key to PREFIX.key (signed by the server's embedded device CA, DIR/stepca; use them with $EDGEWARD_CLIENT_CERT and $EDGEWARD_CLIENT_KEY over the TLS listener); on the server's directory only")
	var c opClient
	c.register(fs, env)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	r, err := fleet.ParseRole(*role)
	if err != nil {
		return err
	}
	if *certOut != "" && c.server != "" {
		return errors.New("--cert is issued on the server's directory (--repo), not through --server: it needs the device CA's key")
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
	// The fleet store lives in the repository's directory: refuse a directory that is
	// not one (rather than sqlite's "unable to open database file", or a stray fleet.db).
	if _, err := rf.open(); err != nil {
		return fmt.Errorf("%w, or create the token through a running server with --server URL and a security admin's --token", err)
	}
	// Audited like the server's token.create, in the same transaction: no audit log,
	// no token.
	store, err := reposerver.OpenAuditedFleet(ctx, rf.dir, rf.db)
	if err != nil {
		return err
	}
	defer store.Close()
	var key *ecdsa.PrivateKey
	if *certOut != "" { // before the token exists: a missing device CA creates nothing
		if _, err := os.Stat(filepath.Join(rf.dir, "stepca", "intermediate_ca.crt")); err != nil {
			return fmt.Errorf("--cert: no device CA in %s (start 'edgeward server --tls-listen' once): %w", filepath.Join(rf.dir, "stepca"), err)
		}
		for _, f := range []string{*certOut + ".key", *certOut + ".pem"} {
			if _, err := os.Lstat(f); err == nil {
				return fmt.Errorf("--cert: %s exists; remove it or choose another prefix (a key is never written over another file)", f)
			}
		}
		if key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			return err
		}
	}
	now := time.Now()
	tok, info, err := store.CreateToken(ctx, *name, r, *ttl, now, fleet.AuditRecord{Actor: actor(env), Kind: "token.create",
		Data: map[string]any{"operator": *name, "role": r, "expires_at": now.Add(*ttl).UTC(), "local": true, "certificate": *certOut != ""}})
	if err != nil {
		return err
	}
	if *certOut != "" {
		chain, err := stepca.IssueClientCert(filepath.Join(rf.dir, "stepca"), key.Public(), *name, fleet.OperatorCertURI(info.ID), info.ExpiresAt)
		if err != nil {
			return err
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return err
		}
		// Created here, never opened over an existing file (os.WriteFile keeps an existing
		// file's mode, so a key could land in a world-readable file, and follows links).
		if err := writeNewFile(*certOut+".key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			return err
		}
		if err := writeNewFile(*certOut+".pem", chain, 0o644); err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "operator certificate for %s (%s, token %s), expires %s: %s.pem, key %s.key (revoke with 'edgeward token revoke %s')\n",
			*name, r, info.ID, info.ExpiresAt.Format(time.RFC3339), *certOut, *certOut, info.ID)
		return nil
	}
	fmt.Fprintf(env.stderr, "token %s for %s (%s), expires %s; it is shown once:\n", info.ID, *name, r, info.ExpiresAt.Format(time.RFC3339))
	fmt.Fprintln(env.stdout, tok)
	return nil
}

// writeNewFile creates path with perm and data, durably; it fails if anything (a file, a
// link) is already there.
func writeNewFile(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

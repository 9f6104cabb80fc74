package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/durable"
	"github.com/edgeward/edgeward/internal/units"
	reposerver "github.com/edgeward/edgeward/repo-server"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repo-server/operatorapi"
	"github.com/edgeward/edgeward/repository"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	"golang.org/x/term"
)

// repoFlags are the flags every repository command shares.
type repoFlags struct {
	dir      string
	db       string // the server's database (--db): "" is DIR/fleet.db
	passFile string
	keys     multi
	env      *cliEnv
}

// register adds every shared flag: --repo, --passphrase-file and --key (the server
// uses all three).
func (f *repoFlags) register(fs *flag.FlagSet, env *cliEnv) {
	f.registerRepo(fs, env)
	f.registerPassphrase(fs)
	f.registerKeys(fs)
}

func (f *repoFlags) registerRepo(fs *flag.FlagSet, env *cliEnv) {
	f.env = env
	def := env.getenv("EDGEWARD_REPO")
	if def == "" {
		def = "edgeward-repo"
	}
	fs.StringVar(&f.dir, "repo", def, "repository directory ($EDGEWARD_REPO)")
	f.db = env.getenv("EDGEWARD_DB")
	fs.Var(hiddenValue{p: &f.db, show: fleet.Redacted}, "db", "the server's database (fleet store and audit log): a PostgreSQL URL postgres://USER@HOST:PORT/DB?sslmode=… (password from $PGPASSWORD or ~/.pgpass), or a sqlite file; default DIR/fleet.db ($EDGEWARD_DB)")
}

func (f *repoFlags) registerPassphrase(fs *flag.FlagSet) {
	fs.StringVar(&f.passFile, "passphrase-file", "", "file holding the passphrase of offline keys (else $EDGEWARD_PASSPHRASE, else a prompt)")
}

func (f *repoFlags) registerKeys(fs *flag.FlagSet) {
	fs.Var(&f.keys, "key", "key file to sign with (repeatable); default: the repository's key directories")
}

// newCommand makes the flag set of a repository command with --repo; commands that
// decrypt or sign add registerPassphrase and registerKeys, so that no command lists a
// flag it ignores.
func newCommand(name string, env *cliEnv) (*flag.FlagSet, *repoFlags) {
	fs := newFlagSet(name, env)
	rf := &repoFlags{env: env}
	rf.registerRepo(fs, env)
	return fs, rf
}

// newFlagSet is a command's flag set: errors and -h output go to stderr.
func newFlagSet(name string, env *cliEnv) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	return fs
}

// hiddenValue is a string flag whose value a usage message never shows: its default
// comes from the environment and may be a credential ($EDGEWARD_TOKEN, a database URL
// with a password). show, if set, is what may be shown instead (a redacted URL); nil
// shows nothing. Before, a mistyped flag printed the operator's token in the usage
// text, into CI logs and tickets (found from outside, 2 Dec).
type hiddenValue struct {
	p    *string
	show func(string) string
}

func (h hiddenValue) String() string {
	if h.p == nil || h.show == nil {
		return ""
	}
	return h.show(*h.p)
}

func (h hiddenValue) Set(v string) error { *h.p = v; return nil }

// secretVar defines a string flag whose default, value, is never shown.
func secretVar(fs *flag.FlagSet, p *string, name, value, usage string) {
	*p = value
	fs.Var(hiddenValue{p: p}, name, usage)
}

// secretFlag is secretVar returning the pointer, as fs.String does.
func secretFlag(fs *flag.FlagSet, name, value, usage string) *string {
	p := new(string)
	secretVar(fs, p, name, value, usage)
	return p
}

func (f *repoFlags) open() (*repository.Repo, error) {
	r, err := repository.Open(repository.Config{Dir: f.dir, Actor: actor(f.env), Recorder: reposerver.AuditRecorder{Dir: f.dir, DB: f.db}})
	if err != nil || !fleet.IsPostgres(f.db) {
		return r, err
	}
	// Server replicas on this database may share the directory from other machines:
	// every change also holds the publish lease there, as theirs do.
	host, _ := os.Hostname()
	return r.WithLease(reposerver.DBPublishLease(f.db, fmt.Sprintf("%s@%s:%d", actor(f.env), host, os.Getpid()))), nil
}

func actor(env *cliEnv) string {
	if u := env.getenv("USER"); u != "" {
		return "cli:" + u
	}
	return "cli"
}

func (f *repoFlags) keyring() *repository.KeyRing {
	return &repository.KeyRing{Files: f.keys, Passphrase: f.passphrase}
}

// passphrase reads the offline-key passphrase from --passphrase-file,
// $EDGEWARD_PASSPHRASE or the terminal, in that order. It is never logged.
func (f *repoFlags) passphrase() ([]byte, error) {
	return readSecret(f.env, f.passFile, "EDGEWARD_PASSPHRASE", "Passphrase for offline keys: ", "--passphrase-file")
}

// readSecret reads a passphrase from file, else the environment variable envVar, else
// the terminal (after prompt). flagName names the file flag in the error.
func readSecret(env *cliEnv, file, envVar, prompt, flagName string) ([]byte, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("passphrase file: %w", err)
		}
		p := strings.TrimRight(string(b), "\r\n")
		if p == "" {
			return nil, fmt.Errorf("passphrase file %s is empty", file)
		}
		return []byte(p), nil
	}
	if p := env.getenv(envVar); p != "" {
		return []byte(p), nil
	}
	if in, ok := env.stdin.(*os.File); ok && term.IsTerminal(int(in.Fd())) {
		fmt.Fprint(env.stderr, prompt)
		p, err := term.ReadPassword(int(in.Fd()))
		fmt.Fprintln(env.stderr)
		if err != nil {
			return nil, err
		}
		if len(p) == 0 {
			return nil, errors.New("empty passphrase")
		}
		return p, nil
	}
	return nil, fmt.Errorf("no passphrase: give %s or set %s (no terminal to prompt on)", flagName, envVar)
}

// readPublicKey reads a public key: a .pub file written by 'edgeward keys gen' (a TUF
// key object), or the public half of an edgeward key file (nothing is decrypted).
func readPublicKey(path string) (*metadata.Key, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	if _, _, pub, err := repository.PeekKey(data); err == nil {
		return pub, nil
	}
	var k metadata.Key
	if err := json.Unmarshal(data, &k); err != nil || k.Type == "" || len(k.Value.PublicKey) == 0 {
		return nil, fmt.Errorf("%s is neither a public key (KEY.pub from 'edgeward keys gen') nor an edgeward key file", path)
	}
	if _, err := k.ID(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &k, nil
}

func cmdRepoInit(ctx context.Context, env *cliEnv, args []string) error {
	fs, rf := newCommand("repo init", env)
	rf.registerPassphrase(fs)
	var holderKeys multi
	fs.Var(&holderKeys, "root-key", "a root key holder's PUBLIC key (KEY.pub from 'edgeward keys gen', or their key file: only its public half is read); repeat once per holder. Root v1 is then staged for the holders to sign ('edgeward root sign') and publish ('edgeward root publish')")
	fs.Var(&holderKeys, "key", "same as --root-key")
	keyType := fs.String("key-type", "ed25519", "key algorithm: ed25519 or ecdsa-p256")
	rootKeys := fs.Int("root-keys", 3, "number of root keys to generate here when no --root-key is given (for tests and demos: they share one passphrase)")
	threshold := fs.Int("root-threshold", 2, "root signatures needed")
	offline := fs.String("offline-keys", "", "directory for the offline keys (default DIR/keys/offline)")
	auditKey := fs.String("audit-key", "", "file for the audit log's checkpoint key, outside DIR (default DIR.audit.key beside it), so a copy of the data directory never carries it; 'inside' keeps it in DIR/keys/online (throwaway setups only; 'edgeward audit move-key' moves it later)")
	var exp repository.Expiry
	fs.DurationVar(&exp.Timestamp, "timestamp-expiry", 0, "timestamp lifetime (default 24h)")
	fs.DurationVar(&exp.Snapshot, "snapshot-expiry", 0, "snapshot lifetime (default 168h)")
	fs.DurationVar(&exp.Delegated, "delegated-expiry", 0, "models/runtimes lifetime (default 2160h)")
	fs.DurationVar(&exp.Targets, "targets-expiry", 0, "targets lifetime (default 4320h)")
	fs.DurationVar(&exp.Root, "root-expiry", 0, "root lifetime (default 8760h)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 1 {
		rf.dir = pos[0]
	} else if len(pos) > 1 {
		return errors.New("usage: edgeward repo init DIR")
	}
	kt, err := repository.ParseKeyType(*keyType)
	if err != nil {
		return err
	}
	pass, err := rf.passphrase()
	if err != nil {
		return err
	}
	opt := repository.InitOptions{
		KeyType: kt, RootKeys: *rootKeys, RootThreshold: *threshold, Passphrase: pass, OfflineKeyDir: *offline, Expiry: exp,
	}
	if len(holderKeys) > 0 {
		explicit := false
		fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "root-keys" })
		if !explicit {
			opt.RootKeys = 0
		}
		for _, p := range holderKeys {
			k, err := readPublicKey(p)
			if err != nil {
				return fmt.Errorf("--root-key: %w", err)
			}
			opt.RootPublicKeys = append(opt.RootPublicKeys, k)
		}
	}
	auditTo := *auditKey
	if auditTo == "" {
		auditTo = filepath.Clean(rf.dir) + ".audit.key"
	}
	if auditTo != "inside" { // refuse before anything is created
		absDir, err1 := filepath.Abs(rf.dir)
		absTo, err2 := filepath.Abs(auditTo)
		if err := errors.Join(err1, err2); err != nil {
			return err
		}
		if rel, err := filepath.Rel(absDir, absTo); err == nil && !strings.HasPrefix(rel, "..") {
			return fmt.Errorf("--audit-key %s is inside the data directory %s: choose a file outside it", auditTo, rf.dir)
		}
		if _, err := os.Lstat(absTo); err == nil {
			return fmt.Errorf("--audit-key %s already exists: choose a new file", auditTo)
		}
	}
	res, err := repository.Init(ctx, repository.Config{Dir: rf.dir, Actor: actor(env), Recorder: reposerver.AuditRecorder{Dir: rf.dir, DB: rf.db}}, opt)
	if err != nil {
		return err
	}
	// The checkpoint key signs what auditors trust: it never stays in clear beside the
	// database it vouches for, unless the operator asks for that explicitly.
	auditKeyNote := "audit key kept inside " + rf.dir + " ('edgeward audit move-key --to FILE' moves it out)"
	if auditTo != "inside" {
		to := auditTo
		if err := repository.MoveAuditKey(rf.dir, to); err != nil {
			return fmt.Errorf("move the audit checkpoint key out of %s: %w (choose another place with --audit-key FILE)", rf.dir, err)
		}
		auditKeyNote = "audit     " + to + " (checkpoint key, outside the data directory: back it up apart from it)"
	}
	defer fmt.Fprintf(env.stdout, "  %s\n", auditKeyNote)
	if len(opt.RootPublicKeys) > 0 {
		fmt.Fprintf(env.stdout, "created repository %s (root: %d of %d holders' keys)\n", rf.dir, *threshold, len(opt.RootPublicKeys))
	} else {
		fmt.Fprintf(env.stdout, "created repository %s (root: %d of %d %s keys)\n", rf.dir, *threshold, *rootKeys, kt)
	}
	for _, role := range []string{"root", "targets", "models", "runtimes", "snapshot", "timestamp"} {
		for _, p := range res.KeyFiles[role] {
			fmt.Fprintf(env.stdout, "  %-9s %s\n", role, p)
		}
	}
	if res.RootProposal != "" {
		fmt.Fprintf(env.stdout, "root v1 staged at %s for its holders: %d of them sign it ('edgeward root sign --key THEIR.key'), then 'edgeward root publish'\n", res.RootProposal, *threshold)
		fmt.Fprintf(env.stdout, "once published, clients pin %s; keep the offline keys off the server\n", filepath.Join(res.Repo.MetadataDir(), "1.root.json"))
		return nil
	}
	fmt.Fprintf(env.stdout, "clients pin %s\n", filepath.Join(res.Repo.MetadataDir(), "1.root.json"))
	fmt.Fprintln(env.stdout, "these root keys share one passphrase: for a real ceremony let each holder run 'edgeward keys gen' and pass their public keys with --root-key; keep the offline keys off the server")
	return nil
}

func cmdRepoStatus(ctx context.Context, env *cliEnv, args []string) error {
	fs, rf := newCommand("repo status", env)
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	repo, err := rf.open()
	if err != nil {
		return err
	}
	st, err := repo.Load(ctx)
	if err != nil {
		return err
	}
	type roleInfo struct {
		Role      string    `json:"role"`
		Version   int64     `json:"version"`
		Expires   time.Time `json:"expires"`
		Threshold int       `json:"threshold"`
		Keys      []string  `json:"keys"`
	}
	var roles []roleInfo
	add := func(role string, v int64, exp time.Time) {
		ri := roleInfo{Role: role, Version: v, Expires: exp}
		if r, ok := st.Root.Signed.Roles[role]; ok {
			ri.Threshold, ri.Keys = r.Threshold, r.KeyIDs
		} else if d := st.Targets["targets"].Signed.Delegations; d != nil {
			for _, dr := range d.Roles {
				if dr.Name == role {
					ri.Threshold, ri.Keys = dr.Threshold, dr.KeyIDs
				}
			}
		}
		roles = append(roles, ri)
	}
	add(metadata.ROOT, st.Root.Signed.Version, st.Root.Signed.Expires)
	add(metadata.TARGETS, st.Targets["targets"].Signed.Version, st.Targets["targets"].Signed.Expires)
	for _, r := range []string{repository.RoleModels, repository.RoleRuntimes} {
		add(r, st.Targets[r].Signed.Version, st.Targets[r].Signed.Expires)
	}
	add(metadata.SNAPSHOT, st.Snapshot.Signed.Version, st.Snapshot.Signed.Expires)
	add(metadata.TIMESTAMP, st.Timestamp.Signed.Version, st.Timestamp.Signed.Expires)
	targets := st.List()
	if *asJSON {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"roles": roles, "targets": targets})
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ROLE\tVERSION\tEXPIRES\tTHRESHOLD\tKEYS\t")
	var expired []string
	for _, r := range roles {
		ids := make([]string, len(r.Keys))
		for i, k := range r.Keys {
			ids[i] = k[:8]
		}
		note := expiryNote(r.Expires, repo.Now(), repo.Expiry().RoleLife(r.Role))
		if note == "EXPIRED" {
			expired = append(expired, r.Role)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%s\t%s\n", r.Role, r.Version, r.Expires.Format(time.RFC3339), r.Threshold, strings.Join(ids, " "), note)
	}
	tw.Flush()
	if len(expired) > 0 {
		fmt.Fprintf(env.stdout, "expired: %s: devices refuse this repository's metadata until it is renewed ('edgeward repo renew --role ROLE' for targets, models, runtimes; the root by its ceremony; snapshot and timestamp by the server)\n", strings.Join(expired, ", "))
	}
	pendingRoot(ctx, env, repo)
	fmt.Fprintln(env.stdout)
	tw = tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TARGET\tROLE\tBYTES\tSHA256")
	var deltas []repository.TargetInfo
	for _, t := range targets {
		if t.Delta != nil {
			deltas = append(deltas, t)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", t.Path, t.Role, t.Length, t.SHA256[:16])
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(deltas) == 0 {
		return nil
	}
	fmt.Fprintln(env.stdout)
	tw = tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DELTA\tFROM\tTO\tMETHOD\tBYTES\tFULL\tSAVES")
	for _, t := range deltas {
		d := t.Delta
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%.1f %%\n", t.Path, d.Base.Path, d.Result.Path, d.Method, t.Length, d.Result.Length, 100*(1-float64(t.Length)/float64(max(1, d.Result.Length))))
	}
	return tw.Flush()
}

func cmdKeysGen(ctx context.Context, env *cliEnv, args []string) error {
	fs := newFlagSet("keys gen", env)
	rf := &repoFlags{env: env}
	rf.registerPassphrase(fs)
	role := fs.String("role", "root", "role the key is for")
	out := fs.String("out", ".", "directory to write the key file to")
	keyType := fs.String("key-type", "ed25519", "ed25519 or ecdsa-p256")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *role == metadata.SNAPSHOT || *role == metadata.TIMESTAMP {
		// An online key is kept in clear in DIR/keys/online, where the server signs with
		// it unattended. One made here is encrypted, away from the repository: added to
		// root (as this command used to advise), the root was published and the server
		// could then re-sign neither the snapshot nor the timestamp, and every device
		// stopped once the timestamp expired (found in review, 2 Dec).
		return fmt.Errorf("keys gen --role %s: the %s key is an online key, kept unencrypted in the repository's keys/online for the server, not by a holder: make and publish a new one with 'edgeward keys rotate --role %s' on the repository (see docs/REPOSITORY.md, \"When a key is stolen\"); nothing was written", *role, *role, *role)
	}
	kt, err := repository.ParseKeyType(*keyType)
	if err != nil {
		return err
	}
	pass, err := rf.passphrase()
	if err != nil {
		return err
	}
	k, err := repository.GenerateKey(*role, kt, nil)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o700); err != nil {
		return err
	}
	p, err := repository.WriteKeyFile(repository.OSFS{}, *out, k, pass, repository.KDFParams{})
	if err != nil {
		return err
	}
	pubData, err := json.MarshalIndent(k.Public, "", "  ")
	if err != nil {
		return err
	}
	pubPath := strings.TrimSuffix(p, ".key") + ".pub"
	if err := durable.WriteFile(pubPath, append(pubData, '\n'), 0o644); err != nil {
		return fmt.Errorf("write public key: %w", err)
	}
	fmt.Fprintf(env.stdout, "%s key %s written to %s (encrypted)\n", *role, k.ID(), p)
	// Where the public half goes: a root key into a new repository or a root change; a
	// targets key into a root change; a models or runtimes key into the targets
	// delegation. It named 'repo init --root-key' for every role (found from outside,
	// 2 Dec, rotating a targets key).
	switch *role {
	case metadata.ROOT:
		fmt.Fprintf(env.stdout, "public key: %s (give this file, never the .key, to whoever runs 'edgeward repo init --root-key', or 'edgeward root propose --add-key root=%s')\n", pubPath, pubPath)
	case repository.RoleModels, repository.RoleRuntimes:
		fmt.Fprintf(env.stdout, "public key: %s (give this file, never the .key, to whoever runs 'edgeward role keys --role %s --add-key %s')\n", pubPath, *role, pubPath)
	default:
		fmt.Fprintf(env.stdout, "public key: %s (give this file, never the .key, to whoever runs 'edgeward root propose --add-key %s=%s')\n", pubPath, *role, pubPath)
	}
	return nil
}

func cmdKeysPasswd(ctx context.Context, env *cliEnv, args []string) error {
	fs := newFlagSet("keys passwd", env)
	oldFile := fs.String("passphrase-file", "", "file holding the current passphrase (else $EDGEWARD_PASSPHRASE, else a prompt)")
	newFile := fs.String("new-passphrase-file", "", "file holding the new passphrase (else $EDGEWARD_NEW_PASSPHRASE, else a prompt, asked twice)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: edgeward keys passwd KEYFILE [--passphrase-file OLD] [--new-passphrase-file NEW]")
	}
	path := pos[0]
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read key: %w", err)
	}
	oldPass, err := readSecret(env, *oldFile, "EDGEWARD_PASSPHRASE", "Current passphrase: ", "--passphrase-file")
	if err != nil {
		return err
	}
	if _, err := repository.ParseKey(data, oldPass); err != nil {
		return fmt.Errorf("key %s: %w", path, err)
	}
	newPass, err := readSecret(env, *newFile, "EDGEWARD_NEW_PASSPHRASE", "New passphrase: ", "--new-passphrase-file")
	if err != nil {
		return err
	}
	if *newFile == "" && env.getenv("EDGEWARD_NEW_PASSPHRASE") == "" {
		again, err := readSecret(env, "", "EDGEWARD_NEW_PASSPHRASE", "New passphrase again: ", "--new-passphrase-file")
		if err != nil {
			return err
		}
		if string(again) != string(newPass) {
			return errors.New("the new passphrases differ: nothing changed")
		}
	}
	out, err := repository.ChangePassphrase(data, oldPass, newPass, repository.KDFParams{})
	if err != nil {
		return fmt.Errorf("key %s: %w", path, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if err := durable.WriteFile(path, out, fi.Mode().Perm()); err != nil {
		return fmt.Errorf("replace key %s (the old file is intact): %w", path, err)
	}
	_, id, _, _ := repository.PeekKey(out)
	fmt.Fprintf(env.stdout, "key %s (%s) re-encrypted under the new passphrase\n", path, id[:min(8, len(id))])
	return nil
}

func cmdKeysRotate(ctx context.Context, env *cliEnv, args []string) error {
	fs, rf := newCommand("keys rotate", env)
	rf.registerPassphrase(fs)
	rf.registerKeys(fs)
	role := fs.String("role", "", "timestamp, snapshot, models or runtimes")
	keyType := fs.String("key-type", "ed25519", "ed25519 or ecdsa-p256")
	keyDir := fs.String("key-dir", "", "where a new offline key is written (default DIR/keys/offline)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	kt, err := repository.ParseKeyType(*keyType)
	if err != nil {
		return err
	}
	repo, err := rf.open()
	if err != nil {
		return err
	}
	res, err := repo.RotateKey(ctx, *role, kt, *keyDir, rf.keyring())
	if err != nil {
		return err
	}
	if !res.Published {
		// Nothing is revoked yet: the old key stays in force until the staged root is.
		old := "key"
		if len(res.Revoked) > 1 {
			old = "keys"
		}
		fmt.Fprintf(env.stdout, "%s: new key %s (%s); the old %s %s will be revoked when root v%d is published\n", res.Role, res.NewKeyID[:8], res.NewKey, old, shortIDs(res.Revoked), res.RootVersion)
		fmt.Fprintf(env.stdout, "root proposal staged at %s: have root key holders run 'edgeward root sign', then 'edgeward root publish'\n", res.Proposal)
		return nil
	}
	fmt.Fprintf(env.stdout, "%s: new key %s (%s); revoked %s\n", res.Role, res.NewKeyID[:8], res.NewKey, shortIDs(res.Revoked))
	if stale := staleKeyFiles(ctx, repo); len(stale) > 0 {
		fmt.Fprintf(env.stdout, "key files of no role any more, still on this disk: %s; remove them (securely, if a key was compromised)\n", strings.Join(stale, " "))
	}
	return nil
}

// pendingRoot says, for repo status, that a root proposal is staged, how far it is from
// publication and what it changes: a rotation after a theft ('keys rotate --role
// timestamp' without root keys) leaves the stolen key in force until it is published,
// and status showed nothing of it.
func pendingRoot(ctx context.Context, env *cliEnv, repo *repository.Repo) {
	p, err := repo.RootProgress(ctx, "")
	if err != nil {
		return // none staged
	}
	fmt.Fprintf(env.stdout, "pending: %s; until 'edgeward root publish' makes it current, the keys above stay in force\n", p)
	lines, err := repo.DescribeProposal(ctx, "")
	if err != nil {
		return
	}
	for _, l := range lines {
		if strings.Contains(l, "ADDED") || strings.Contains(l, "REVOKED") || strings.Contains(l, "LOWERED") || strings.Contains(l, "REMOVED") {
			fmt.Fprintf(env.stdout, "  %s\n", l)
		}
	}
}

func cmdRepoRenew(ctx context.Context, env *cliEnv, args []string) error {
	fs, rf := newCommand("repo renew", env)
	rf.registerPassphrase(fs)
	rf.registerKeys(fs)
	var roles multi
	fs.Var(&roles, "role", "targets, models or runtimes: re-signed with a fresh expiry (repeatable)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	repo, err := rf.open()
	if err != nil {
		return err
	}
	renewed, staged, err := repo.RenewOrStage(ctx, roles, rf.stagingKeyring())
	if err != nil {
		return err
	}
	// The roles whose keys are here are renewed; each other one is staged on its own.
	for _, role := range roles {
		if exp, ok := renewed[role]; ok && (staged == nil || staged.Version(role) == 0) {
			fmt.Fprintf(env.stdout, "%s renewed: expires %s\n", role, exp.UTC().Format(time.RFC3339))
		}
	}
	if staged != nil {
		for _, r := range staged.Roles {
			printStaged(env, &repository.Staged{Roles: []repository.StagedRole{r}})
		}
	}
	return nil
}

// expiryNote says how long a role has left, for repo status: "EXPIRED" once it has
// expired (devices then refuse the repository's metadata), "RENEW" within a tenth of
// its lifetime.
func expiryNote(exp, now time.Time, life time.Duration) string {
	left := exp.Sub(now)
	switch {
	case left <= 0:
		return "EXPIRED"
	case life > 0 && left < life/10:
		return fmt.Sprintf("RENEW (%dh left)", int(left.Hours()))
	}
	return ""
}

func shortIDs(ids []string) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = id[:min(8, len(id))]
	}
	return strings.Join(s, " ")
}

func cmdRootPropose(ctx context.Context, env *cliEnv, args []string) error {
	fs, rf := newCommand("root propose", env)
	var add, revoke, thresholds multi
	fs.Var(&add, "add-key", "ROLE=FILE: add a public key (KEY.pub, or the public half of a key file) to ROLE (repeatable)")
	fs.Var(&revoke, "revoke-key", "ROLE=KEYID: remove a key from ROLE (repeatable; a unique prefix of the ID is enough)")
	fs.Var(&thresholds, "threshold", "ROLE=N (repeatable)")
	expires := fs.Duration("expires", 0, "lifetime of the new root (default: the repository's)")
	replace := fs.Bool("replace", false, "discard the proposal already staged for the next version, and its signatures (without it, a pending proposal is an error)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	repo, err := rf.open()
	if err != nil {
		return err
	}
	st, err := repo.Load(ctx)
	if err != nil {
		return err
	}
	ch := repository.RootChange{AddKeys: map[string][]*metadata.Key{}, RevokeKeys: map[string][]string{}, Thresholds: map[string]int{}, Expires: *expires, Replace: *replace}
	for _, a := range add {
		role, file, ok := strings.Cut(a, "=")
		if !ok {
			return fmt.Errorf("--add-key %q: want ROLE=KEYFILE", a)
		}
		pub, err := readPublicKey(file)
		if err != nil {
			return fmt.Errorf("--add-key: %w", err)
		}
		ch.AddKeys[role] = append(ch.AddKeys[role], pub)
	}
	for _, r := range revoke {
		role, prefix, ok := strings.Cut(r, "=")
		if !ok {
			return fmt.Errorf("--revoke-key %q: want ROLE=KEYID", r)
		}
		rr, ok := st.Root.Signed.Roles[role]
		if !ok {
			return fmt.Errorf("--revoke-key: no role %q in root", role)
		}
		var match []string
		for _, id := range rr.KeyIDs {
			if strings.HasPrefix(id, prefix) {
				match = append(match, id)
			}
		}
		if len(match) != 1 {
			return fmt.Errorf("--revoke-key %s: %d keys of %s match", r, len(match), role)
		}
		ch.RevokeKeys[role] = append(ch.RevokeKeys[role], match[0])
	}
	for _, t := range thresholds {
		role, n, ok := strings.Cut(t, "=")
		v, err := strconv.Atoi(n)
		if !ok || err != nil {
			return fmt.Errorf("--threshold %q: want ROLE=N", t)
		}
		ch.Thresholds[role] = v
	}
	p, err := repo.ProposeRoot(ctx, ch)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "root v%d proposed at %s\n", st.Root.Signed.Version+1, p)
	fmt.Fprintf(env.stdout, "it needs %d signatures from v%d's root keys and the threshold of its own\n",
		st.Root.Signed.Roles[metadata.ROOT].Threshold, st.Root.Signed.Version)
	return nil
}

func cmdRootSign(ctx context.Context, env *cliEnv, args []string) error {
	fs, rf := newCommand("root sign", env)
	rf.registerPassphrase(fs)
	rf.registerKeys(fs)
	proposal := fs.String("proposal", "", "proposal file to sign (default: the repository's staged proposal); lets a key holder sign a copy away from the repository")
	current := fs.String("current", "", "the root now in force (a copy of its file), to show what the proposal changes when signing away from the repository (and to let a root key it drops sign)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if len(rf.keys) != 1 {
		return errors.New("root sign needs exactly one --key")
	}
	// What is signed, first: a key holder was told only how many signatures the
	// proposal had (found from outside, 2 Dec).
	desc, expired, err := describeProposal(ctx, rf, *proposal, *current)
	if err != nil {
		return err
	}
	fmt.Fprintln(env.stdout, "signing:")
	for _, l := range desc {
		fmt.Fprintln(env.stdout, "  "+l)
	}
	if expired {
		return errors.New("the proposal has expired: propose it again ('edgeward root propose --replace')")
	}
	kr := rf.keyring()
	key, err := kr.Load(rf.keys[0])
	if err != nil {
		return err
	}
	var ids []string
	var progress repository.RootProgress
	path := *proposal
	if path != "" {
		// The root now in force, where it is at hand (--current, or the repository):
		// a key it lists that the proposal drops may sign; without it only the
		// proposal's own root keys may.
		repo, oerr := rf.open()
		var cur *metadata.RootType
		if cur, err = currentRootAt(ctx, repo, oerr, *current); err != nil {
			return err
		}
		if ids, err = repository.SignRootFile(nil, path, key, cur); err != nil {
			return err
		}
		// Away from the repository the current root may be unknown; the count then
		// covers the proposal's own keys and says the current root's are still checked.
		if oerr == nil {
			progress, err = repo.RootProgress(ctx, path)
		} else {
			progress, err = repository.ProposalProgress(nil, path)
		}
	} else {
		repo, oerr := rf.open()
		if oerr != nil {
			return oerr
		}
		if path, ids, err = repo.SignRoot(ctx, key); err != nil {
			return err
		}
		progress, err = repo.RootProgress(ctx, path)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "signed %s with %s; signatures now: %s\n", path, key.ID()[:8], shortIDs(ids))
	fmt.Fprintln(env.stdout, progress)
	if byNew, byCur := progress.Missing(); byNew == 0 && byCur == 0 && progress.Current >= 0 {
		fmt.Fprintln(env.stdout, "ready: 'edgeward root publish' makes it current")
	}
	return nil
}

// describeProposal is repository.DescribeRoot of the proposal in path ("": the staged
// one) against the root in current, else the repository's current root when the
// repository opens here; it also says whether the proposal has expired.
// currentRootAt is the root in force, for signing a proposal away from the repository:
// the file current (a copy of it) when given, else the repository's (repo, when it
// opened: openErr nil) or nil when neither is at hand or no root is published yet.
func currentRootAt(ctx context.Context, repo *repository.Repo, openErr error, current string) (*metadata.RootType, error) {
	if current != "" {
		c, err := repository.ReadProposal(current)
		if err != nil {
			return nil, fmt.Errorf("--current: %w", err)
		}
		return &c.Signed, nil
	}
	if openErr != nil {
		return nil, nil
	}
	st, err := repo.Load(ctx)
	if errors.Is(err, repository.ErrRootPending) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &st.Root.Signed, nil
}

func describeProposal(ctx context.Context, rf *repoFlags, path, current string) ([]string, bool, error) {
	now := time.Now()
	if current != "" || path != "" {
		if path == "" {
			return nil, false, errors.New("--current needs --proposal")
		}
		prop, err := repository.ReadProposal(path)
		if err != nil {
			return nil, false, err
		}
		var cur *metadata.RootType
		if current != "" {
			c, err := repository.ReadProposal(current)
			if err != nil {
				return nil, false, fmt.Errorf("--current: %w", err)
			}
			cur = &c.Signed
		} else if repo, err := rf.open(); err == nil {
			desc, err := repo.DescribeProposal(ctx, path)
			return desc, !prop.Signed.Expires.After(now), err
		}
		return repository.DescribeRoot(cur, &prop.Signed, now), !prop.Signed.Expires.After(now), nil
	}
	repo, err := rf.open()
	if err != nil {
		return nil, false, err
	}
	desc, err := repo.DescribeProposal(ctx, "")
	if err != nil {
		return nil, false, err
	}
	return desc, slices.ContainsFunc(desc, func(l string) bool { return strings.Contains(l, "ALREADY EXPIRED") }), nil
}

func cmdRootShow(ctx context.Context, env *cliEnv, args []string) error {
	fs, rf := newCommand("root show", env)
	proposal := fs.String("proposal", "", "proposal file (default: the repository's staged proposal)")
	current := fs.String("current", "", "the root now in force (a copy of its file), when away from the repository")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	desc, _, err := describeProposal(ctx, rf, *proposal, *current)
	if err != nil {
		return err
	}
	for _, l := range desc {
		fmt.Fprintln(env.stdout, l)
	}
	return nil
}

func cmdRootPublish(ctx context.Context, env *cliEnv, args []string) error {
	fs, rf := newCommand("root publish", env)
	rf.registerPassphrase(fs)
	rf.registerKeys(fs)
	proposal := fs.String("proposal", "", "signed proposal file (default: the staged one)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	repo, err := rf.open()
	if err != nil {
		return err
	}
	v, err := repo.PublishRoot(ctx, *proposal, rf.keyring())
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "root v%d published\n", v)
	if stale := staleKeyFiles(ctx, repo); len(stale) > 0 {
		// A revoked key stays a secret: the files are not removed here (the holders may
		// want them for an investigation), but nothing said they were still there.
		fmt.Fprintf(env.stdout, "key files of no role any more (revoked or rotated away), still on this disk: %s; remove them (securely, if a key was compromised)\n", strings.Join(stale, " "))
	}
	return nil
}

// staleKeyFiles lists the key files of the repository's key directories (ROLE-ID8.key)
// whose key is no longer one of its role's in the current root or delegations.
func staleKeyFiles(ctx context.Context, repo *repository.Repo) []string {
	st, err := repo.Load(ctx)
	if err != nil {
		return nil
	}
	current := map[string][]string{}
	for role, r := range st.Root.Signed.Roles {
		current[role] = r.KeyIDs
	}
	if d := st.Targets[metadata.TARGETS].Signed.Delegations; d != nil {
		for _, r := range d.Roles {
			current[r.Name] = r.KeyIDs
		}
	}
	var out []string
	for _, dir := range []string{repo.OnlineKeyDir(), repo.OfflineKeyDir()} {
		files, _ := filepath.Glob(filepath.Join(dir, "*-*.key"))
		for _, f := range files {
			role, id8, ok := strings.Cut(strings.TrimSuffix(filepath.Base(f), ".key"), "-")
			ids, known := current[role]
			if !ok || !known || len(id8) != 8 {
				continue // not a role key file (the audit key, others)
			}
			if !slices.ContainsFunc(ids, func(id string) bool { return strings.HasPrefix(id, id8) }) {
				out = append(out, f)
			}
		}
	}
	return out
}

func cmdPublish(ctx context.Context, env *cliEnv, args []string) error {
	fs, rf := newCommand("publish", env)
	rf.registerPassphrase(fs)
	rf.registerKeys(fs)
	kind := fs.String("kind", "", "model, probe, runtime or agent (the edgeward-agent and edgeward-runtime binaries)")
	name := fs.String("name", "", "artifact name")
	version := fs.String("version", "", "semantic version MAJOR.MINOR.PATCH")
	custom := fs.String("custom", "", "extra custom metadata, a JSON object (known fields override the flags)")
	gates := fs.String("gates", "", "commit gates, e.g. min_accuracy=0.95,max_p99_ms=5,max_rss_mb=256")
	probe := fs.String("probe", "", "target path of the probe set (default: probes/NAME/VERSION.json if published)")
	hardware := fs.String("hardware", "", "comma-separated hardware classes, e.g. x86_64,aarch64")
	minRuntime := fs.String("min-runtime", "", "lowest runtime version the model needs")
	format := fs.String("format", "", "artifact format (default: from the file extension)")
	deltas := fs.Int("deltas", repository.DefaultDeltas, "also publish a delta from each of the N newest earlier versions (models and runtimes; 0: none; a delta not under 70 % of the full target is not published)")
	server := fs.String("server", env.getenv("EDGEWARD_SERVER"), "publish through this server's operator API instead of the repository directory ($EDGEWARD_SERVER)")
	token := secretFlag(fs, "token", env.getenv("EDGEWARD_TOKEN"), "operator API token ($EDGEWARD_TOKEN)")
	encrypt := fs.Bool("encrypt", false, "publish the content encrypted under a fresh content key, sealed under the key-encryption key (--kek; through --server, the server's)")
	kekFile := fs.String("kek", env.getenv("EDGEWARD_KEK"), "key-encryption key file (edgeward keys kek; $EDGEWARD_KEK), for --encrypt on the repository directory")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: edgeward publish --kind K --name N --version V FILE")
	}
	var kek []byte
	if *encrypt && *server == "" {
		if *kekFile == "" {
			return errors.New("--encrypt needs --kek FILE (or $EDGEWARD_KEK) when publishing to the repository directory")
		}
		if kek, err = readKEK(*kekFile); err != nil {
			return err
		}
	}
	k, err := artifact.ParseKind(*kind)
	if err != nil {
		return err
	}
	meta := artifact.Meta{}
	if *custom != "" {
		if err := json.Unmarshal([]byte(*custom), &meta); err != nil {
			return fmt.Errorf("--custom: %w", err)
		}
	}
	meta.Kind, meta.Name, meta.Version = k, *name, *version
	if *gates != "" {
		if meta.Gates, err = artifact.ParseGates(*gates); err != nil {
			return fmt.Errorf("--gates: %w", err)
		}
	}
	if *probe != "" {
		meta.Probe = *probe
	}
	if *hardware != "" {
		meta.Hardware = strings.Split(*hardware, ",")
	}
	if *minRuntime != "" {
		meta.MinRuntime = *minRuntime
	}
	ext := fileExt(pos[0])
	if *format != "" {
		meta.Format = *format
	} else if meta.Format == "" {
		meta.Format = strings.TrimPrefix(ext, ".")
	}
	if err := meta.Validate(); err != nil {
		return err
	}
	f, err := os.Open(pos[0])
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", pos[0])
	}
	var content io.Reader = f
	if out, ok := env.stderr.(*os.File); ok && term.IsTerminal(int(out.Fd())) {
		p := newProgress(out, fi.Size())
		defer p.done()
		content = p.reader(f)
	}
	var res *repository.PublishResult
	if *server != "" {
		res, err = publishRemote(ctx, env, *server, *token, meta, ext, content, fi.Size(), *deltas, *encrypt)
	} else {
		repo, oerr := rf.open()
		if oerr != nil {
			return oerr
		}
		n := *deltas
		if n <= 0 || kek != nil {
			n = -1 // none; nor of an encrypted target: its ciphertexts share nothing
		}
		res, err = repo.Publish(ctx, repository.PublishRequest{Meta: meta, Ext: ext, Content: content, Deltas: n, KEK: kek}, rf.stagingKeyring())
	}
	if err != nil {
		return err
	}
	if res.Unchanged {
		fmt.Fprintf(env.stdout, "%s already published with the same content and metadata (sha256 %s)\n", res.Path, res.SHA256)
		return nil
	}
	if res.Staged != nil {
		where := "the keys here"
		if *server != "" {
			where = "the server's keys"
		}
		fmt.Fprintf(env.stdout, "%s (%d bytes, sha256 %s) is in %s v%d, which needs more signatures than %s made\n", res.Path, res.Length, res.SHA256, res.Role, res.Version, where)
		printStaged(env, res.Staged)
		return nil
	}
	fmt.Fprintf(env.stdout, "published %s (%d bytes, sha256 %s) signed by %s v%d\n", res.Path, res.Length, res.SHA256, res.Role, res.Version)
	for _, d := range res.Deltas {
		if d.Skipped != "" {
			fmt.Fprintf(env.stdout, "  no delta from %s: %s\n", d.Base, d.Skipped)
			continue
		}
		fmt.Fprintf(env.stdout, "  delta from %s: %s (%d bytes, %.1f %% of the full target)\n", d.Base, d.Path, d.Length, 100*float64(d.Length)/float64(max(1, res.Length)))
	}
	if *encrypt {
		fmt.Fprintf(env.stdout, "encrypted: the signed hash is the ciphertext's; its content key is sealed under the key-encryption key\n")
	}
	return nil
}

// fileExt keeps double extensions such as .tar.gz.
func fileExt(name string) string {
	base := filepath.Base(name)
	if strings.HasSuffix(base, ".tar.gz") {
		return ".tar.gz"
	}
	return filepath.Ext(base)
}

// expectContinueOver is the body size above which publishRemote asks the server
// (Expect: 100-continue) before sending: below it the round trip costs more than
// the bytes a refusal would waste.
const expectContinueOver = 1 << 20

// publishRemote streams a target to a server's operator API.
func publishRemote(ctx context.Context, env *cliEnv, server, token string, meta artifact.Meta, ext string, body io.Reader, size int64, deltas int, encrypt bool) (*repository.PublishResult, error) {
	if token == "" && env.getenv("EDGEWARD_CLIENT_CERT") == "" {
		return nil, errors.New("--server needs --token (or $EDGEWARD_TOKEN), or an operator certificate ($EDGEWARD_CLIENT_CERT, $EDGEWARD_CLIENT_KEY)")
	}
	if err := operatorapi.CheckTransport(server); err != nil && token != "" {
		return nil, err
	}
	// stage=1: a role needing more signatures than the server's keys make is staged for
	// its key holders, as a publish on the repository directory is.
	q := url.Values{"kind": {string(meta.Kind)}, "name": {meta.Name}, "version": {meta.Version}, "ext": {ext}, "deltas": {strconv.Itoa(deltas)}, "stage": {"1"}}
	if encrypt {
		q.Set("encrypt", "1")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(server, "/")+"/v1/publish?"+q.Encode(), body)
	if err != nil {
		return nil, err
	}
	req.ContentLength = size
	mj, err := json.Marshal(meta)
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-Edgeward-Meta", string(mj))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	if size > expectContinueOver {
		// The server refuses what it would refuse whatever the bytes (a gated model
		// without its probe set, a bad token, a version already published) before it
		// reads the body: asking first sends none of a refused upload.
		req.Header.Set("Expect", "100-continue")
	}
	hc, err := operatorHTTP(env)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("publish to %s: %w", server, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusAccepted {
		var e struct{ Error string }
		json.Unmarshal(data, &e)
		return nil, fmt.Errorf("publish to %s: %s: %s", server, resp.Status, e.Error)
	}
	var res repository.PublishResult
	if err := json.Unmarshal(data, &res); err != nil {
		return nil, fmt.Errorf("publish to %s: bad answer: %w", server, err)
	}
	return &res, nil
}

func cmdRetire(ctx context.Context, env *cliEnv, args []string) error {
	fs, rf := newCommand("retire", env)
	rf.registerPassphrase(fs)
	rf.registerKeys(fs)
	kind := fs.String("kind", "", "model, probe, runtime or agent")
	name := fs.String("name", "", "artifact name")
	versions := fs.String("version", "", "comma-separated versions to retire")
	keep := fs.Int("keep", 0, "retire every version but the KEEP highest")
	grace := fs.Duration("grace", repository.DefaultRetireGrace, "keep the retired contents in the blob store this long (then 'edgeward retire --sweep' removes them)")
	sweep := fs.Bool("sweep", false, "remove the contents of retired targets whose grace period ended, and nothing else")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return errors.New("usage: edgeward retire --kind K --name N (--version V[,V…] | --keep N) [--grace D], or edgeward retire --sweep")
	}
	repo, err := rf.open()
	if err != nil {
		return err
	}
	if *sweep {
		n, size, err := repo.SweepRetired(ctx, time.Now())
		if err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "removed %d retired contents (%s)\n", n, units.Bytes(size))
		return nil
	}
	k, err := artifact.ParseKind(*kind)
	if err != nil {
		return err
	}
	req := repository.RetireRequest{Kind: k, Name: *name, Keep: *keep, Grace: *grace}
	if *versions != "" {
		req.Versions = strings.Split(*versions, ",")
	}
	res, err := repo.Retire(ctx, req, rf.stagingKeyring())
	if errors.Is(err, repository.ErrNothingToRetire) {
		fmt.Fprintln(env.stdout, err) // --keep N with no more than N listed: nothing changed, as asked
		return nil
	}
	if err != nil {
		return err
	}
	if res.Staged != nil {
		for _, rt := range res.Retired {
			fmt.Fprintf(env.stdout, "retiring %s (sha256 %s): staged, still listed until published\n", rt.Path, rt.SHA256)
		}
		printStaged(env, res.Staged)
		return nil
	}
	for _, rt := range res.Retired {
		fmt.Fprintf(env.stdout, "retired %s (sha256 %s; content kept until %s)\n", rt.Path, rt.SHA256, rt.KeepUntil.Format(time.RFC3339))
	}
	fmt.Fprintf(env.stdout, "%s v%d signed\n", k.Role(), res.Version)
	return nil
}

package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/edgeward/edgeward/internal/durable"
	reposerver "github.com/edgeward/edgeward/repo-server"
	"github.com/edgeward/edgeward/repo-server/audit"
	"github.com/edgeward/edgeward/repository"
	"golang.org/x/mod/sumdb/note"
)

func cmdAuditExport(ctx context.Context, env *cliEnv, args []string) error {
	fs, rf := newCommand("audit export", env)
	out := fs.String("o", "-", "output file (JSON Lines); - for stdout")
	server := fs.String("server", env.getenv("EDGEWARD_SERVER"), "export through this server's operator API instead of the repository directory ($EDGEWARD_SERVER)")
	token := secretFlag(fs, "token", env.getenv("EDGEWARD_TOKEN"), "operator API token of an auditor or security admin ($EDGEWARD_TOKEN)")
	cosigned := fs.Bool("cosigned", false, "stop at the newest checkpoint a witness has cosigned (for a verify that requires a witness quorum: a checkpoint signed for the export has had no time to be cosigned)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	export := func(w io.Writer) error { return auditExportRemote(ctx, env, *server, *token, *cosigned, w) }
	if *server == "" {
		repo, err := rf.open()
		if err != nil {
			return err
		}
		l, db, err := reposerver.OpenAuditAt(ctx, repo, rf.db)
		if err != nil {
			return err
		}
		defer db.Close()
		export = func(w io.Writer) error { return l.Export(ctx, w) }
		if *cosigned {
			export = func(w io.Writer) error { return l.ExportCosigned(ctx, w) }
		}
	}
	var w io.Writer = env.stdout
	if *out != "-" {
		f, err := os.Create(*out)
		if err != nil {
			return err
		}
		defer f.Close()
		w = f
	}
	if err := export(w); err != nil {
		return fmt.Errorf("audit export: %w", err)
	}
	if f, ok := w.(*os.File); ok && f != os.Stdout {
		if err := f.Sync(); err != nil {
			return err
		}
		fmt.Fprintf(env.stderr, "audit log exported to %s (verify with: edgeward audit verify %s --key <log key> --state <your last-seen checkpoint>)\n", *out, *out)
	}
	return nil
}

// cmdAuditPubkey prints the log's note verifier key ("origin+hash+base64"), the line an
// auditor, a witness and a device are given to trust.
func cmdAuditPubkey(ctx context.Context, env *cliEnv, args []string) error {
	fs, rf := newCommand("audit pubkey", env)
	pemOut := fs.Bool("pem", false, "print the Ed25519 public key as PEM instead of the note verifier key")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	repo, err := rf.open()
	if err != nil {
		return err
	}
	key, err := repo.AuditKey()
	if err != nil {
		return err
	}
	if *pemOut {
		der, err := x509.MarshalPKIXPublicKey(key.Public())
		if err != nil {
			return err
		}
		return pem.Encode(env.stdout, &pem.Block{Type: "PUBLIC KEY", Bytes: der})
	}
	vkey, err := audit.VerifierKey(reposerver.AuditOrigin(repo), key.Public().(ed25519.PublicKey))
	if err != nil {
		return err
	}
	fmt.Fprintln(env.stdout, vkey)
	return nil
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// auditTrust is what an auditor trusts: the log key, witnesses and a quorum, and the
// last-seen checkpoint kept in a state file.
type auditTrust struct {
	key, origin, state string
	witnesses          listFlag
	quorum             int
	maxAge             time.Duration
}

func (a *auditTrust) register(fs *flag.FlagSet) {
	fs.StringVar(&a.key, "key", "", "the log's verifier key (from 'edgeward audit pubkey'), inline or a file; a PEM public key also works with --origin")
	fs.StringVar(&a.origin, "origin", audit.DefaultOrigin, "the log's origin, for a PEM --key")
	fs.Var(&a.witnesses, "witness", "a trusted witness's verifier key (inline or a file); repeat for each")
	fs.IntVar(&a.quorum, "quorum", 0, "how many of the --witness keys must have cosigned the newest checkpoint (default: all of them)")
	fs.StringVar(&a.state, "state", "", "file keeping the last checkpoint this auditor verified: read, checked for consistency, and advanced on success (created if missing)")
	fs.DurationVar(&a.maxAge, "max-age", 0, "with --witness: refuse a checkpoint that a quorum of the witnesses cosigned longer ago than this (e.g. 24h): a server rolled back to an earlier prefix of its log, or frozen, shows old cosignatures; 0: no bound")
}

func (a *auditTrust) options() (audit.VerifyOptions, error) {
	var o audit.VerifyOptions
	if a.key == "" {
		return o, errors.New("--key is needed (the log's verifier key from 'edgeward audit pubkey')")
	}
	var err error
	if o.LogKey, err = readVerifier(a.key, a.origin); err != nil {
		return o, fmt.Errorf("--key: %w", err)
	}
	for _, w := range a.witnesses {
		v, err := readVerifier(w, "")
		if err != nil {
			return o, fmt.Errorf("--witness: %w", err)
		}
		o.Witnesses = append(o.Witnesses, v)
	}
	o.Quorum = a.quorum
	if o.Quorum == 0 {
		o.Quorum = len(o.Witnesses)
	}
	if o.Quorum > len(o.Witnesses) {
		return o, fmt.Errorf("--quorum %d with %d --witness keys", o.Quorum, len(o.Witnesses))
	}
	if a.maxAge < 0 {
		return o, fmt.Errorf("--max-age %s: want a positive duration", a.maxAge)
	}
	if a.maxAge > 0 && len(o.Witnesses) == 0 {
		return o, errors.New("--max-age needs --witness keys: only the witnesses' cosignatures carry a time")
	}
	o.MaxAge = a.maxAge
	if a.state != "" {
		data, err := os.ReadFile(a.state)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return o, err
		}
		if err == nil && len(bytes.TrimSpace(data)) == 0 {
			// An empty file is not a first use (no file is): a truncated or tampered
			// state would otherwise turn the rollback and fork checks off silently,
			// and the file be overwritten with whatever verifies next.
			return o, fmt.Errorf("--state %s is empty: it holds no last-seen checkpoint, so rollbacks and forks cannot be checked. Restore it from a backup; only if this is the first verification, remove it", a.state)
		}
		if len(data) > 0 {
			o.LastSeen = data
		}
	}
	return o, nil
}

// advance stores c as the last-seen checkpoint if it is newer than the stored one.
func (a *auditTrust) advance(o audit.VerifyOptions, c *audit.Checkpoint) (bool, error) {
	if a.state == "" {
		return false, nil
	}
	if o.LastSeen != nil {
		if last, err := audit.ParseCheckpointUnverified(o.LastSeen); err == nil && last.Size >= c.Size {
			return false, nil
		}
	}
	// Durably (a temporary file of its own, synced, renamed, directory synced): a crash
	// must not leave an empty state, which would read as no last-seen checkpoint and
	// switch off the rollback and fork checks without a word.
	if err := durable.WriteFile(a.state, c.Note, 0o644); err != nil {
		return false, fmt.Errorf("audit state: %w", err)
	}
	return true, nil
}

// readVerifier reads a note verifier key given inline or in a file, or a PEM Ed25519 public
// key (then named origin).
func readVerifier(s, origin string) (note.Verifier, error) {
	text := s
	if data, err := os.ReadFile(s); err == nil {
		text = string(data)
	} else if !strings.Contains(s, "+") {
		return nil, err
	}
	if b, _ := pem.Decode([]byte(text)); b != nil {
		if origin == "" {
			return nil, fmt.Errorf("%s: a PEM key needs a name", s)
		}
		k, err := x509.ParsePKIXPublicKey(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s, err)
		}
		pk, ok := k.(ed25519.PublicKey)
		if !ok {
			return nil, fmt.Errorf("%s: not an ed25519 key", s)
		}
		vkey, err := audit.VerifierKey(origin, pk)
		if err != nil {
			return nil, err
		}
		return note.NewVerifier(vkey)
	}
	if _, _, pub, err := repository.PeekKey([]byte(text)); err == nil && origin != "" {
		k, err := pub.ToPublicKey()
		if err != nil {
			return nil, err
		}
		if pk, ok := k.(ed25519.PublicKey); ok {
			vkey, err := audit.VerifierKey(origin, pk)
			if err != nil {
				return nil, err
			}
			return note.NewVerifier(vkey)
		}
	}
	return audit.ParseVerifier(strings.TrimSpace(text))
}

func cmdAuditVerify(ctx context.Context, env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("audit verify", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var trust auditTrust
	trust.register(fs)
	proofFile := fs.String("proof", "", "verify one record's proof (from 'edgeward audit prove') instead of a whole export")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if (len(pos) != 1) == (*proofFile == "") {
		return errors.New("usage: edgeward audit verify FILE --key KEY [--witness KEY… --quorum N] [--state FILE] (FILE - for standard input), or --proof FILE --key KEY …")
	}
	o, err := trust.options()
	if err != nil {
		return err
	}
	if *proofFile != "" {
		data, err := os.ReadFile(*proofFile)
		if err != nil {
			return err
		}
		var p audit.Proof
		if err := json.Unmarshal(data, &p); err != nil {
			return fmt.Errorf("%s: %w", *proofFile, err)
		}
		c, err := audit.VerifyProof(&p, o)
		if err != nil {
			return fmt.Errorf("proof %s does NOT verify: %w", *proofFile, err)
		}
		adv, err := trust.advance(o, c)
		if err != nil {
			return err
		}
		at, _ := audit.CosignedAt(c.Note, o.Witnesses, o.Quorum)
		fmt.Fprintf(env.stdout, "ok: record %d (%s %s by %s) is in the tree of %d records signed by %s%s%s\n",
			p.Record.Seq, p.Record.Kind, p.Record.Subject, p.Record.Actor, c.Size, o.LogKey.Name(), quorumText(o, at), stateText(trust.state, adv, c))
		return nil
	}
	var in io.Reader = env.stdin // "-": edgeward audit export … | edgeward audit verify - …
	if pos[0] != "-" {
		f, err := os.Open(pos[0])
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	rep, err := audit.Verify(in, o)
	if err != nil {
		return fmt.Errorf("audit log %s does NOT verify: %w", pos[0], err)
	}
	adv, err := trust.advance(o, rep.Checkpoint)
	if err != nil {
		return err
	}
	ext := ""
	if rep.LastSeen > 0 {
		ext = fmt.Sprintf(", extends the last-seen checkpoint of %d records", rep.LastSeen)
	}
	fmt.Fprintf(env.stdout, "ok: %d records, all in the tree signed by %s (checkpoint %d)%s%s, all records covered%s\n",
		rep.Records, o.LogKey.Name(), rep.Checkpoint.Size, quorumText(o, rep.CosignedAt), ext, stateText(trust.state, adv, rep.Checkpoint))
	return nil
}

// quorumText says how many witnesses cosigned and, at is when a quorum of them had
// (zero: unknown), how long ago: an old cosignature is how a rolled-back or frozen log
// shows to an auditor without a last-seen checkpoint (see --max-age).
func quorumText(o audit.VerifyOptions, at time.Time) string {
	if len(o.Witnesses) == 0 {
		return ""
	}
	s := fmt.Sprintf(", cosigned by at least %d of %d witnesses", o.Quorum, len(o.Witnesses))
	if !at.IsZero() {
		s += fmt.Sprintf(" (the quorum by %s, %s ago)", at.UTC().Format(time.RFC3339), time.Since(at).Round(time.Second))
	}
	return s
}

func stateText(state string, advanced bool, c *audit.Checkpoint) string {
	if state == "" {
		return " (no --state: rollbacks and forks are not checked)"
	}
	if advanced {
		return fmt.Sprintf("; %s now holds checkpoint %d", filepath.Base(state), c.Size)
	}
	return ""
}

// cmdAuditProve prints one record with its inclusion proof against the newest checkpoint
// (and a consistency proof from the auditor's last-seen checkpoint), as JSON for
// 'edgeward audit verify --proof'.
func cmdAuditProve(ctx context.Context, env *cliEnv, args []string) error {
	fs, rf := newCommand("audit prove", env)
	since := fs.Int64("since", 0, "also prove consistency from this tree size (the auditor's last-seen checkpoint)")
	state := fs.String("state", "", "take --since from this last-seen checkpoint file")
	out := fs.String("o", "-", "output file; - for stdout")
	server := fs.String("server", env.getenv("EDGEWARD_SERVER"), "ask this server's API instead of the repository directory ($EDGEWARD_SERVER)")
	token := secretFlag(fs, "token", env.getenv("EDGEWARD_TOKEN"), "operator API token of an auditor or security admin ($EDGEWARD_TOKEN)")
	cosigned := fs.Bool("cosigned", false, "prove under the newest checkpoint a witness has cosigned (for a verify that requires a witness quorum)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: edgeward audit prove SEQ [--since N | --state FILE] [--cosigned] [-o FILE]")
	}
	seq, err := strconv.ParseInt(pos[0], 10, 64)
	if err != nil || seq < 1 {
		return fmt.Errorf("record %q: want a sequence number (1, 2, …)", pos[0])
	}
	if *state != "" {
		data, err := os.ReadFile(*state)
		if err != nil {
			return err
		}
		c, err := audit.ParseCheckpointUnverified(data)
		if err != nil {
			return fmt.Errorf("%s: %w", *state, err)
		}
		*since = c.Size
	}
	var p *audit.Proof
	if *server != "" {
		p = new(audit.Proof)
		q := url.Values{"seq": {pos[0]}, "since": {strconv.FormatInt(*since, 10)}}
		if *cosigned {
			q.Set("cosigned", "1")
		}
		if err := operatorGetJSON(ctx, env, *server, *token, "/v1/audit/prove?"+q.Encode(), p); err != nil {
			return err
		}
	} else {
		repo, err := rf.open()
		if err != nil {
			return err
		}
		l, db, err := reposerver.OpenAuditAt(ctx, repo, rf.db)
		if err != nil {
			return err
		}
		defer db.Close()
		if !*cosigned {
			p, err = l.Prove(ctx, seq, *since)
		} else if c, cerr := l.CosignedCheckpoint(ctx); cerr != nil {
			err = cerr
		} else {
			p, err = l.ProveAt(ctx, c, seq, *since)
		}
		if err != nil {
			return err
		}
	}
	data, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	if *out == "-" {
		_, err = env.stdout.Write(data)
		return err
	}
	return os.WriteFile(*out, data, 0o644)
}

// operatorGetJSON GETs path from a server's operator API into v.
func operatorGetJSON(ctx context.Context, env *cliEnv, server, token, path string, v any) error {
	api, err := (&opClient{server: server, token: token, env: env}).api()
	if err != nil {
		return err
	}
	_, err = api.Do(ctx, "GET", path, nil, v)
	return err
}

// cmdAuditMoveKey moves the checkpoint key out of the data directory, so that a copy of
// the directory (a backup, a compromised disk) does not hold the key that signs the log.
func cmdAuditMoveKey(ctx context.Context, env *cliEnv, args []string) error {
	fs, rf := newCommand("audit move-key", env)
	to := fs.String("to", "", "file to move the key to, outside the repository directory (created, mode 0600)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *to == "" {
		return errors.New("usage: edgeward audit move-key --to FILE (outside the repository directory)")
	}
	if err := repository.MoveAuditKey(rf.dir, *to); err != nil {
		return fmt.Errorf("audit move-key: %w", err)
	}
	fmt.Fprintf(env.stdout, "audit checkpoint key moved to %s; the repository keeps only its location\n", *to)
	return nil
}

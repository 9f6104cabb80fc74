package main

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	reposerver "github.com/edgeward/edgeward/repo-server"
	"github.com/edgeward/edgeward/repo-server/audit"
)

func cmdAuditExport(ctx context.Context, env *cliEnv, args []string) error {
	fs, rf := newCommand("audit export", env)
	out := fs.String("o", "-", "output file (JSON Lines); - for stdout")
	server := fs.String("server", env.getenv("EDGEWARD_SERVER"), "export through this server's operator API instead of the repository directory ($EDGEWARD_SERVER)")
	token := fs.String("token", env.getenv("EDGEWARD_TOKEN"), "operator API token of an auditor or security admin ($EDGEWARD_TOKEN)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	export := func(w io.Writer) error { return auditExportRemote(ctx, env, *server, *token, w) }
	if *server == "" {
		repo, err := rf.open()
		if err != nil {
			return err
		}
		l, db, err := repo.OpenAudit(ctx)
		if err != nil {
			return err
		}
		defer db.Close()
		export = func(w io.Writer) error { return l.Export(ctx, w) }
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
		fmt.Fprintf(env.stderr, "audit log exported to %s (verify with: edgeward audit verify %s --key <checkpoint public key>)\n", *out, *out)
	}
	return nil
}

func cmdAuditPubkey(ctx context.Context, env *cliEnv, args []string) error {
	fs, rf := newCommand("audit pubkey", env)
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
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return err
	}
	return pem.Encode(env.stdout, &pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func cmdAuditVerify(ctx context.Context, env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("audit verify", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	keyFile := fs.String("key", "", "checkpoint public key (PEM, from 'edgeward audit pubkey')")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *keyFile == "" {
		return errors.New("usage: edgeward audit verify FILE --key PUB.pem")
	}
	pub, err := readEd25519Pub(*keyFile)
	if err != nil {
		return err
	}
	f, err := os.Open(pos[0])
	if err != nil {
		return err
	}
	defer f.Close()
	rep, err := audit.Verify(f, pub)
	if err != nil {
		return fmt.Errorf("audit log %s does NOT verify: %w", pos[0], err)
	}
	fmt.Fprintf(env.stdout, "ok: %d records, %d checkpoints signed by %s, all records covered\n", rep.Records, rep.Checkpoints, audit.KeyID(pub))
	return nil
}

func readEd25519Pub(path string) (ed25519.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if b, _ := pem.Decode(data); b != nil {
		k, err := x509.ParsePKIXPublicKey(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if pk, ok := k.(ed25519.PublicKey); ok {
			return pk, nil
		}
		return nil, fmt.Errorf("%s: not an ed25519 key", path)
	}
	if _, _, pub, err := reposerver.PeekKey(data); err == nil {
		k, err := pub.ToPublicKey()
		if err != nil {
			return nil, err
		}
		if pk, ok := k.(ed25519.PublicKey); ok {
			return pk, nil
		}
	}
	return nil, fmt.Errorf("%s: not a PEM public key", path)
}

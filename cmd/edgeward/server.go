package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"time"

	reposerver "github.com/edgeward/edgeward/repo-server"
	"github.com/edgeward/edgeward/repo-server/fleet"
)

func cmdServer(ctx context.Context, env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var rf repoFlags
	rf.register(fs, env)
	listen := fs.String("listen", "127.0.0.1:8440", "address to serve on")
	refresh := fs.Duration("refresh-interval", 0, "how often to check online metadata expiry (default: min(1m, timestamp lifetime/10))")
	signing := fs.Bool("sign-delegated", false, "let the server sign published targets with the models/runtimes keys it finds (--key, DIR/keys/offline; passphrase from --passphrase-file or $EDGEWARD_PASSPHRASE); without it POST /v1/publish answers 503")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(env.stderr, nil))
	repo, err := reposerver.Open(reposerver.Config{Dir: rf.dir, Actor: "server", Logger: log})
	if err != nil {
		return err
	}
	if _, err := repo.Load(ctx); err != nil {
		return fmt.Errorf("repository %s: %w", rf.dir, err)
	}
	srv, err := reposerver.NewServer(reposerver.ServerConfig{Repo: repo, RefreshInterval: *refresh, Logger: log})
	if err != nil {
		return err
	}
	store, err := fleet.Open(ctx, filepath.Join(rf.dir, "fleet.db"))
	if err != nil {
		return err
	}
	defer store.Close()
	op := reposerver.OperatorConfig{Fleet: store}
	if *signing {
		op.Signing = rf.keyring()
		if _, err := op.Signing.Passphrase(); err != nil {
			return fmt.Errorf("--sign-delegated: %w", err)
		}
	}
	if err := srv.EnableOperatorAPI(op); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	log.Info("serving", "addr", "http://"+ln.Addr().String(), "repo", rf.dir)
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
	if _, err := parse(fs, args); err != nil {
		return err
	}
	r, err := fleet.ParseRole(*role)
	if err != nil {
		return err
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

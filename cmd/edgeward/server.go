package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"

	reposerver "github.com/edgeward/edgeward/repo-server"
)

func cmdServer(ctx context.Context, env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var rf repoFlags
	rf.register(fs, env)
	listen := fs.String("listen", "127.0.0.1:8440", "address to serve on")
	refresh := fs.Duration("refresh-interval", 0, "how often to check online metadata expiry (default: min(1m, timestamp lifetime/10))")
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
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	log.Info("serving", "addr", "http://"+ln.Addr().String(), "repo", rf.dir)
	return srv.Serve(ctx, ln)
}

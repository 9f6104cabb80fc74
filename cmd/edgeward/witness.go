package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/edgeward/edgeward/repo-server/audit"
	"golang.org/x/mod/sumdb/note"
)

// cmdAuditWitness runs a witness (C2SP tlog-witness): someone other than the server's
// operator runs it, gives the server's operator its URL and the auditors its key, and it
// cosigns a checkpoint only if it consistently extends the last one it cosigned.
func cmdAuditWitness(ctx context.Context, env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("audit witness", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	listen := fs.String("listen", "127.0.0.1:8450", "address to serve POST /add-checkpoint on")
	name := fs.String("name", "", "the witness's name, e.g. witness.example.org (required)")
	keyFile := fs.String("key", "", "the witness's private key file (created, mode 0600, if missing; required)")
	state := fs.String("state", "", "file keeping the newest checkpoint cosigned per log (required; keep it: a witness that forgets can be shown a fork)")
	var logs listFlag
	fs.Var(&logs, "log", "verifier key of a log to witness (from 'edgeward audit pubkey'), inline or a file; repeat for each")
	printKey := fs.Bool("print-key", false, "print the witness's verifier key (for auditors' --witness) and exit")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *name == "" || *keyFile == "" || (*state == "" && !*printKey) || (len(logs) == 0 && !*printKey) {
		return errors.New("usage: edgeward audit witness --name NAME --key FILE --state FILE --log KEY [--log KEY…] [--listen ADDR]")
	}
	key, err := witnessKey(*keyFile)
	if err != nil {
		return err
	}
	vkey := audit.CosignerKey(*name, key.Public().(ed25519.PublicKey))
	if *printKey {
		fmt.Fprintln(env.stdout, vkey)
		return nil
	}
	var lk []note.Verifier
	for _, l := range logs {
		v, err := readVerifier(l, "")
		if err != nil {
			return fmt.Errorf("--log: %w", err)
		}
		lk = append(lk, v)
	}
	w, err := audit.NewWitness(audit.WitnessConfig{Signer: audit.Cosigner(*name, key, nil), Logs: lk, State: *state})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(env.stderr, nil))
	log.Info("audit witness listening", "addr", ln.Addr().String(), "key", vkey)
	fmt.Fprintf(env.stdout, "witness %s on http://%s (key %s)\n", *name, ln.Addr(), vkey)
	hs := &http.Server{Handler: w, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute} // add-checkpoint bodies are a few KiB
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		hs.Shutdown(shutdown)
	}()
	if err := hs.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// witnessKey reads the witness's Ed25519 seed (base64), creating it if the file is missing.
func witnessKey(path string) (ed25519.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return nil, err
		}
		_, err = fmt.Fprintln(f, base64.StdEncoding.EncodeToString(k.Seed()))
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return k, err
	}
	if err != nil {
		return nil, err
	}
	seed, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(data)))
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("witness key %s: want a base64 Ed25519 seed", path)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

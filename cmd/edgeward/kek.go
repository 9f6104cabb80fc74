package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/edgeward/edgeward/internal/durable"
	"github.com/edgeward/edgeward/internal/keywrap"
)

// kekHeader starts a key-encryption key file (issue 18).
const kekHeader = "edgeward-kek-v1 "

// cmdKeysKEK writes a fresh key-encryption key: the key the server seals encrypted
// targets' content keys under. Keep it apart from the repository and the database
// (docs/OPERATORS.md, "Encrypted models").
func cmdKeysKEK(ctx context.Context, env *cliEnv, args []string) error {
	fs, _ := newCommand("keys kek", env)
	out := fs.String("out", "", "file to write the key-encryption key to (mode 0600; refused if it exists)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return errors.New("usage: edgeward keys kek --out FILE")
	}
	if _, err := os.Stat(*out); err == nil {
		return fmt.Errorf("%s exists: a key-encryption key is never overwritten (the content keys sealed under it would be lost)", *out)
	}
	k, err := keywrap.NewKEK(nil)
	if err != nil {
		return err
	}
	if err := durable.WriteFile(*out, []byte(kekHeader+base64.StdEncoding.EncodeToString(k)+"\n"), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", *out, err)
	}
	fmt.Fprintf(env.stdout, "key-encryption key written to %s (keep it apart from the repository and the database)\n", *out)
	return nil
}

// readKEK reads a key-encryption key file written by edgeward keys kek.
func readKEK(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("key-encryption key: %w", err)
	}
	s, ok := strings.CutPrefix(strings.TrimSpace(string(b)), kekHeader)
	if !ok {
		return nil, fmt.Errorf("key-encryption key %s: not a file of edgeward keys kek", path)
	}
	k, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(k) != keywrap.KeySize {
		return nil, fmt.Errorf("key-encryption key %s: want %d base64 bytes", path, keywrap.KeySize)
	}
	return k, nil
}

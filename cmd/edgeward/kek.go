package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/durable"
	"github.com/edgeward/edgeward/internal/keywrap"
	"github.com/edgeward/edgeward/repository"
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

// cmdKeysRotateContent re-encrypts a published encrypted target under a fresh content
// key (repository.Reencrypt): the same version and plaintext, a new signed ciphertext.
// Devices that run the old ciphertext stay trusted and are offered the new one by a
// rollout to that version (docs/OPERATORS.md, "Encrypted models").
func cmdKeysRotateContent(ctx context.Context, env *cliEnv, args []string) error {
	fs, rf := newCommand("keys rotate-content", env)
	rf.registerPassphrase(fs)
	rf.registerKeys(fs)
	kind := fs.String("kind", "model", "model or probe")
	name := fs.String("name", "", "artifact name")
	version := fs.String("version", "", "the encrypted version whose content key is rotated")
	kekFile := fs.String("kek", "", "key-encryption key file (edgeward keys kek): opens the current content key and seals the new one")
	keepOld := fs.Bool("keep-old-key", false, "keep the superseded content key sealed until the superseded ciphertext is swept (default: destroy it at once)")
	grace := fs.Duration("grace", repository.DefaultRetireGrace, "keep the superseded ciphertext in the blob store this long")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 || *name == "" || *version == "" || *kekFile == "" {
		return errors.New("usage: edgeward keys rotate-content --kek FILE [--kind model] --name N --version V [--keep-old-key] [--grace D]")
	}
	k, err := artifact.ParseKind(*kind)
	if err != nil {
		return err
	}
	kek, err := readKEK(*kekFile)
	if err != nil {
		return err
	}
	repo, err := rf.open()
	if err != nil {
		return err
	}
	res, err := repo.Reencrypt(ctx, repository.ReencryptRequest{Kind: k, Name: *name, Version: *version, KEK: kek, KeepOldKey: *keepOld, Grace: *grace}, rf.keyring())
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "re-encrypted %s: ciphertext %s (was %s), plaintext %s unchanged; old content key %s\n", res.Path, res.New, res.Old, res.Plaintext, res.OldKey)
	fmt.Fprintf(env.stdout, "%s v%d signed; devices running %s %s are offered the new ciphertext by a rollout to that version\n", k.Role(), res.Version, *name, *version)
	return nil
}

// cmdKeysRotateKEK seals every stored content key under a new key-encryption key
// (repository.RotateKEK). Start the servers with the new key afterwards.
func cmdKeysRotateKEK(ctx context.Context, env *cliEnv, args []string) error {
	fs, rf := newCommand("keys rotate-kek", env)
	oldFile := fs.String("kek", "", "the current key-encryption key file")
	newFile := fs.String("new-kek", "", "the new key-encryption key file (edgeward keys kek --out FILE)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 || *oldFile == "" || *newFile == "" {
		return errors.New("usage: edgeward keys rotate-kek --kek OLD --new-kek NEW")
	}
	oldKEK, err := readKEK(*oldFile)
	if err != nil {
		return err
	}
	newKEK, err := readKEK(*newFile)
	if err != nil {
		return err
	}
	repo, err := rf.open()
	if err != nil {
		return err
	}
	res, err := repo.RotateKEK(ctx, oldKEK, newKEK)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "%d content keys re-sealed under %s (%d were already); restart every server with --kek %s, then destroy %s\n",
		len(res.Resealed), *newFile, len(res.Already), *newFile, *oldFile)
	return nil
}

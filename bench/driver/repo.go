package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/edgeward/edgeward/repository"
)

const benchPassphrase = "edgeward-bench"

// payload is a published benchmark target.
type payload struct {
	Size   int64
	Name   string // artifact name, e.g. big-256mib
	Target string // TUF target path, models/<name>/1.0.0.bin
	SHA256 string
	// Enc is the same content published encrypted (issue 18), as its own target.
	Enc *encPayload
}

// encPayload is a payload's encrypted twin: its target (the ciphertext's hash and
// length) and its content key, read from the repository with the bench's KEK.
type encPayload struct {
	Target, SHA256 string
	Length         int64
	Key            string // hex
}

func (p payload) url(base string) string {
	return base + "/targets/" + repository.ConsistentTargetPath(p.Target, p.SHA256)
}

// benchRepo is a TUF repository made with the edgeward CLI, holding one incompressible
// payload per size; it is kept in bench/.work between runs.
type benchRepo struct {
	Dir      string
	Payloads []payload
}

func (r *benchRepo) rootFile() string {
	return filepath.Join(r.Dir, "repository", "metadata", "1.root.json")
}

func ensureRepo(ctx context.Context, cfg *config) (*benchRepo, error) {
	r := &benchRepo{Dir: filepath.Join(cfg.work, "repo")}
	env := []string{"EDGEWARD_PASSPHRASE=" + benchPassphrase}
	edgeward := filepath.Join(cfg.bin, "edgeward")
	if _, err := os.Stat(filepath.Join(r.Dir, "edgeward-repo.json")); err != nil {
		os.RemoveAll(r.Dir)
		logf("creating repository %s", r.Dir)
		if _, err := runChild(ctx, edgeward, []string{"repo", "init", r.Dir}, env); err != nil {
			return nil, err
		}
	}
	for _, size := range cfg.installSizes {
		p := payload{Size: size, Name: fmt.Sprintf("big-%dmib", size>>20)}
		p.Target = "models/" + p.Name + "/1.0.0.bin"
		file := filepath.Join(cfg.work, "payloads", p.Name+".bin")
		sum, err := ensurePayload(file, size)
		if err != nil {
			return nil, err
		}
		p.SHA256 = sum
		marker := filepath.Join(r.Dir, ".bench-published-"+p.Name+"-"+sum[:16])
		if _, err := os.Stat(marker); err != nil {
			logf("publishing %s (%d MiB)", p.Target, size>>20)
			if _, err := runChild(ctx, edgeward, []string{"publish", "--repo", r.Dir, "--kind", "model", "--name", p.Name,
				"--version", "1.0.0", file}, env); err != nil {
				return nil, err
			}
			if err := os.WriteFile(marker, nil, 0o644); err != nil {
				return nil, err
			}
		}
		enc, err := ensureEncrypted(ctx, cfg, r, p, file, env)
		if err != nil {
			return nil, err
		}
		p.Enc = enc
		r.Payloads = append(r.Payloads, p)
	}
	return r, nil
}

// ensureEncrypted publishes file encrypted as models/<name>-enc/1.0.0.bin under the
// bench's key-encryption key (made once in the work directory) unless it is there, and
// returns its target and content key.
func ensureEncrypted(ctx context.Context, cfg *config, r *benchRepo, p payload, file string, env []string) (*encPayload, error) {
	edgeward := filepath.Join(cfg.bin, "edgeward")
	kek := filepath.Join(cfg.work, "kek")
	if _, err := os.Stat(kek); err != nil {
		if _, err := runChild(ctx, edgeward, []string{"keys", "kek", "--out", kek}, nil); err != nil {
			return nil, err
		}
	}
	e := &encPayload{Target: "models/" + p.Name + "-enc/1.0.0.bin"}
	marker := filepath.Join(r.Dir, ".bench-published-"+p.Name+"-enc-"+p.SHA256[:16])
	if _, err := os.Stat(marker); err != nil {
		logf("publishing %s (%d MiB, encrypted)", e.Target, p.Size>>20)
		if _, err := runChild(ctx, edgeward, []string{"publish", "--repo", r.Dir, "--encrypt", "--kek", kek, "--kind", "model",
			"--name", p.Name + "-enc", "--version", "1.0.0", file}, env); err != nil {
			return nil, err
		}
		if err := os.WriteFile(marker, nil, 0o644); err != nil {
			return nil, err
		}
	}
	repo, err := repository.Open(repository.Config{Dir: r.Dir})
	if err != nil {
		return nil, err
	}
	st, err := repo.Load(ctx)
	if err != nil {
		return nil, err
	}
	for _, ti := range st.List() {
		if ti.Path == e.Target {
			e.SHA256, e.Length = ti.SHA256, ti.Length
		}
	}
	if e.SHA256 == "" {
		return nil, fmt.Errorf("%s is not listed", e.Target)
	}
	k, err := readBenchKEK(kek)
	if err != nil {
		return nil, err
	}
	ck, err := repo.ContentKey(k, e.Target, e.SHA256)
	if err != nil {
		return nil, err
	}
	e.Key = hex.EncodeToString(ck[:])
	return e, nil
}

// readBenchKEK reads a key file of edgeward keys kek.
func readBenchKEK(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "edgeward-kek-v1 ")
	if !ok {
		return nil, fmt.Errorf("%s: not a key-encryption key file", path)
	}
	return base64.StdEncoding.DecodeString(s)
}

// ensurePayload writes size pseudo-random bytes (fixed seed) to file unless it exists
// with that size, and returns their sha256.
func ensurePayload(file string, size int64) (string, error) {
	h := sha256.New()
	if fi, err := os.Stat(file); err == nil && fi.Size() == size {
		f, err := os.Open(file)
		if err != nil {
			return "", err
		}
		defer f.Close()
		if _, err := io.Copy(h, f); err != nil {
			return "", err
		}
		return hex.EncodeToString(h.Sum(nil)), nil
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return "", err
	}
	f, err := os.Create(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	w := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<20)
	src := rand.NewChaCha8([32]byte{'e', 'd', 'g', 'e', 'w', 'a', 'r', 'd'})
	buf := make([]byte, 1<<20)
	for n := int64(0); n < size; n += int64(len(buf)) {
		src.Read(buf)
		if _, err := w.Write(buf[:min(int64(len(buf)), size-n)]); err != nil {
			return "", err
		}
	}
	if err := w.Flush(); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), f.Close()
}

// startRepoServer runs `edgeward server` on the repository.
func startRepoServer(cfg *config, r *benchRepo) (*service, string, error) {
	port := freePort()
	s, err := startService("edgeward server", filepath.Join(cfg.work, "edgeward-server.log"), nil,
		filepath.Join(cfg.bin, "edgeward"), "server", "--repo", r.Dir, "--listen", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return nil, "", err
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	if err := waitHTTP(base+"/metadata/timestamp.json", 30*time.Second); err != nil {
		s.stop()
		return nil, "", err
	}
	return s, base, nil
}

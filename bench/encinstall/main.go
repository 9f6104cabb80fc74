// Command encinstall is the encrypted-target row of the install benchmark (issue 18): it
// installs a model target the way the agent does (TUF refresh, a streamed, hashed and
// fsynced download into an A/B slot, staged) and then loads it into memory the way the
// runtime does before it creates a session: a plaintext target is read whole, an
// encrypted one is decrypted whole (every segment authenticated) with its content key.
// Either way the plaintext's SHA-256 is checked. Its peak RSS is therefore the
// install's plus the model's own size, which is what the issue bounds (64 MiB plus the
// model).
//
//	encinstall METADATA_URL TARGETS_URL ROOT_FILE STATE_DIR TARGET_PATH PLAIN_SHA256
//
// $EDGEWARD_BENCH_CONTENT_KEY (hex) is the content key of an encrypted target; the
// benchmark reads it from the repository with its key-encryption key. (On a device the
// key comes wrapped to its TPM at a check-in; the bench has no TPM in this loop, and the
// unwrap is one TPM2_ECDH_ZGen, independent of the model's size.)
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/segcrypt"
	"github.com/edgeward/edgeward/rollback"
	"github.com/edgeward/edgeward/updater"
)

func main() {
	if len(os.Args) != 7 {
		fmt.Fprintln(os.Stderr, "usage: encinstall METADATA_URL TARGETS_URL ROOT_FILE STATE_DIR TARGET_PATH PLAIN_SHA256")
		os.Exit(2)
	}
	if err := run(context.Background(), os.Args[1], os.Args[2], os.Args[3], os.Args[4], os.Args[5], os.Args[6]); err != nil {
		fmt.Fprintln(os.Stderr, "encinstall:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, metadataURL, targetsURL, rootFile, state, target, plainSHA string) error {
	root, err := os.ReadFile(rootFile)
	if err != nil {
		return err
	}
	mdir := filepath.Join(state, "tuf")
	if err := updater.PinRoot(mdir, root); err != nil {
		return err
	}
	tuf, err := updater.NewTUF(updater.TUFConfig{MetadataDir: mdir, MetadataURL: metadataURL, TargetsURL: targetsURL})
	if err != nil {
		return err
	}
	if err := tuf.Refresh(ctx); err != nil {
		return err
	}
	t, meta, err := tuf.Resolve(ctx, artifact.KindModel, target)
	if err != nil {
		return err
	}
	slots, err := rollback.Open(ctx, rollback.Config{Dir: state, Fetch: tuf.SlotFetcher(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	defer slots.Close()
	s, err := slots.Install(ctx, artifact.KindModel, t)
	if err != nil {
		return fmt.Errorf("install %s: %w", target, err)
	}
	if s.Phase != rollback.Staged {
		return fmt.Errorf("install %s: %s (%s), want staged", target, s.Phase, s.Reason)
	}
	f, err := os.Open(slots.Payload(artifact.KindModel, s.Inactive()))
	if err != nil {
		return err
	}
	defer f.Close()
	var data []byte
	if k := os.Getenv("EDGEWARD_BENCH_CONTENT_KEY"); k != "" {
		if meta.Encryption == nil {
			return fmt.Errorf("%s is not encrypted", target)
		}
		b, err := hex.DecodeString(k)
		if err != nil || len(b) != segcrypt.KeySize {
			return fmt.Errorf("content key: want %d hex bytes", segcrypt.KeySize)
		}
		data, err = segcrypt.Decrypt(ctx, bufio.NewReaderSize(f, 1<<20), segcrypt.Key(b), meta.Encryption.PlainLength)
		if err != nil {
			return err
		}
	} else {
		// As edgeward-runtime reads a plaintext model: one buffer of the file's size.
		st, err := f.Stat()
		if err != nil {
			return err
		}
		data = make([]byte, st.Size())
		if _, err := io.ReadFull(f, data); err != nil {
			return err
		}
	}
	if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != plainSHA {
		return fmt.Errorf("%s loads to sha256 %x, want %s", target, sum, plainSHA)
	}
	return nil
}

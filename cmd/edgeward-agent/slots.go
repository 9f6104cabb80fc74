package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/rollback"
	"github.com/edgeward/edgeward/updater"
)

func slotCommand(ctx context.Context, cmd string, args []string, stdout io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var (
		stateDir    = fs.String("state-dir", "/var/lib/edgeward", "agent state directory")
		rootFile    = fs.String("root", "", "enroll: trusted root.json obtained at enrollment")
		metadataURL = fs.String("metadata-url", "", "enroll: repository metadata URL")
		targetsURL  = fs.String("targets-url", "", "enroll: repository targets URL (default: sibling of metadata)")
		tpmURL      = fs.String("tpm", "", "enroll: TPM holding the anti-rollback floors (/dev/tpmrm0, swtpm://host:port); empty: sqlite only")
		kindName    = fs.String("kind", "model", "slot kind: model or runtime")
		target      = fs.String("target", "", "install: TUF target path")
		timeout     = fs.Duration("timeout", 10*time.Minute, "trial: how long the trial may take to pass")
		pass        = fs.Bool("pass", false, "confirm: the trial passed")
		fail        = fs.String("fail", "", "confirm: the trial failed, for this reason")
		checkpoint  = fs.Int64("checkpoint-bytes", 0, "install: bytes between durable download checkpoints (0: 8 MiB)")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	kind, err := artifact.ParseKind(*kindName)
	if err != nil {
		return err
	}
	tufDir := filepath.Join(*stateDir, "tuf")
	cfgPath := filepath.Join(*stateDir, "agent.json")
	if cmd == "enroll" {
		if *rootFile == "" || *metadataURL == "" {
			return errors.New("enroll needs --root and --metadata-url")
		}
		root, err := os.ReadFile(*rootFile)
		if err != nil {
			return err
		}
		if err := updater.PinRoot(tufDir, root); err != nil {
			return err
		}
		b, _ := json.Marshal(agentConfig{MetadataURL: *metadataURL, TargetsURL: *targetsURL, TPM: *tpmURL})
		return rollback.WriteFileAtomic(cfgPath, b)
	}
	st, err := openState(ctx, *stateDir, &updater.Downloader{Logger: log, CheckpointBytes: *checkpoint}, log)
	if err != nil {
		return err
	}
	defer st.Close()
	tuf, m := st.tuf, st.slots
	if cmd != "status" {
		if err := m.Recover(ctx); err != nil {
			return fmt.Errorf("recover: %w", err)
		}
	}
	var s rollback.State
	switch cmd {
	case "install":
		if *target == "" {
			return errors.New("install needs --target")
		}
		if err := tuf.Refresh(ctx); err != nil {
			return err
		}
		t, _, err := tuf.Resolve(ctx, kind, *target)
		if err != nil {
			return err
		}
		s, err = m.Install(ctx, kind, t)
		if err != nil {
			return err
		}
	case "trial":
		if s, err = m.BeginTrial(ctx, kind, *timeout); err != nil {
			return err
		}
	case "confirm":
		if *pass == (*fail != "") {
			return errors.New("confirm needs exactly one of --pass and --fail REASON")
		}
		if s, err = m.Confirm(ctx, kind, *pass, *fail); err != nil {
			return err
		}
	case "recover", "status":
		if err := status(ctx, m, stdout); err != nil {
			return err
		}
		o, err := updater.OpenOutbox(ctx, filepath.Join(*stateDir, "outbox.db"))
		if err != nil {
			return err
		}
		defer o.Close()
		at, result, err := o.LastCheckIn(ctx)
		if err != nil {
			return err
		}
		n, _ := o.Len(ctx)
		if at.IsZero() {
			fmt.Fprintf(stdout, "last check-in: never\n")
		} else {
			fmt.Fprintf(stdout, "last check-in: %s (%s)\n", at.UTC().Format(time.RFC3339), result)
		}
		fmt.Fprintf(stdout, "reports waiting: %d\n", n)
		return nil
	}
	fmt.Fprintln(stdout, s)
	if s.Phase == rollback.Failed || s.Phase == rollback.RolledBack {
		return fmt.Errorf("%s: %s", s.Phase, s.Reason)
	}
	return nil
}

// status prints, for a person on the device, each kind's slots and transaction.
func status(ctx context.Context, m *rollback.Manager, w io.Writer) error {
	for _, k := range rollback.Kinds() {
		s, err := m.State(ctx, k)
		if err != nil {
			fmt.Fprintf(w, "%s: %v\n", k, err)
			continue
		}
		floor, _ := m.Floor(ctx, k)
		fmt.Fprintf(w, "%s: %s\n", k, s.Phase)
		if s.Current != nil {
			fmt.Fprintf(w, "  active slot %s: %s (%s)\n", s.Active, s.Current.Version, s.Current.Path)
		} else {
			fmt.Fprintln(w, "  active slot: none")
		}
		fmt.Fprintf(w, "  floor: %d.%d.%d\n", floor>>40, (floor>>20)&(1<<20-1), floor&(1<<20-1))
		if p := s.Pending; p != nil {
			done := int64(0)
			if fi, err := os.Stat(m.Payload(k, s.Inactive()) + ".part"); err == nil {
				done = fi.Size()
			} else if fi, err := os.Stat(m.Payload(k, s.Inactive())); err == nil {
				done = fi.Size()
			}
			fmt.Fprintf(w, "  installing %s into slot %s: %d / %d bytes\n", p.Version, s.Inactive(), done, p.Length)
			if !s.Deadline.IsZero() {
				fmt.Fprintf(w, "  trial deadline: %s\n", s.Deadline.UTC().Format(time.RFC3339))
			}
		}
		if s.Reason != "" {
			fmt.Fprintf(w, "  last result: %s\n", s.Reason)
		}
	}
	return nil
}

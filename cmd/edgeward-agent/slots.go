package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/edgeward/edgeward/agent"
	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/rollback"
	"github.com/edgeward/edgeward/updater"
)

func slotCommand(ctx context.Context, cmd string, args []string, stdout io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	var (
		stateDir    = fs.String("state-dir", agent.DefaultStateDir, "agent state directory")
		rootFile    = fs.String("root", "", "enroll: trusted root.json obtained at enrollment")
		metadataURL = fs.String("metadata-url", "", "enroll: repository metadata URL")
		targetsURL  = fs.String("targets-url", "", "enroll: repository targets URL (default: sibling of metadata)")
		tpmURL      = fs.String("tpm", "", "enroll: TPM holding the anti-rollback floors (/dev/tpmrm0, swtpm://host:port); empty: sqlite only")
		kindName    = fs.String("kind", "model", "slot kind: model or runtime")
		target      = fs.String("target", "", "install: TUF target path")
		timeout     = fs.Duration("timeout", 10*time.Minute, "trial: how long the trial may take to pass")
		pass        = fs.Bool("pass", false, "confirm: the trial passed")
		fail        = fs.String("fail", "", "confirm: the trial failed, for this reason")
		checkpoint  = fs.Int64("checkpoint-bytes", 0, "install: a durable download checkpoint every N bytes (0: every 64 MiB, at most once a second)")
		deltas      = fs.Bool("deltas", true, "install: build the target from a published delta against the committed version when there is one; false: always the full target")
		serverCA    = fs.String("server-ca", "", "install: PEM certificate(s) to trust for https metadata and targets URLs (the server's DIR/tls/server.pem); empty: the system roots")
		jsonOut     = fs.Bool("json", false, "status: print the status as JSON")
	)
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	kind, err := artifact.ParseSlotKind(*kindName)
	if err != nil {
		return err
	}
	dir := agent.StateDir(*stateDir)
	if cmd == "enroll" {
		if *rootFile == "" || *metadataURL == "" {
			return errors.New("enroll needs --root and --metadata-url")
		}
		root, err := updater.ReadRegular(*rootFile, updater.MaxRootBytes)
		if err != nil {
			return fmt.Errorf("--root: %w", err)
		}
		if err := agent.Enroll(dir, root, agent.Enrollment{MetadataURL: *metadataURL, TargetsURL: *targetsURL, TPM: *tpmURL}); err != nil {
			return err
		}
		var pinned struct {
			Signed struct{ Version int64 } `json:"signed"`
		}
		json.Unmarshal(root, &pinned) // PinRoot has verified it
		tpm := *tpmURL
		if tpm == "" {
			tpm = "none (floors in sqlite only)"
		}
		fmt.Fprintf(stdout, "enrolled %s: TUF root v%d pinned, metadata %s, TPM %s\nnext: edgeward-agent device --state-dir %s --server URL\n",
			*stateDir, pinned.Signed.Version, *metadataURL, tpm, *stateDir)
		return nil
	}
	if cmd == "status" {
		return status(ctx, dir, *jsonOut, stdout, log)
	}
	roots, err := readRoots(*serverCA)
	if err != nil {
		return err
	}
	dl := &updater.Downloader{Logger: log}
	if *checkpoint > 0 {
		dl.CheckpointBytes, dl.CheckpointInterval = *checkpoint, -1 // exactly every N bytes
	}
	st, err := agent.OpenState(ctx, agent.StateConfig{Dir: dir, Downloader: dl, Roots: roots, Logger: log, NoDeltas: !*deltas})
	if err != nil {
		return err
	}
	defer st.Close()
	m := st.Slots
	if err := m.Recover(ctx); err != nil {
		return fmt.Errorf("recover: %w", err)
	}
	var s rollback.State
	switch cmd {
	case "install":
		if *target == "" {
			return errors.New("install needs --target")
		}
		if s, err = st.Install(ctx, kind, *target); err != nil {
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
	case "recover":
		return st.WriteStatus(ctx, stdout)
	}
	fmt.Fprintln(stdout, s)
	if s.Phase == rollback.Failed || s.Phase == rollback.RolledBack {
		return fmt.Errorf("%s: %s", s.Phase, s.Reason)
	}
	return nil
}

// status asks the agent running on dir over its status socket, which answers while the
// agent holds the TPM; with no agent running it reads the state directory (opening the
// TPM for the floors), without recovering anything.
func status(ctx context.Context, dir agent.StateDir, asJSON bool, stdout io.Writer, log *slog.Logger) error {
	st, err := agent.AskStatus(ctx, dir)
	if errors.Is(err, agent.ErrNotRunning) {
		state, oerr := agent.OpenState(ctx, agent.StateConfig{Dir: dir, Logger: log})
		if oerr != nil {
			return oerr
		}
		defer state.Close()
		st, err = state.ReadStatus(ctx)
	}
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	st.Write(stdout)
	return nil
}

package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/durable"
	"github.com/edgeward/edgeward/rollback"
	"github.com/edgeward/edgeward/updater"
)

// DefaultStateDir is the state directory of an agent installed on a device.
const DefaultStateDir = "/var/lib/edgeward"

// StateDir is the agent's state directory. Its layout:
//
//	agent.json         the enrollment (Enrollment), written once by Enroll
//	tuf/               trusted TUF metadata (the pinned root first), cached targets
//	root.pinned        the root pinned at enrollment, the backup a wiped tuf/ restarts from
//	state.db, slots/   the A/B slots and their transaction (package rollback)
//	outbox.db          reports waiting for the server (updater.Outbox)
//	measurements.json  the measurement log the quotes cover (MeasurementLog)
//	probes/            probe sets downloaded for trials (RuntimeJudge)
//	runtime-N.sock     control sockets of the runtime processes (Runtimes)
//	runtime-health.json what the runtime supervision saw: deaths, crash loop (RuntimeHealth)
//	status.sock        the running agent's status socket (AskStatus)
//
// Everything in it is private to the agent (0700).
type StateDir string

// Enrollment returns the path of agent.json.
func (d StateDir) Enrollment() string { return filepath.Join(string(d), "agent.json") }

// TUF returns the directory of the trusted TUF metadata.
func (d StateDir) TUF() string { return filepath.Join(string(d), "tuf") }

// PinnedRoot returns the path of the root backup.
func (d StateDir) PinnedRoot() string { return filepath.Join(string(d), "root.pinned") }

// Outbox returns the path of the report outbox database.
func (d StateDir) Outbox() string { return filepath.Join(string(d), "outbox.db") }

// Measurements returns the path of the measurement log.
func (d StateDir) Measurements() string { return filepath.Join(string(d), "measurements.json") }

// RuntimeHealth returns the path of the runtime supervision's health file.
func (d StateDir) RuntimeHealth() string { return filepath.Join(string(d), "runtime-health.json") }

// AuditCheckpoint is the newest audit-log checkpoint the device has verified.
func (d StateDir) AuditCheckpoint() string { return filepath.Join(string(d), "audit-checkpoint") }

// Enrollment is what a device is enrolled with: where its repository is and which TPM
// holds its anti-rollback floors. Enroll writes it into the state directory.
type Enrollment struct {
	// MetadataURL is the repository's TUF metadata URL. Required.
	MetadataURL string `json:"metadata_url"`
	// TargetsURL is the repository's targets URL; empty: the sibling of MetadataURL.
	TargetsURL string `json:"targets_url,omitempty"`
	// TPM is the attest.Open URL of the TPM holding the anti-rollback floors
	// (/dev/tpmrm0, swtpm://host:port); empty means the sqlite mirror alone.
	TPM string `json:"tpm,omitempty"`
}

// Enroll pins the trusted TUF root and writes e into dir (agent.json, atomically). It is
// the only step that trusts its input without verification: root is trusted because it
// was obtained at enrollment.
func Enroll(dir StateDir, root []byte, e Enrollment) error {
	if e.MetadataURL == "" {
		return errors.New("agent: enroll needs the metadata URL")
	}
	if err := updater.PinRoot(dir.TUF(), root); err != nil {
		return err
	}
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if err := durable.WriteFile(dir.Enrollment(), b, 0o600); err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	return nil
}

// ReadEnrollment reads agent.json.
func ReadEnrollment(dir StateDir) (Enrollment, error) {
	var e Enrollment
	p := dir.Enrollment()
	b, err := os.ReadFile(p)
	if err != nil {
		return e, fmt.Errorf("read %s (enroll first): %w", p, err)
	}
	if err := json.Unmarshal(b, &e); err != nil {
		return e, fmt.Errorf("read %s: %w", p, err)
	}
	return e, nil
}

// StateConfig says how to open a state directory.
type StateConfig struct {
	// Dir is the state directory; empty: DefaultStateDir.
	Dir StateDir
	// Downloader fetches targets; nil: an updater.Downloader with its defaults. Its nil
	// Client is replaced by one trusting Roots.
	Downloader *updater.Downloader
	// Roots are the certificates trusted for https metadata and target URLs (the
	// server's CA: Config.ServerRoots, --server-ca); nil: the system roots.
	Roots *x509.CertPool
	// MetadataTimeout bounds each TUF metadata request, with or without Roots: a
	// metadata server that accepts the connection and never answers fails the refresh
	// (updater.ErrMetadataTimeout) instead of hanging the agent. 0:
	// updater.DefaultMetadataTimeout (2 minutes).
	MetadataTimeout time.Duration
	// TPM, if set, holds the floors instead of the TPM named at enrollment; the caller
	// keeps ownership (State.Close does not close it).
	TPM *attest.TPM
	// Now is the clock of the slots; nil: time.Now.
	Now func() time.Time
	// Logger receives the slots' transitions and the downloads' progress; nil: slog.Default().
	Logger *slog.Logger
	// NoDeltas makes every install download the full target (updater.TUFConfig.NoDeltas).
	NoDeltas bool
}

// State is an enrolled state directory, opened: the TUF client, the slots and, when the
// enrollment names one, the TPM holding the floors. The slots are not recovered yet:
// call Slots.Recover before changing them.
type State struct {
	Dir   StateDir
	TUF   *updater.TUF
	Slots *rollback.Manager
	// TPM is nil when the enrollment names none.
	TPM *attest.TPM

	ownTPM bool
}

// OpenState opens the state directory enrolled by Enroll. It makes no request, and
// opening the TUF client writes nothing (updater.NewTUF), so a full tuf/ directory does
// not keep the device from serving. (The slots' sqlite database, opened by rollback.Open,
// still creates its WAL index at each open: see TestWholeStateOnFullDisk.)
func OpenState(ctx context.Context, cfg StateConfig) (*State, error) {
	if cfg.Dir == "" {
		cfg.Dir = DefaultStateDir
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	dl := updater.Downloader{Logger: cfg.Logger}
	if cfg.Downloader != nil {
		dl = *cfg.Downloader
	}
	if cfg.MetadataTimeout <= 0 {
		cfg.MetadataTimeout = updater.DefaultMetadataTimeout
	}
	// Metadata requests are bounded whatever the roots (nil RootCAs: the system's); the
	// TUF client also puts MetadataTimeout on each request.
	tr := &http.Transport{Proxy: http.ProxyFromEnvironment, TLSClientConfig: &tls.Config{RootCAs: cfg.Roots, MinVersion: tls.VersionTLS12}}
	meta := &http.Client{Timeout: cfg.MetadataTimeout, Transport: tr}
	if dl.Client == nil && cfg.Roots != nil {
		// No overall timeout: a large target takes long; the Downloader's stall timeout bounds it.
		dl.Client = &http.Client{Transport: tr}
	}
	e, err := ReadEnrollment(cfg.Dir)
	if err != nil {
		return nil, err
	}
	st := &State{Dir: cfg.Dir, TPM: cfg.TPM}
	st.TUF, err = updater.NewTUF(updater.TUFConfig{MetadataDir: cfg.Dir.TUF(), MetadataURL: e.MetadataURL,
		TargetsURL: e.TargetsURL, HTTPClient: meta, MetadataTimeout: cfg.MetadataTimeout, Downloader: &dl,
		RootBackup: cfg.Dir.PinnedRoot(), NoDeltas: cfg.NoDeltas, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	if st.TPM == nil && e.TPM != "" {
		if st.TPM, err = attest.Open(ctx, e.TPM); err != nil {
			return nil, fmt.Errorf("open the TPM holding the floors (%s): %w", e.TPM, err)
		}
		st.ownTPM = true
		if l := st.TPM.Leftovers(); l.Objects+l.Sessions > 0 {
			cfg.Logger.Warn("flushed TPM objects and sessions a previous process left loaded", "tpm", e.TPM, "objects", l.Objects, "sessions", l.Sessions)
		}
	}
	rc := rollback.Config{Dir: string(cfg.Dir), Fetch: st.TUF.SlotFetcher(), Now: cfg.Now, Logger: cfg.Logger}
	if st.TPM != nil {
		rc.Floors = rollback.CounterFloors{
			artifact.KindModel:   st.TPM.Floor(string(artifact.KindModel)),
			artifact.KindRuntime: st.TPM.Floor(string(artifact.KindRuntime)),
		}
	}
	if st.Slots, err = rollback.Open(ctx, rc); err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

// Close closes the slots and the TPM it opened.
func (s *State) Close() {
	if s.Slots != nil {
		s.Slots.Close()
	}
	if s.TPM != nil && s.ownTPM {
		s.TPM.Close()
	}
}

// Install refreshes the TUF metadata, resolves the target path (verified custom
// metadata, anti-rollback) and installs it into kind's inactive slot. Call
// Slots.Recover first.
func (s *State) Install(ctx context.Context, kind artifact.Kind, path string) (rollback.State, error) {
	if err := s.TUF.Refresh(ctx); err != nil {
		return rollback.State{}, err
	}
	t, _, err := s.TUF.Resolve(ctx, kind, path)
	if err != nil {
		return rollback.State{}, err
	}
	return s.Slots.Install(ctx, kind, t)
}

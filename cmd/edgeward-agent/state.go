package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/rollback"
	"github.com/edgeward/edgeward/updater"
)

// agentConfig is written at enrollment into the state directory.
type agentConfig struct {
	MetadataURL string `json:"metadata_url"`
	TargetsURL  string `json:"targets_url,omitempty"`
	// TPM is the attest.Open URL of the TPM holding the anti-rollback floors
	// (/dev/tpmrm0, swtpm://host:port); empty means the sqlite mirror alone.
	TPM string `json:"tpm,omitempty"`
}

func readAgentConfig(stateDir string) (agentConfig, error) {
	var cfg agentConfig
	p := filepath.Join(stateDir, "agent.json")
	b, err := os.ReadFile(p)
	if err != nil {
		return cfg, fmt.Errorf("read %s (enroll first): %w", p, err)
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return cfg, fmt.Errorf("read %s: %w", p, err)
	}
	return cfg, nil
}

// agentState is what every command but enroll opens: the TUF client, the slots and,
// when configured, the TPM holding the floors.
type agentState struct {
	tuf   *updater.TUF
	slots *rollback.Manager
	tpm   *attest.TPM
}

func openState(ctx context.Context, stateDir string, dl *updater.Downloader, log *slog.Logger) (*agentState, error) {
	cfg, err := readAgentConfig(stateDir)
	if err != nil {
		return nil, err
	}
	st := &agentState{}
	st.tuf, err = updater.NewTUF(updater.TUFConfig{MetadataDir: filepath.Join(stateDir, "tuf"), MetadataURL: cfg.MetadataURL,
		TargetsURL: cfg.TargetsURL, Downloader: dl, RootBackup: filepath.Join(stateDir, "root.pinned")})
	if err != nil {
		return nil, err
	}
	rc := rollback.Config{Dir: stateDir, Fetch: st.tuf.SlotFetcher(), Logger: log}
	if cfg.TPM != "" {
		if st.tpm, err = attest.Open(ctx, cfg.TPM); err != nil {
			return nil, fmt.Errorf("open the TPM holding the floors: %w", err)
		}
		rc.Floors = rollback.CounterFloors{
			artifact.KindModel:   st.tpm.Floor(string(artifact.KindModel)),
			artifact.KindRuntime: st.tpm.Floor(string(artifact.KindRuntime)),
		}
	}
	if st.slots, err = rollback.Open(ctx, rc); err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

func (s *agentState) Close() {
	if s.slots != nil {
		s.slots.Close()
	}
	if s.tpm != nil {
		s.tpm.Close()
	}
}

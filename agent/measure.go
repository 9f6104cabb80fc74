// Package agent composes the device side of Edgeward: the TPM-attested link to the
// server's device API (an updater.Director and updater.Sender), the measurement log, and
// the trial judge that loads a new model into the runtime beside the serving one, probes
// it against its gates and commits only on pass. The agent's main loop is updater.Agent;
// cmd/edgeward-agent wires these parts to it.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/internal/durable"
	"github.com/edgeward/edgeward/internal/eventlog"
)

// MeasurementLog is the agent's measurement log: every artifact load is extended into
// the measurement PCR and appended here, durably, in the same order. The log is per
// boot of the TPM (the PCR is reset at boot); Open starts a new one when the stored log
// no longer replays to the PCR, and a log of compactAt events is compacted to the
// latest event of each artifact. Safe for concurrent use.
//
// The file is only what lets a restarted agent carry on with the same log in the same
// boot; quotes cover the log in memory, which follows the PCR at every step. So a file
// that cannot be written (a full disk) does not fail Open or Measure: the failure is
// kept (Unsaved), logged, and the next save writes the whole log again. A file left
// behind the PCR does not replay to it, and the next Open resets the PCR and starts a
// new log, as after a crash between an extend and its save.
type MeasurementLog struct {
	path string
	tpm  *attest.TPM
	pcr  int
	// Logger, if set, is told when the file could not be saved and when it is again.
	Logger  *slog.Logger
	mu      sync.Mutex
	log     eventlog.Log
	unsaved error // the last save's failure; nil once a save succeeds
}

// OpenMeasurementLog loads the log at path and keeps it if it replays to the TPM's
// current PCR value; otherwise (a new boot, a new TPM, a lost file) it resets the PCR
// (a software-resettable PCR: 16 or 23) and starts an empty log.
func OpenMeasurementLog(ctx context.Context, path string, tpm *attest.TPM, pcr int) (*MeasurementLog, error) {
	if pcr == 0 {
		pcr = eventlog.PCRDevelopment
	}
	m := &MeasurementLog{path: path, tpm: tpm, pcr: pcr}
	if err := durable.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("measurement log: %w", err)
	}
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("measurement log: %w", err)
	}
	if err == nil {
		if l, perr := eventlog.Parse(data); perr == nil {
			pcrs, rerr := tpm.ReadPCRs(ctx, pcr)
			if rerr != nil {
				return nil, rerr
			}
			if want, ok := l.Replay()[pcr]; ok && string(want[:]) == string(pcrs[pcr]) {
				m.log = l
				return m, nil
			}
		}
	}
	if err := tpm.ResetPCR(ctx, pcr); err != nil {
		return nil, fmt.Errorf("measurement log: reset PCR %d: %w", pcr, err)
	}
	m.saveLocked()
	return m, nil
}

// Measure extends the PCR with the artifact and appends it to the log, and saves the
// log (a failed save is kept, not returned: see MeasurementLog).
// plainSHA256hex is "" for a plaintext artifact; for an encrypted model it is the
// digest of the plaintext the runtime decrypted and loaded (sha256hex being the
// ciphertext's), so the quote covers both (issue 18).
func (m *MeasurementLog) Measure(ctx context.Context, kind, name, version, sha256hex, plainSHA256hex string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.log) >= compactAt {
		if err := m.compactLocked(ctx); err != nil {
			return err
		}
	}
	ev, err := m.tpm.Measure(ctx, eventlog.Event{PCR: m.pcr, Kind: kind, Name: name, Version: version, SHA256: sha256hex, PlainSHA256: plainSHA256hex})
	if err != nil {
		return fmt.Errorf("measure %s %s %s: %w", kind, name, version, err)
	}
	m.log = append(m.log, ev)
	m.saveLocked()
	return nil
}

// Unload records that nothing of kind and name runs any more: an unload event of the
// artifact the log last named as loaded, extended into the PCR like a load. Without
// it, a model whose trial failed on a device serving no earlier version stayed the
// log's latest, not expected by the server: quarantine at every check-in (found by an
// outside operator journey, 2 Dec). Nothing is done when the log names none.
func (m *MeasurementLog) Unload(ctx context.Context, kind, name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, ok := m.log.Latest()[[2]string{kind, name}]
	if !ok {
		return nil
	}
	if len(m.log) >= compactAt {
		if err := m.compactLocked(ctx); err != nil {
			return err
		}
	}
	ev, err := m.tpm.Measure(ctx, eventlog.Event{PCR: m.pcr, Kind: kind, Name: name, Version: a.Version, SHA256: a.SHA256, PlainSHA256: a.PlainSHA256, Unloaded: true})
	if err != nil {
		return fmt.Errorf("measure the unload of %s %s %s: %w", kind, name, a.Version, err)
	}
	m.log = append(m.log, ev)
	m.saveLocked()
	return nil
}

// Latest returns what the log says is loaded, per kind and name.
func (m *MeasurementLog) Latest() map[[2]string]eventlog.Artifact {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.log.Latest()
}

// compactAt is the length at which the log is compacted before the next event: a
// device that is never rebooted measures at every runtime restart, agent restart and
// trial, and a log past eventlog.MaxEvents is malformed to the verifier (an untrusted
// verdict, and quarantine).
const compactAt = 1024

// compactLocked replaces the log by the latest event of each artifact (kind and name),
// in the order of their last measurement, re-extended into the reset PCR: what is
// loaded is what the log says, as before, in a few events. m.log follows the PCR at
// every step, so a failure part way leaves a shorter log that still replays (and a
// crash, a log the next start finds not replaying, and resets).
func (m *MeasurementLog) compactLocked(ctx context.Context) error {
	var keep eventlog.Log
	seen := map[[2]string]bool{}
	for i := len(m.log) - 1; i >= 0; i-- {
		e := m.log[i]
		if k := [2]string{e.Kind, e.Name}; !seen[k] {
			seen[k] = true
			if !e.Unloaded { // unloaded last: nothing of it is loaded, nothing to keep
				keep = append(keep, e)
			}
		}
	}
	slices.Reverse(keep)
	if err := m.tpm.ResetPCR(ctx, m.pcr); err != nil {
		return fmt.Errorf("measurement log: compact: reset PCR %d: %w", m.pcr, err)
	}
	m.log = nil
	for _, e := range keep {
		ev, err := m.tpm.Measure(ctx, eventlog.Event{PCR: m.pcr, Kind: e.Kind, Name: e.Name, Version: e.Version, SHA256: e.SHA256, PlainSHA256: e.PlainSHA256})
		if err != nil {
			m.saveLocked()
			return fmt.Errorf("measurement log: compact: %w", err)
		}
		m.log = append(m.log, ev)
	}
	m.saveLocked()
	return nil
}

// Quote calls quote with a copy of the log while no measurement can happen, for a
// quote that covers exactly that log. (A measurement between reading the log and the
// quote, a runtime restarted by the supervisor meanwhile, made the quote cover an event
// the log lacked: an untrusted verdict, and quarantine, for a healthy device.)
func (m *MeasurementLog) Quote(quote func(log eventlog.Log) error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return quote(append(eventlog.Log(nil), m.log...))
}

// Log returns a copy of the log.
func (m *MeasurementLog) Log() eventlog.Log {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append(eventlog.Log(nil), m.log...)
}

// PCR is the measurement PCR.
func (m *MeasurementLog) PCR() int { return m.pcr }

// Unsaved is why the file is behind the log (the last save's failure), or nil.
func (m *MeasurementLog) Unsaved() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.unsaved
}

// saveLocked writes the whole log to the file, durably; a failure is kept in
// m.unsaved (see MeasurementLog), not returned.
func (m *MeasurementLog) saveLocked() {
	data, err := json.Marshal(m.log)
	if err == nil && m.log == nil {
		data = []byte("[]")
	}
	if err == nil {
		err = durable.WriteFile(m.path, data, 0o600)
	}
	switch {
	case err != nil:
		if m.Logger != nil && m.unsaved == nil {
			m.Logger.Warn("measurement log not saved: quotes cover the log in memory; a restart of the agent before it is saved starts a new log", "path", m.path, "events", len(m.log), "err", err)
		}
		m.unsaved = fmt.Errorf("measurement log: %w", err)
	case m.unsaved != nil:
		if m.Logger != nil {
			m.Logger.Info("measurement log saved again", "path", m.path, "events", len(m.log))
		}
		m.unsaved = nil
	}
}

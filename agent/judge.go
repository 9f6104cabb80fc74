package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/rollback"
	"github.com/edgeward/edgeward/runtime"
	"github.com/edgeward/edgeward/updater"
)

// maxProbeBytes bounds a probe set read from disk (it was verified by TUF already).
const maxProbeBytes = 64 << 20

// RuntimeJudge runs the trial of a model version: it fetches the model's probe set
// through TUF, loads the version into the runtime beside the serving one (measuring the
// bytes the runtime actually loaded), probes it against the gates of its TUF metadata,
// and promotes it only if every gate holds; otherwise it unloads it and the slot rolls
// back. It implements updater.Judge.
type RuntimeJudge struct {
	Runtime *runtime.Client
	TUF     *updater.TUF
	Log     *MeasurementLog
	// WorkDir holds downloaded probe sets.
	WorkDir string
	Logger  *slog.Logger
}

// Judge implements updater.Judge.
func (j *RuntimeJudge) Judge(ctx context.Context, kind artifact.Kind, payload string, t rollback.Target, meta artifact.Meta) (bool, string) {
	if kind != artifact.KindModel {
		// A runtime trial starts the new runtime binary from its slot beside the serving
		// one and switches traffic (runtime/README.md); the agent does not do that yet,
		// so a runtime update never commits. Fail closed, with the reason in the report.
		return false, "runtime trials are not supported by this agent yet"
	}
	_, name, _, err := artifact.ParseTargetPath(t.Path)
	if err != nil {
		return false, err.Error()
	}
	var ps *runtime.ProbeSet
	if meta.Probe != "" {
		if ps, err = j.probeSet(ctx, meta.Probe); err != nil {
			return false, "probe set: " + err.Error()
		}
	} else if meta.Gates != nil {
		return false, "the target has gates but no probe set"
	}
	old := j.serving(ctx, name)
	info, rep, err := j.Runtime.Trial(ctx, runtime.LoadRequest{Name: name, Version: t.Version, Path: payload, SHA256: t.SHA256}, ps, meta.Gates)
	if err != nil {
		return false, "trial: " + err.Error()
	}
	if err := j.Log.Measure(ctx, string(kind), name, t.Version, info.SHA256); err != nil {
		j.Runtime.Abort(ctx, name, t.Version)
		return false, err.Error()
	}
	if ps != nil && !rep.Pass {
		if err := j.Runtime.Abort(ctx, name, t.Version); err != nil && j.Logger != nil {
			j.Logger.Warn("unload failed trial", "model", name, "version", t.Version, "err", err)
		}
		j.remeasureServing(ctx, name)
		return false, fmt.Sprintf("probe failed: %s (accuracy %.4f, p99 %.2f ms)", strings.Join(rep.Failures, "; "), rep.Accuracy, rep.P99Ms)
	}
	if err := j.Runtime.Promote(ctx, name, t.Version, old); err != nil {
		return false, "promote: " + err.Error()
	}
	if j.Logger != nil {
		j.Logger.Info("trial passed", "model", name, "version", t.Version, "accuracy", rep.Accuracy, "p99_ms", rep.P99Ms)
	}
	return true, ""
}

// remeasureServing records that the serving version of name is again what runs, after
// a failed trial loaded (and measured) another one beside it: the log's latest entry
// for the model must be what the device serves. The digest is the runtime's, of the
// bytes its session was created from.
func (j *RuntimeJudge) remeasureServing(ctx context.Context, name string) {
	idx, err := j.Runtime.Index(ctx)
	if err != nil {
		return
	}
	for _, e := range idx {
		if e.Name == name && e.Default && e.SHA256 != "" {
			if err := j.Log.Measure(ctx, string(artifact.KindModel), name, e.Version, e.SHA256); err != nil && j.Logger != nil {
				j.Logger.Warn("re-measure serving model", "model", name, "err", err)
			}
			return
		}
	}
}

// serving returns the version of name the runtime serves by default ("" if none).
func (j *RuntimeJudge) serving(ctx context.Context, name string) string {
	idx, err := j.Runtime.Index(ctx)
	if err != nil {
		return ""
	}
	for _, e := range idx {
		if e.Name == name && e.Default {
			return e.Version
		}
	}
	return ""
}

func (j *RuntimeJudge) probeSet(ctx context.Context, path string) (*runtime.ProbeSet, error) {
	tf, err := j.TUF.Target(ctx, path)
	if err != nil {
		return nil, err
	}
	dst := filepath.Join(j.WorkDir, "probes", strings.ReplaceAll(path, "/", "_"))
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return nil, err
	}
	if _, err := j.TUF.Download(ctx, tf, dst); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(dst)
	if err != nil {
		return nil, err
	}
	if len(data) > maxProbeBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxProbeBytes)
	}
	var ps runtime.ProbeSet
	if err := json.Unmarshal(data, &ps); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &ps, nil
}

// LoadCommitted loads the committed model of the slots into the runtime (at agent start:
// the runtime process is new) and measures each, so the next quote covers what runs.
func (j *RuntimeJudge) LoadCommitted(ctx context.Context, slots *rollback.Manager) error {
	st, err := slots.State(ctx, artifact.KindModel)
	if err != nil {
		return err
	}
	if st.Active == "" || st.Current == nil {
		return nil
	}
	cur := st.Current
	_, name, _, err := artifact.ParseTargetPath(cur.Path)
	if err != nil {
		return err
	}
	payload := slots.Payload(artifact.KindModel, st.Active)
	info, err := j.Runtime.Load(ctx, runtime.LoadRequest{Name: name, Version: cur.Version, Path: payload, SHA256: cur.SHA256, Default: true})
	if err != nil && !runtime.IsConflict(err) {
		return fmt.Errorf("load committed %s %s: %w", name, cur.Version, err)
	}
	sum := info.SHA256
	if sum == "" {
		sum = cur.SHA256
	}
	return j.Log.Measure(ctx, string(artifact.KindModel), name, cur.Version, sum)
}

package agent

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/keywrap"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/rollback"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
	"github.com/edgeward/edgeward/updater"
)

// maxProbeBytes bounds a probe set read from disk (it was verified by TUF already).
const maxProbeBytes = 64 << 20

// RuntimeJudge runs trials. It implements updater.Judge and updater.Outcome.
//
// A model trial fetches the model's probe set through TUF, loads the version into the
// runtime beside the serving one (measuring the bytes the runtime actually loaded) and
// probes it against the gates of its TUF metadata; the version serves only once the
// slot committed it (Committed: atomic default switch), otherwise it is unloaded and the
// serving version is measured again.
//
// A runtime trial (with Runtimes set) starts a new runtime process from the runtime
// slot's ONNX Runtime library with --hold beside the serving process, loads the
// committed model into it and probes that model with its probe set and gates; on commit
// the new process takes the public socket and the old one drains (Committed), and the
// runtime and the model it loaded are measured. Without Runtimes a runtime trial fails
// closed.
type RuntimeJudge struct {
	// Runtime is the runtime's control API when Runtimes is nil (a runtime the agent
	// does not supervise).
	Runtime *runtimeapi.Client
	// Runtimes, if set, supervises the runtime processes; the judge then talks to the
	// current one and can run runtime trials.
	Runtimes *Runtimes
	// Slots are read by runtime trials (the committed model to probe). Required with
	// Runtimes.
	Slots *rollback.Manager
	TUF   *updater.TUF
	Log   *MeasurementLog
	// WorkDir holds downloaded probe sets.
	WorkDir string
	Logger  *slog.Logger
	// Decrypter, if set, is the device's TPM decryption key, which unwraps the content
	// keys of encrypted models (issue 18). nil: an encrypted model fails its trial.
	Decrypter Decrypter

	mu      sync.Mutex
	old     map[string]string // model name → the version serving when its trial passed
	rekey   map[string]rekeyed
	pending *RuntimeProc // the runtime process whose trial passed, until Committed
}

// rc is the control API of the serving runtime.
func (j *RuntimeJudge) rc() *runtimeapi.Client {
	if j.Runtimes != nil {
		if p := j.Runtimes.Current(); p != nil {
			return p.Client
		}
		// None serves: it died and the supervisor is restarting it. Calls fail (they
		// must not dereference nothing), and a trial they fail is retried.
		return &runtimeapi.Client{BaseURL: "http://runtime", HTTPClient: &http.Client{Transport: downTransport{}}}
	}
	return j.Runtime
}

// ErrNoServingRuntime is the error of every control call while the supervised runtime is
// down (it died and is being restarted). It wraps ECONNREFUSED, so a trial it fails is
// an infrastructure failure (updater.Transient): retried once the runtime is back.
var ErrNoServingRuntime = fmt.Errorf("no serving runtime: it died and is being restarted: %w", syscall.ECONNREFUSED)

// downTransport fails every request with ErrNoServingRuntime.
type downTransport struct{}

func (downTransport) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, ErrNoServingRuntime
}

func (j *RuntimeJudge) logger() *slog.Logger {
	if j.Logger != nil {
		return j.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// probeFigures is what goes into the install report of a probe run.
func probeFigures(rep runtimeapi.ProbeReport) wire.Probe {
	return wire.Probe{Accuracy: rep.Accuracy, P99Ms: rep.P99Ms, PeakRSSMB: rep.PeakRSSMB}
}

func fail(reason string) updater.Verdict { return updater.Verdict{Reason: reason} }

// Judge implements updater.Judge. A model is probed against tr.Gates (the stricter of
// its signed gates and its rollout's).
func (j *RuntimeJudge) Judge(ctx context.Context, tr updater.Trial) updater.Verdict {
	kind, t, meta := tr.Kind, tr.Target, tr.Meta
	if kind == artifact.KindRuntime {
		return j.judgeRuntime(ctx, tr.Payload, t, tr.Gates)
	}
	if kind != artifact.KindModel {
		return fail(fmt.Sprintf("no trial for a %s", kind))
	}
	_, name, _, err := artifact.ParseTargetPath(t.Path)
	if err != nil {
		return fail(err.Error())
	}
	var ps *runtimeapi.ProbeSet
	if meta.Probe != "" {
		if ps, err = j.probeSet(ctx, tr.TUF, meta.Probe, tr.ProbeKey, tr.Payload); err != nil {
			if errors.Is(err, updater.ErrNoContentKey) || errors.Is(err, updater.ErrContentKeyUnusable) {
				// Withheld now, maybe released later, or released but not opening: not
				// the version's fault.
				return updater.Verdict{Reason: "probe set: " + err.Error(), Err: err}
			}
			return fail("probe set: " + err.Error())
		}
	} else if tr.Gates != nil {
		return fail("the trial has gates but the target has no probe set")
	}
	if meta.Encryption != nil {
		// The key is kept with the slot before the model is tried, so that a restart
		// after the commit can serve it without the server.
		if tr.ContentKey == nil {
			return fail(updater.ErrNoContentKey.Error())
		}
		if err := storeKey(tr.Payload, t, *meta.Encryption, *tr.ContentKey); err != nil {
			return fail(err.Error())
		}
	}
	load, err := j.loadRequest(ctx, name, t.Version, tr.Payload, t.SHA256, false)
	if errors.Is(err, updater.ErrContentKeyUnusable) {
		// The key released does not open: the release's fault, retried with a later one.
		return updater.Verdict{Reason: err.Error(), Err: err}
	}
	if err != nil {
		return fail(err.Error())
	}
	if meta.Encryption != nil && load.Key == nil {
		return fail("encrypted model: its content key was not kept")
	}
	rc := j.rc()
	old := serving(ctx, rc, name)
	if meta.Encryption != nil && old == t.Version {
		// The version that serves, re-encrypted under a new content key (issue 18,
		// wire.ReasonRekey): the same plaintext, so nothing is loaded beside it.
		return j.judgeRekey(ctx, rc, name, tr, load)
	}
	deaths := 0
	if j.Runtimes != nil {
		ended := j.Runtimes.TrialStarted()
		deaths = j.Runtimes.Health().Deaths
		defer ended()
	}
	info, rep, err := rc.Trial(ctx, load, ps, tr.Gates)
	clear(load.Key)
	if err != nil {
		if j.Runtimes != nil && j.waitDeath(ctx, deaths) {
			// The runtime died while it loaded or probed the candidate: retried once
			// (the device may have been short of memory for another reason), then
			// the version's fault (updater.ErrDiedInTrial).
			err = fmt.Errorf("%w: %w", updater.ErrDiedInTrial, err)
		}
		// A runtime that refuses or drops the connection is not the model's fault.
		return updater.Verdict{Reason: "trial: " + err.Error(), Err: err}
	}
	// For an encrypted model the runtime checked the plaintext against its signed
	// hash and reports both digests: the ciphertext's (the target the device verified
	// and holds) and the plaintext's it created the session from. Both are measured.
	var figures wire.Probe
	if ps != nil {
		figures = probeFigures(rep)
	}
	if meta.Encryption != nil && info.PlainSHA256 != meta.Encryption.PlainSHA256 {
		rc.Abort(ctx, name, t.Version)
		j.remeasureServing(ctx, rc, name)
		return fail(fmt.Sprintf("encrypted model: the runtime loaded plaintext %q, the signed metadata says %s", info.PlainSHA256, meta.Encryption.PlainSHA256))
	}
	if err := j.Log.Measure(ctx, string(kind), name, t.Version, info.SHA256, info.PlainSHA256); err != nil {
		rc.Abort(ctx, name, t.Version)
		// The PCR (and the log in memory) may hold the trial version already (the
		// extend succeeded, saving the log did not): measure what serves again, or the
		// log would name the aborted version as loaded (an artifact mismatch, and
		// quarantine, at the next check-in).
		j.remeasureServing(ctx, rc, name)
		return updater.Verdict{Reason: err.Error(), Probe: figures}
	}
	if ps != nil && !rep.Pass {
		if err := rc.Abort(ctx, name, t.Version); err != nil {
			j.logger().Warn("unload failed trial", "model", name, "version", t.Version, "err", err)
		}
		j.remeasureServing(ctx, rc, name)
		return updater.Verdict{Probe: figures,
			Reason: fmt.Sprintf("probe failed: %s (accuracy %.4f, p99 %.2f ms)", strings.Join(rep.Failures, "; "), rep.Accuracy, rep.P99Ms)}
	}
	j.mu.Lock()
	if j.old == nil {
		j.old = map[string]string{}
	}
	j.old[name] = old
	j.mu.Unlock()
	j.logger().Info("trial passed", "model", name, "version", t.Version, "accuracy", rep.Accuracy, "p99_ms", rep.P99Ms, "peak_rss_mb", rep.PeakRSSMB)
	return updater.Verdict{Pass: true, Probe: figures}
}

// waitDeath reports whether the serving runtime died since its death count was
// before, waiting a moment for the supervision to see an exit that broke the trial's
// connection.
func (j *RuntimeJudge) waitDeath(ctx context.Context, before int) bool {
	for i := 0; i < 20; i++ {
		if j.Runtimes.Health().Deaths > before {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
	return false
}

// Committed implements updater.Outcome: the committed version starts serving.
func (j *RuntimeJudge) Committed(ctx context.Context, kind artifact.Kind, t rollback.Target, _ artifact.Meta) error {
	_, name, _, err := artifact.ParseTargetPath(t.Path)
	if err != nil {
		return err
	}
	if kind == artifact.KindRuntime {
		return j.promoteRuntime(ctx, name, t)
	}
	j.mu.Lock()
	old := j.old[name]
	delete(j.old, name)
	rekey, isRekey := j.rekey[name]
	delete(j.rekey, name)
	j.mu.Unlock()
	if isRekey && rekey.target == t {
		// The serving session is the same plaintext: only the measurement changes, to
		// the ciphertext the slot now holds (a restart loads it with its new key).
		return j.Log.Measure(ctx, string(artifact.KindModel), name, t.Version, t.SHA256, rekey.plain)
	}
	if err := j.rc().Promote(ctx, name, t.Version, old); err != nil {
		return fmt.Errorf("promote %s %s: %w", name, t.Version, err)
	}
	return nil
}

// RolledBack implements updater.Outcome: whatever the trial left is undone, and what
// serves is measured again.
func (j *RuntimeJudge) RolledBack(ctx context.Context, kind artifact.Kind, t rollback.Target, _ artifact.Meta) error {
	_, name, _, err := artifact.ParseTargetPath(t.Path)
	if err != nil {
		return err
	}
	if kind == artifact.KindRuntime {
		j.mu.Lock()
		p := j.pending
		j.pending = nil
		j.mu.Unlock()
		if p != nil && j.Runtimes != nil {
			j.Runtimes.Stop(p)
		}
		return nil
	}
	j.mu.Lock()
	delete(j.old, name)
	delete(j.rekey, name)
	j.mu.Unlock()
	rc := j.rc()
	if !loaded(ctx, rc, name, t.Version) {
		return nil // the failed trial cleaned up already
	}
	if serving(ctx, rc, name) == t.Version {
		// A re-encrypted copy of the serving version (judgeRekey) loads nothing: what
		// is loaded is the committed one, which keeps serving.
		return nil
	}
	if err := rc.Abort(ctx, name, t.Version); err != nil {
		return err
	}
	j.remeasureServing(ctx, rc, name)
	return nil
}

// judgeRuntime starts the staged runtime with --hold and probes the committed model in
// it, against the stricter of the model's signed gates and gates (the runtime
// rollout's).
func (j *RuntimeJudge) judgeRuntime(ctx context.Context, payload string, t rollback.Target, gates *artifact.Gates) updater.Verdict {
	if j.Runtimes == nil || j.Slots == nil {
		return fail(errNoRuntimes.Error())
	}
	lib, err := SealLibrary(payload)
	if err != nil {
		return fail("start the new runtime: " + err.Error())
	}
	defer lib.Close()
	if lib.SHA256 != t.SHA256 {
		return fail(fmt.Sprintf("runtime library sha256 %s, TUF says %s", lib.SHA256, t.SHA256))
	}
	p, err := j.Runtimes.Start(ctx, lib, true)
	if errors.Is(err, ErrRuntimeKilled) {
		return updater.Verdict{Reason: "start the new runtime: " + err.Error(), Err: err}
	}
	if err != nil {
		return fail("start the new runtime: " + err.Error())
	}
	var figures wire.Probe
	fail := func(reason string) updater.Verdict {
		v := updater.Verdict{Reason: reason, Probe: figures}
		if p.killed() { // by SIGKILL, from outside: not judged
			v.Err = ErrRuntimeKilled
		}
		j.Runtimes.Stop(p)
		return v
	}
	// A call the runtime did not answer (EOF, reset) may be its death: the connection
	// breaks before the process is reaped, so wait a moment for its exit status before
	// judging who ended it.
	failCall := func(reason string) updater.Verdict {
		p.awaitExit(runtimeReapWait)
		return fail(reason)
	}
	st, err := j.Slots.State(ctx, artifact.KindModel)
	if err != nil {
		return fail(err.Error())
	}
	if st.Current == nil {
		j.keepPending(p)
		return updater.Verdict{Pass: true} // nothing to probe: the process started and answers
	}
	cur := st.Current
	_, name, _, err := artifact.ParseTargetPath(cur.Path)
	if err != nil {
		return fail(err.Error())
	}
	load, err := j.loadRequest(ctx, name, cur.Version, j.Slots.Payload(artifact.KindModel, st.Active), cur.SHA256, true)
	if err != nil {
		return fail(fmt.Sprintf("load model %s %s into the new runtime: %v", name, cur.Version, err))
	}
	_, err = p.Client.Load(ctx, load)
	clear(load.Key)
	if err != nil {
		return failCall(fmt.Sprintf("load model %s %s into the new runtime: %v", name, cur.Version, err))
	}
	_, meta, err := j.TUF.Resolve(ctx, artifact.KindModel, cur.Path)
	if err != nil {
		return fail("model metadata: " + err.Error())
	}
	if meta.Probe != "" {
		ps, err := j.probeSet(ctx, nil, meta.Probe, nil, j.Slots.Payload(artifact.KindModel, st.Active))
		if err != nil {
			return fail("probe set: " + err.Error())
		}
		rep, err := p.Client.Probe(ctx, name, cur.Version, ps, artifact.CommitGates(meta.Gates, gates))
		if err != nil {
			return failCall("probe: " + err.Error())
		}
		figures = probeFigures(rep)
		if !rep.Pass {
			return fail(fmt.Sprintf("probe of %s %s in the new runtime failed: %s (accuracy %.4f, p99 %.2f ms)",
				name, cur.Version, strings.Join(rep.Failures, "; "), rep.Accuracy, rep.P99Ms))
		}
		j.logger().Info("runtime trial passed", "runtime", t.Path, "model", name, "accuracy", rep.Accuracy, "p99_ms", rep.P99Ms)
	} else if gates != nil {
		return fail(fmt.Sprintf("the runtime rollout has gates but model %s %s has no probe set", name, cur.Version))
	}
	j.keepPending(p)
	return updater.Verdict{Pass: true, Probe: figures}
}

// keepPending holds p, whose trial passed, until Committed or RolledBack.
func (j *RuntimeJudge) keepPending(p *RuntimeProc) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.pending != nil {
		go j.Runtimes.Stop(j.pending)
	}
	j.pending = p
}

// promoteRuntime switches traffic to the runtime whose trial passed and measures it
// (with the models it loaded). When there is no such process to switch to (the agent
// restarted since the trial, or this is a retry after a failed switch) or it cannot take
// traffic, the process is stopped and the committed runtime is started afresh from its
// slot, as at agent start (LoadCommitted): a commit never leaves a held process behind,
// nor a device that cannot serve what it committed.
func (j *RuntimeJudge) promoteRuntime(ctx context.Context, name string, t rollback.Target) error {
	j.mu.Lock()
	p := j.pending
	j.pending = nil
	j.mu.Unlock()
	if j.Runtimes == nil {
		return fmt.Errorf("runtime %s committed without a supervised runtime", t.Version)
	}
	if p != nil {
		err := j.Runtimes.Serve(ctx, p)
		if err == nil {
			if err := j.Log.Measure(ctx, string(artifact.KindRuntime), name, t.Version, p.SHA256, ""); err != nil {
				return err
			}
			return j.measureLoaded(ctx, p.Client)
		}
		j.logger().Warn("the runtime whose trial passed cannot take traffic: starting the committed runtime afresh",
			"runtime", name, "version", t.Version, "err", err)
		j.Runtimes.Stop(p)
	}
	if j.Slots == nil {
		return fmt.Errorf("runtime %s committed: no slots to start it from", t.Version)
	}
	return j.LoadCommitted(ctx, j.Slots)
}

// measureLoaded measures the default version of every model a runtime has loaded.
func (j *RuntimeJudge) measureLoaded(ctx context.Context, rc *runtimeapi.Client) error {
	idx, err := rc.Index(ctx)
	if err != nil {
		return err
	}
	serving := map[string]bool{}
	for _, e := range idx {
		if e.Default && e.SHA256 != "" {
			serving[e.Name] = true
			if err := j.Log.Measure(ctx, string(artifact.KindModel), e.Name, e.Version, e.SHA256, e.PlainSHA256); err != nil {
				return err
			}
		}
	}
	// A model the log (kept across agent restarts in one boot) names as loaded that
	// this runtime does not serve: a trial the agent did not live to undo.
	for k := range j.Log.Latest() {
		if k[0] == string(artifact.KindModel) && !serving[k[1]] {
			if err := j.Log.Unload(ctx, k[0], k[1]); err != nil {
				return err
			}
		}
	}
	return nil
}

// remeasureServing records that the serving version of name is again what runs, after
// a failed trial loaded (and measured) another one beside it: the log's latest entry
// for the model must be what the device serves. The digest is the runtime's, of the
// bytes its session was created from.
func (j *RuntimeJudge) remeasureServing(ctx context.Context, rc *runtimeapi.Client, name string) {
	idx, err := rc.Index(ctx)
	if err != nil {
		return
	}
	for _, e := range idx {
		if e.Name == name && e.Default && e.SHA256 != "" {
			if err := j.Log.Measure(ctx, string(artifact.KindModel), name, e.Version, e.SHA256, e.PlainSHA256); err != nil {
				j.logger().Warn("re-measure serving model", "model", name, "err", err)
			}
			return
		}
	}
	// Nothing serves it (its first version failed its trial): the log says so.
	if err := j.Log.Unload(ctx, string(artifact.KindModel), name); err != nil {
		j.logger().Warn("measure the unload of a failed trial", "model", name, "err", err)
	}
}

// serving returns the version of name the runtime serves by default ("" if none).
func serving(ctx context.Context, rc *runtimeapi.Client, name string) string {
	idx, err := rc.Index(ctx)
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

func loaded(ctx context.Context, rc *runtimeapi.Client, name, version string) bool {
	idx, err := rc.Index(ctx)
	if err != nil {
		return false
	}
	for _, e := range idx {
		if e.Name == name && e.Version == version {
			return true
		}
	}
	return false
}

// probeSet downloads and parses the probe set at path. An encrypted probe set (issue
// 18) is kept as its ciphertext and decrypted in memory with its content key: wrapped
// (from the decision that offered the model) and then kept beside the model's slot
// payload, or, when wrapped is nil, the one kept there at the model's trial (a runtime
// update probes the committed model again without the server).
func (j *RuntimeJudge) probeSet(ctx context.Context, tuf *updater.TUF, path string, wrapped *keywrap.Wrapped, payload string) (*runtimeapi.ProbeSet, error) {
	if tuf == nil {
		tuf = j.TUF // the trial's client when it says (an offline bundle's), else the online one
	}
	tf, err := tuf.Target(ctx, path)
	if err != nil {
		return nil, err
	}
	dst := filepath.Join(j.WorkDir, "probes", strings.ReplaceAll(path, "/", "_"))
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return nil, err
	}
	_, err = tuf.Download(ctx, tf, dst)
	pruneProbes(filepath.Dir(dst), dst, keptProbeSets, j.logger())
	if err != nil {
		return nil, err
	}
	var enc *artifact.Encryption
	if tf.Custom != nil {
		var m artifact.Meta
		if err := json.Unmarshal(*tf.Custom, &m); err == nil {
			enc = m.Encryption
		}
	}
	var data []byte
	if enc != nil {
		data, err = j.decryptProbeSet(ctx, path, hex.EncodeToString(tf.Hashes["sha256"]), *enc, dst, wrapped, payload)
		defer clear(data)
	} else {
		data, err = os.ReadFile(dst)
	}
	if err != nil {
		return nil, err
	}
	if len(data) > maxProbeBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxProbeBytes)
	}
	var ps runtimeapi.ProbeSet
	if err := json.Unmarshal(data, &ps); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &ps, nil
}

// LoadCommitted starts what the slots committed, at agent start, and measures it from
// the bytes on disk, so the next quote covers what runs. With Runtimes it first starts
// the runtime process: from the committed runtime slot's library, or the default
// library when none is committed. Then it loads the committed model.
//
// An artifact whose bytes on disk no longer match what was committed (changed after
// its commit) is measured as found — the server will not trust the quote and quarantines
// the device — and is not started: a changed runtime library is replaced by the default
// one, a changed model is not served. The agent keeps running so that it reports.
func (j *RuntimeJudge) LoadCommitted(ctx context.Context, slots *rollback.Manager) error {
	if j.Runtimes != nil {
		if err := j.startCommittedRuntime(ctx, slots); err != nil {
			return err
		}
	}
	st, err := slots.State(ctx, artifact.KindModel)
	if err != nil {
		return err
	}
	if st.Active == "" || st.Current == nil {
		// No model is committed. A model the log (kept across agent restarts in one
		// boot) names as loaded was a trial the agent did not live to undo: the log
		// says what the runtime serves now, and that nothing else runs. A runtime the
		// agent does not start (--runtime-control) outlives the agent and may still
		// serve that trial: it is measured then, not hidden (the server does not expect
		// it, and says so). A runtime not answering yet fails nothing here, as before.
		if err := j.measureLoaded(ctx, j.rc()); err != nil {
			j.logger().Warn("nothing is committed, and what the runtime serves could not be measured", "err", err)
		}
		return nil
	}
	cur := st.Current
	_, name, _, err := artifact.ParseTargetPath(cur.Path)
	if err != nil {
		return err
	}
	payload := slots.Payload(artifact.KindModel, st.Active)
	sum, err := artifact.FileSHA256(payload)
	if err != nil {
		return fmt.Errorf("committed model %s %s: %w", name, cur.Version, err)
	}
	if sum != cur.SHA256 {
		j.logger().Error("the committed model changed on disk since its commit: measured as found, not served",
			"model", name, "version", cur.Version, "sha256", sum, "committed", cur.SHA256)
		// Not decrypted: no plaintext hash is claimed for what was not loaded.
		return j.Log.Measure(ctx, string(artifact.KindModel), name, cur.Version, sum, "")
	}
	load, err := j.loadRequest(ctx, name, cur.Version, payload, cur.SHA256, true)
	if err != nil {
		return fmt.Errorf("load committed %s %s: %w", name, cur.Version, err)
	}
	info, err := j.rc().Load(ctx, load)
	clear(load.Key)
	if err != nil && !runtimeapi.IsConflict(err) {
		return fmt.Errorf("load committed %s %s: %w", name, cur.Version, err)
	}
	plain := ""
	if info.SHA256 != "" {
		sum, plain = info.SHA256, info.PlainSHA256
	} else if load.Key != nil {
		// Already loaded (a conflict): the runtime checked its plaintext against the
		// signed hash then, so that is what it serves.
		plain = load.SHA256
	}
	return j.Log.Measure(ctx, string(artifact.KindModel), name, cur.Version, sum, plain)
}

func (j *RuntimeJudge) startCommittedRuntime(ctx context.Context, slots *rollback.Manager) error {
	st, err := slots.State(ctx, artifact.KindRuntime)
	if err != nil {
		return err
	}
	if st.Active == "" || st.Current == nil {
		_, err := j.Runtimes.Start(ctx, nil, false)
		return err
	}
	cur := st.Current
	_, name, _, err := artifact.ParseTargetPath(cur.Path)
	if err != nil {
		return err
	}
	lib, err := SealLibrary(slots.Payload(artifact.KindRuntime, st.Active))
	if err != nil {
		return fmt.Errorf("committed runtime %s %s: %w", name, cur.Version, err)
	}
	defer lib.Close()
	if err := j.Log.Measure(ctx, string(artifact.KindRuntime), name, cur.Version, lib.SHA256, ""); err != nil {
		return err
	}
	start := lib
	if lib.SHA256 != cur.SHA256 {
		j.logger().Error("the committed runtime library changed on disk since its commit: measured as found, default library started",
			"runtime", name, "version", cur.Version, "sha256", lib.SHA256, "committed", cur.SHA256)
		start = nil
	}
	_, err = j.Runtimes.Start(ctx, start, false)
	return err
}

// DriftAttrs summarises, for the check-in, how the inputs the serving models received
// compare with their training baselines: per model, the rows seen, the features that
// drifted and the largest mean shift (in baseline standard deviations). Models without
// a baseline or without traffic are left out.
func (j *RuntimeJudge) DriftAttrs(ctx context.Context) map[string]any {
	rc := j.rc()
	if rc == nil {
		return nil
	}
	idx, err := rc.Index(ctx)
	if err != nil {
		return nil
	}
	out := map[string]any{}
	for _, e := range idx {
		if !e.Default {
			continue
		}
		rep, err := rc.Drift(ctx, e.Name, "")
		if err != nil || rep.Rows == 0 {
			continue
		}
		maxShift := 0.0
		for _, f := range rep.Features {
			maxShift = max(maxShift, math.Abs(f.MeanShift))
		}
		out[e.Name] = map[string]any{"version": rep.Version, "rows": rep.Rows, "drifted": rep.Drifted, "max_mean_shift": math.Round(maxShift*1000) / 1000}
	}
	if len(out) == 0 {
		return nil
	}
	return map[string]any{"drift": out}
}

// keptProbeSets is how many probe set files the probes directory keeps: the one just
// used and the most recently used others (the committed model's, which a runtime
// update probes again without the server). Each is at most maxProbeBytes.
const keptProbeSets = 4

// pruneProbes bounds the probes directory: every probe set ever tried, and the partial
// download of every one that failed, used to stay there for good, filling the disk the
// slots and the state share. It keeps keep (marked used now, with its partial download
// if it has one) and the n-1 most recently used other probe sets, and removes the rest,
// other sets' partial downloads included.
func pruneProbes(dir, keep string, n int, log *slog.Logger) {
	now := time.Now()
	if err := os.Chtimes(keep, now, now); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Warn("probe sets", "err", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	type file struct {
		path string
		at   time.Time
	}
	var files []file
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if p == keep || strings.HasPrefix(p, keep+".") {
			continue // it, or its partial download to resume
		}
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
			files = append(files, file{p, fi.ModTime()})
		}
	}
	sort.Slice(files, func(a, b int) bool { return files[a].at.After(files[b].at) })
	kept := 1 // keep
	for _, f := range files {
		partial := strings.HasSuffix(f.path, ".part") || strings.HasSuffix(f.path, ".state")
		if !partial && kept < n {
			kept++
			continue
		}
		if err := os.Remove(f.path); err != nil {
			log.Warn("probe sets", "remove", f.path, "err", err)
		}
	}
}

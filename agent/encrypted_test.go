package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/audit"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repository"
	"github.com/edgeward/edgeward/runtime"
	"github.com/edgeward/edgeward/runtime/modelgen"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
	"github.com/edgeward/edgeward/updater"
)

// plaintextRuns are byte runs of the plaintext model to search the device for: 48 bytes
// from each quarter of it (weights, mostly).
func plaintextRuns(t *testing.T, version string) [][]byte {
	t.Helper()
	m, err := modelgen.Model(version)
	if err != nil {
		t.Fatal(err)
	}
	again, err := modelgen.Model(version)
	if err != nil {
		t.Fatal(err)
	}
	var runs [][]byte
	for _, at := range []int{len(m) / 4, len(m) / 2, 3 * len(m) / 4} {
		// The published model is another call's bytes: the runs must be in it too.
		if !bytes.Contains(again, m[at:at+48]) {
			t.Fatalf("modelgen.Model(%s) is not deterministic: the plaintext search would find nothing", version)
		}
		runs = append(runs, m[at:at+48])
	}
	return runs
}

// findPlaintext returns the files under the roots that hold any of the runs.
func findPlaintext(t *testing.T, runs [][]byte, roots ...string) []string {
	t.Helper()
	var found []string
	for _, root := range roots {
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return nil
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return nil
			}
			for _, r := range runs {
				if bytes.Contains(b, r) {
					found = append(found, p)
					break
				}
			}
			return nil
		})
	}
	return found
}

// TestEncryptedModelStory (issue 18): an encrypted model rolls out to a device whose TPM
// certified its decryption key. The server releases the content key wrapped to that
// key, and audits it; the device installs the ciphertext, the runtime decrypts it into
// memory, probes and serves it, and no plaintext is ever written to the device's state
// directory or temporary directories, neither then nor after a restart that serves the
// committed model again without the server. A quarantined device gets no key, and its
// install fails closed with the reason.
func TestEncryptedModelStory(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp) // the runtime's and the agent's temporary files land here
	r := newStoryRig(t, true)
	ctx := context.Background()
	runs := plaintextRuns(t, "1.0.0")

	if err := r.ag.Step(ctx); err != nil {
		t.Fatalf("step: %v", err)
	}
	if v := r.committed(); v != "1.0.0" {
		t.Fatalf("committed = %q; want 1.0.0 (encrypted)", v)
	}
	last := r.link.Last()
	if !last.Trusted {
		t.Fatalf("device untrusted after the encrypted install: %v", last.Reasons)
	}
	reps, _ := r.store.Reports(ctx, fleet.ReportFilter{})
	if len(reps) != 1 || reps[0].Outcome != wire.OutcomeCommitted || reps[0].Probe.Accuracy < 0.85 {
		t.Fatalf("reports = %+v; want one committed report, probed", reps)
	}
	in := []runtime.Input{runtime.NewInput("x", runtimeapi.FP32, []int64{1, 4}, []float64{0.1, 0.2, 0.1, 0.3})}
	if _, err := r.rt.Infer(ctx, "vibration-anomaly", "", in, nil); err != nil {
		t.Fatalf("inference on the encrypted model: %v", err)
	}
	// The release was audited, naming the device and the target.
	l, err := r.srv.AuditLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := l.Records(ctx, audit.Query{Kind: "key.release"})
	if err != nil {
		t.Fatal(err)
	}
	released := 0
	for _, rec := range recs {
		if strings.HasPrefix(rec.Subject, "models/vibration-anomaly/1.0.0") && rec.Actor == "device:"+r.link.DeviceID() {
			released++
		}
	}
	if released == 0 {
		t.Fatal("no key.release audit record for models/vibration-anomaly/1.0.0")
	}
	// The measurement log records the ciphertext the slot holds and, beside it, the
	// plaintext the runtime decrypted and checked against the signed metadata; the
	// next quote covers both, and the server records the plaintext hash it verified.
	plain, _ := modelgen.Model("1.0.0")
	plainSum := fmt.Sprintf("%x", sha256.Sum256(plain))
	cur := r.current(t)
	if m := r.mlog.Log().Latest()[[2]string{"model", "vibration-anomaly"}]; m.SHA256 != cur.SHA256 || m.PlainSHA256 != plainSum {
		t.Fatalf("measured %+v; want the ciphertext %s and the plaintext %s", m, cur.SHA256, plainSum)
	}
	if err := r.ag.Step(ctx); err != nil {
		t.Fatalf("step after the install: %v", err)
	}
	if last := r.link.Last(); !last.Trusted {
		t.Fatalf("device untrusted with the plaintext hash measured: %v", last.Reasons)
	}
	verdicts, err := l.Records(ctx, audit.Query{Kind: "attestation.verdict"})
	if err != nil || len(verdicts) == 0 {
		t.Fatalf("verdict records: %v, %v", verdicts, err)
	}
	if d := string(verdicts[len(verdicts)-1].Data); !strings.Contains(d, `"decrypted":[`) || !strings.Contains(d, `"plain_sha256":"`+plainSum+`"`) || !strings.Contains(d, `"sha256":"`+cur.SHA256+`"`) {
		t.Fatalf("last verdict record %s; want the decrypted model with its ciphertext and plaintext hashes", d)
	}
	if f := findPlaintext(t, runs, r.state, tmp); len(f) > 0 {
		t.Fatalf("plaintext of the model found on disk: %v", f)
	}
	// The search finds the plaintext where it is.
	plainFile := filepath.Join(tmp, "clear.onnx")
	m, _ := modelgen.Model("1.0.0")
	os.WriteFile(plainFile, m, 0o600)
	if f := findPlaintext(t, runs, tmp); len(f) != 1 || f[0] != plainFile {
		t.Fatalf("the plaintext search found %v in a directory holding the plaintext model; want it", f)
	}
	os.Remove(plainFile)

	// A restart: a new runtime, the committed model loaded again from the slot and the
	// wrapped key beside it, unwrapped by the same TPM, without the server.
	r.hs.Close()
	rt2, err := runtime.New(runtime.Config{LibraryPath: r.lib})
	if err != nil {
		t.Fatal(err)
	}
	defer rt2.Close(ctx)
	control2 := httptest.NewServer(rt2.ControlHandler())
	defer control2.Close()
	judge2 := &RuntimeJudge{Runtime: &runtimeapi.Client{BaseURL: control2.URL}, TUF: r.tuf, Log: r.mlog, WorkDir: r.state, Decrypter: r.judge.Decrypter}
	if err := judge2.LoadCommitted(ctx, r.slots); err != nil {
		t.Fatalf("LoadCommitted of the encrypted model after a restart: %v", err)
	}
	if _, err := rt2.Infer(ctx, "vibration-anomaly", "", in, nil); err != nil {
		t.Fatalf("inference after the restart: %v", err)
	}
	if f := findPlaintext(t, runs, r.state, tmp); len(f) > 0 {
		t.Fatalf("plaintext of the model found on disk after the restart: %v", f)
	}
	// Without the TPM's key, the model is not served.
	judge3 := &RuntimeJudge{Runtime: &runtimeapi.Client{BaseURL: control2.URL}, TUF: r.tuf, Log: r.mlog, WorkDir: r.state}
	if err := judge3.LoadCommitted(ctx, r.slots); !errors.Is(err, errNoDecrypter) {
		t.Fatalf("LoadCommitted without the TPM decryption key = %v; want errNoDecrypter", err)
	}
}

// TestEncryptedModelQuarantinedGetsNoKey: a device quarantined after it received one
// key receives no further keys, and the committed version keeps serving. A device the
// server offers an encrypted version without its key (here: its TPM certified no
// decryption key) fails the install closed, before a byte is downloaded, saying why.
func TestEncryptedModelQuarantinedGetsNoKey(t *testing.T) {
	r := newStoryRig(t, true)
	ctx := context.Background()
	if err := r.ag.Step(ctx); err != nil {
		t.Fatalf("step: %v", err)
	}
	if v := r.committed(); v != "1.0.0" {
		t.Fatalf("committed = %q; want 1.0.0", v)
	}
	if err := r.store.SetQuarantine(ctx, r.link.DeviceID(), true, "test: suspected tampering"); err != nil {
		t.Fatal(err)
	}
	r.publish(t, "1.1.0")
	r.pol.Store(rolloutPolicy(t, "1.1.0", ""))
	r.ag.Step(ctx)
	last := r.link.Last()
	if !last.Quarantined {
		t.Fatalf("check-in = %+v; want quarantined", last)
	}
	for _, sd := range last.Slots {
		if sd.ContentKey != nil {
			t.Fatalf("a quarantined device received a content key for %s", sd.Target)
		}
	}
	if v := r.committed(); v != "1.0.0" {
		t.Fatalf("committed = %q after the quarantine; want 1.0.0 kept", v)
	}

	// Released from quarantine, but its TPM no longer certifies a decryption key: the
	// server offers 1.1.0 and withholds its key, and the device does not install it.
	if err := r.store.SetQuarantine(ctx, r.link.DeviceID(), false, ""); err != nil {
		t.Fatal(err)
	}
	r.link.DecryptionKey = nil
	r.ag.Step(ctx)
	last = r.link.Last()
	var offered *wire.SlotDecision
	for i, sd := range last.Slots {
		if sd.Kind == artifact.KindModel && sd.Version == "1.1.0" && sd.Action == wire.ActionInstall {
			offered = &last.Slots[i]
		}
	}
	if offered == nil || offered.ContentKey != nil || !strings.Contains(offered.Detail, "content key withheld: the device certified no TPM decryption key") {
		t.Fatalf("decision = %+v; want 1.1.0 offered, its key withheld, saying why", last.Slots)
	}
	le := r.ag.LastError()
	if le == nil || !strings.Contains(le.Message, updater.ErrNoContentKey.Error()) || !strings.Contains(le.Message, "certified no TPM decryption key") {
		t.Fatalf("last update error = %+v; want %q with the server's reason", le, updater.ErrNoContentKey)
	}
	st, err := r.slots.State(ctx, artifact.KindModel)
	if err != nil {
		t.Fatal(err)
	}
	if v := r.committed(); v != "1.0.0" || st.Phase != "committed" {
		t.Fatalf("slot = %s, committed %q; want 1.0.0 committed, nothing staged", st.Phase, v)
	}
}

// tamperingJudge changes one byte of the staged ciphertext before the trial: an
// attacker with the storage card between the download's verification and the trial.
type tamperingJudge struct{ *RuntimeJudge }

func (j tamperingJudge) Judge(ctx context.Context, tr updater.Trial) updater.Verdict {
	if f, err := os.OpenFile(tr.Payload, os.O_RDWR, 0); err == nil {
		b := make([]byte, 1)
		off := int64(tr.Target.Length / 2)
		f.ReadAt(b, off)
		b[0] ^= 0x01
		f.WriteAt(b, off)
		f.Close()
	}
	return j.RuntimeJudge.Judge(ctx, tr)
}

// TestEncryptedModelTamperedSegment: a ciphertext segment changed on the device after
// the download was verified fails the runtime's authentication at the trial, with the
// segment named, and the slot rolls back to the committed version.
func TestEncryptedModelTamperedSegment(t *testing.T) {
	r := newStoryRig(t, true)
	ctx := context.Background()
	if err := r.ag.Step(ctx); err != nil {
		t.Fatalf("step: %v", err)
	}
	if v := r.committed(); v != "1.0.0" {
		t.Fatalf("committed = %q; want 1.0.0", v)
	}
	ag, err := updater.NewAgent(updater.AgentConfig{DeviceID: r.link.DeviceID(), TUF: r.tuf, Slots: r.slots, Director: r.link,
		Judge: tamperingJudge{r.judge}, Outbox: r.outbox, Sender: r.link})
	if err != nil {
		t.Fatal(err)
	}
	r.publish(t, "1.1.0")
	r.pol.Store(rolloutPolicy(t, "1.1.0", ""))
	ag.Step(ctx)
	if v := r.committed(); v != "1.0.0" {
		t.Fatalf("committed = %q after a tampered trial; want 1.0.0 kept", v)
	}
	st, err := r.slots.State(ctx, artifact.KindModel)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(st.Reason, "segment") || !strings.Contains(st.Reason, "failed authentication") {
		t.Fatalf("slot reason = %q; want the segment that failed authentication", st.Reason)
	}
	in := []runtime.Input{runtime.NewInput("x", runtimeapi.FP32, []int64{1, 4}, []float64{0.1, 0.2, 0.1, 0.3})}
	res, err := r.rt.Infer(ctx, "vibration-anomaly", "", in, nil)
	if err != nil || res.Version != "1.0.0" {
		t.Fatalf("serving after the tampered trial = %+v, %v; want 1.0.0", res, err)
	}
}

// TestEncryptedModelRotation (issue 18): the content key of the version a device serves
// is rotated on the server (repository.Reencrypt). At its next check-in the device's
// quote shows the superseded ciphertext: it stays trusted, and the rollout offers it
// the same version again under the new key, with that key. The agent checks the new
// ciphertext decrypts to the serving plaintext (nothing loaded beside it, serving
// uninterrupted), commits it and measures the new ciphertext; the check-in after that
// is trusted with nothing more to do. No plaintext reaches the disk, the old key is
// gone from the server, and a restart serves the model from the new ciphertext.
func TestEncryptedModelRotation(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	r := newStoryRig(t, true)
	ctx := context.Background()
	runs := plaintextRuns(t, "1.0.0")
	if err := r.ag.Step(ctx); err != nil {
		t.Fatalf("step: %v", err)
	}
	before := r.current(t)
	if before.Version != "1.0.0" {
		t.Fatalf("committed %+v; want 1.0.0", before)
	}
	res, err := r.repo.Reencrypt(ctx, repository.ReencryptRequest{Kind: artifact.KindModel, Name: "vibration-anomaly", Version: "1.0.0", KEK: r.kek}, r.keys)
	if err != nil {
		t.Fatalf("Reencrypt = %v", err)
	}
	if res.Old != before.SHA256 {
		t.Fatalf("re-encrypted %s; the device runs %s", res.Old, before.SHA256)
	}
	if err := r.ag.Step(ctx); err != nil {
		t.Fatalf("step after the rotation: %v", err)
	}
	// The check-in that offered it: trusted, the new ciphertext's key released.
	l, err := r.srv.AuditLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := l.Records(ctx, audit.Query{Kind: "key.release"})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || !strings.Contains(string(recs[1].Data), `"sha256":"`+res.New+`"`) {
		t.Fatalf("key.release records after the rotation: %d, last %s; want a second one, for the new ciphertext %s", len(recs), recs[len(recs)-1].Data, res.New)
	}
	decs, err := r.store.Decisions(ctx, r.link.DeviceID(), 0)
	if err != nil {
		t.Fatal(err)
	}
	rekeyed := false
	for _, d := range decs {
		for _, sd := range d.Slots {
			rekeyed = rekeyed || (sd.Reason == policy.ReasonRekey && sd.Action == policy.ActionInstall)
		}
	}
	if !rekeyed {
		t.Fatalf("decisions = %+v; want one offering 1.0.0 again for its new key (rekey)", decs)
	}
	after := r.current(t)
	if after.Version != "1.0.0" || after.SHA256 != res.New {
		t.Fatalf("committed after the rotation %+v; want 1.0.0 from the new ciphertext %s", after, res.New)
	}
	plain, _ := modelgen.Model("1.0.0")
	plainSum := fmt.Sprintf("%x", sha256.Sum256(plain))
	if m := r.mlog.Log().Latest()[[2]string{"model", "vibration-anomaly"}]; m.SHA256 != res.New || m.PlainSHA256 != plainSum {
		t.Fatalf("measured %+v; want the new ciphertext %s and the plaintext %s", m, res.New, plainSum)
	}
	in := []runtime.Input{runtime.NewInput("x", runtimeapi.FP32, []int64{1, 4}, []float64{0.1, 0.2, 0.1, 0.3})}
	if out, err := r.rt.Infer(ctx, "vibration-anomaly", "", in, nil); err != nil || out.Version != "1.0.0" {
		t.Fatalf("serving after the rotation = %+v, %v; want 1.0.0", out, err)
	}
	if err := r.ag.Step(ctx); err != nil {
		t.Fatalf("step after the re-install: %v", err)
	}
	last := r.link.Last()
	for _, sd := range last.Slots {
		if sd.Kind == artifact.KindModel && (sd.Action != wire.ActionHold || sd.ContentKey != nil) {
			t.Fatalf("decision once the new ciphertext runs = %+v; want hold, no key", sd)
		}
	}
	if !last.Trusted {
		t.Fatalf("untrusted after the re-install: %v", last.Reasons)
	}
	if _, err := r.repo.ContentKey(r.kek, res.Path, res.Old); !errors.Is(err, repository.ErrNoContentKey) {
		t.Errorf("the superseded content key on the server = %v; want destroyed", err)
	}
	if f := findPlaintext(t, runs, r.state, tmp); len(f) > 0 {
		t.Fatalf("plaintext of the model found on disk after the rotation: %v", f)
	}
	// A restart serves the new ciphertext with the new key, without the server.
	r.hs.Close()
	rt2, err := runtime.New(runtime.Config{LibraryPath: r.lib})
	if err != nil {
		t.Fatal(err)
	}
	defer rt2.Close(ctx)
	control2 := httptest.NewServer(rt2.ControlHandler())
	defer control2.Close()
	judge2 := &RuntimeJudge{Runtime: &runtimeapi.Client{BaseURL: control2.URL}, TUF: r.tuf, Log: r.mlog, WorkDir: r.state, Decrypter: r.judge.Decrypter}
	if err := judge2.LoadCommitted(ctx, r.slots); err != nil {
		t.Fatalf("LoadCommitted after the rotation: %v", err)
	}
	if idx := rt2.Index(); len(idx) != 1 || idx[0].SHA256 != res.New || idx[0].PlainSHA256 != plainSum {
		t.Fatalf("after a restart the runtime serves %+v; want the new ciphertext of the same plaintext", idx)
	}
	if f := findPlaintext(t, runs, r.state, tmp); len(f) > 0 {
		t.Fatalf("plaintext of the model found on disk after the restart: %v", f)
	}
}

// probeRuns are byte runs of the plaintext probe set (the same for every version) to
// search the device for.
func probeRuns(t *testing.T) [][]byte {
	t.Helper()
	ps, err := modelgen.ProbeSet("1.0.0")
	if err != nil {
		t.Fatal(err)
	}
	var runs [][]byte
	for _, at := range []int{len(ps) / 4, len(ps) / 2, 3 * len(ps) / 4} {
		runs = append(runs, ps[at:at+48])
	}
	return runs
}

// TestEncryptedProbeSet (issue 18): a probe set published encrypted is released with its
// model, wrapped to the device's TPM like the model's key and audited; the agent
// decrypts it in memory and the real runtime probes the decrypted model with it: a good
// version commits with its probe figures, a degraded one fails its probe and rolls back.
// Neither probe set's plaintext reaches the disk. Without the key (none released, none
// kept) the probe set is refused as a withheld key, not as a bad version.
func TestEncryptedProbeSet(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	r := newStoryRigWith(t, &storyRig{encryptProbes: true}, true)
	ctx := context.Background()
	if err := r.ag.Step(ctx); err != nil {
		t.Fatalf("step: %v", err)
	}
	if v := r.committed(); v != "1.0.0" {
		t.Fatalf("committed = %q; want 1.0.0 probed with its encrypted probe set", v)
	}
	r.publish(t, "1.1.0")
	r.pol.Store(rolloutPolicy(t, "1.1.0", ""))
	if err := r.ag.Step(ctx); err != nil {
		t.Fatalf("step to 1.1.0: %v", err)
	}
	if v := r.committed(); v != "1.1.0" {
		st, _ := r.slots.State(ctx, artifact.KindModel)
		t.Fatalf("committed = %q (%s: %s); want 1.1.0 probed with its encrypted probe set", v, st.Phase, st.Reason)
	}
	reps, _ := r.store.Reports(ctx, fleet.ReportFilter{})
	var probed bool
	for _, rep := range reps {
		probed = probed || (rep.Version == "1.1.0" && rep.Outcome == wire.OutcomeCommitted && rep.Probe.Accuracy >= 0.85)
	}
	if !probed {
		t.Fatalf("reports = %+v; want 1.1.0 committed with its probe's accuracy", reps)
	}
	l, err := r.srv.AuditLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := l.Records(ctx, audit.Query{Kind: "key.release"})
	if err != nil {
		t.Fatal(err)
	}
	probeReleased := false
	for _, rec := range recs {
		probeReleased = probeReleased || rec.Subject == "probes/vibration-anomaly/1.1.0.json"
	}
	if !probeReleased {
		t.Fatalf("no key.release record for the probe set among %d", len(recs))
	}

	// The degraded version, its probe set encrypted: probed, fails, rolls back.
	r.publish(t, "2.0.0")
	r.pol.Store(rolloutPolicy(t, "2.0.0", ""))
	r.ag.Step(ctx)
	st, err := r.slots.State(ctx, artifact.KindModel)
	if err != nil {
		t.Fatal(err)
	}
	if v := r.committed(); v != "1.1.0" || !strings.Contains(st.Reason, "probe failed") {
		t.Fatalf("after the degraded version: committed %q, reason %q; want 1.1.0 kept, the probe failed", v, st.Reason)
	}
	if f := findPlaintext(t, probeRuns(t), r.state, tmp); len(f) > 0 {
		t.Fatalf("plaintext of a probe set found on disk: %v", f)
	}
	// The search finds a probe set's plaintext where it is.
	ps, _ := modelgen.ProbeSet("1.1.0")
	os.WriteFile(filepath.Join(tmp, "probe.json"), ps, 0o600)
	if f := findPlaintext(t, probeRuns(t), tmp); len(f) != 1 {
		t.Fatalf("the search found %v in a directory holding the plaintext probe set", f)
	}

	// No key released and none kept beside the payload: a withheld key.
	if _, err := r.judge.probeSet(ctx, nil, "probes/vibration-anomaly/1.1.0.json", nil, filepath.Join(t.TempDir(), "payload")); !errors.Is(err, updater.ErrNoContentKey) {
		t.Fatalf("probe set without its key = %v; want ErrNoContentKey", err)
	}
	st, _ = r.slots.State(ctx, artifact.KindModel)
	if _, err := r.judge.probeSet(ctx, nil, "probes/vibration-anomaly/1.1.0.json", nil, r.slots.Payload(artifact.KindModel, st.Active)); err != nil {
		t.Fatalf("probe set with the key kept beside the committed model = %v", err)
	}
}

// keyTamperingJudge changes a byte of the wrapped content key the server released, for
// its first tampered trials: an answer damaged or replaced on the way.
type keyTamperingJudge struct {
	*RuntimeJudge
	left *int
}

func (j keyTamperingJudge) Judge(ctx context.Context, tr updater.Trial) updater.Verdict {
	if *j.left > 0 && tr.ContentKey != nil {
		*j.left--
		k := *tr.ContentKey
		k.Sealed = append([]byte(nil), k.Sealed...)
		k.Sealed[len(k.Sealed)/2] ^= 0x01
		tr.ContentKey = &k
	}
	return j.RuntimeJudge.Judge(ctx, tr)
}

// TestUnusableContentKeyDoesNotBurnTheVersion: a released content key that does not
// open (damaged or replayed on the way) is the release's fault: the trial is retried
// with a later check-in's key, the version is not refused on the device nor recorded
// as failed by the server, and it commits once a good key arrives. It burned a good
// version for good (found from outside, 2 Dec).
func TestUnusableContentKeyDoesNotBurnTheVersion(t *testing.T) {
	r := newStoryRig(t, true)
	ctx := context.Background()
	if err := r.ag.Step(ctx); err != nil || r.committed() != "1.0.0" {
		t.Fatalf("step: %v, committed %q", err, r.committed())
	}
	r.publish(t, "1.1.0")
	r.pol.Store(rolloutPolicy(t, "1.1.0", ""))
	now := time.Now()
	agentAt := func(judge updater.Judge) *updater.Agent {
		t.Helper()
		ag, err := updater.NewAgent(updater.AgentConfig{DeviceID: r.link.DeviceID(), TUF: r.tuf, Slots: r.slots, Director: r.link, Judge: judge,
			Outbox: r.outbox, Sender: r.link, Now: func() time.Time { return now }})
		if err != nil {
			t.Fatal(err)
		}
		return ag
	}
	left := 1
	ag := agentAt(keyTamperingJudge{r.judge, &left})
	ag.Step(ctx)
	if v := r.committed(); v != "1.0.0" {
		t.Fatalf("committed = %q after a key that does not open; want 1.0.0 kept", v)
	}
	if le := ag.LastError(); le == nil || !strings.Contains(le.Message, updater.ErrContentKeyUnusable.Error()) {
		t.Fatalf("last update error = %+v; want %q", le, updater.ErrContentKeyUnusable)
	}
	ag.Step(ctx) // the report goes out; the retry waits for its backoff
	d, err := r.store.Device(ctx, r.link.DeviceID())
	if err != nil {
		t.Fatal(err)
	}
	if sl := d.Slots[artifact.KindModel]; sl.Failed == "1.1.0" {
		t.Fatalf("the server recorded 1.1.0 as failed on the device after a key that did not open: %+v", sl)
	}
	now = now.Add(2 * time.Hour)
	ag.Step(ctx)
	if v := r.committed(); v != "1.1.0" {
		t.Fatalf("committed = %q once a good key was released; want 1.1.0 (last error %+v)", v, ag.LastError())
	}
}

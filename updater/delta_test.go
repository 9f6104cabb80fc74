package updater

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/delta"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/rollback"
	"github.com/edgeward/edgeward/runtime/modelgen"
	"github.com/edgeward/edgeward/updater/tuftest"
)

func hexSHA(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// addModel lists model bytes as models/m/VERSION.onnx.
func addModel(r *tuftest.Repo, version string, b []byte) string {
	p := artifact.TargetPath(artifact.KindModel, "m", version, ".onnx")
	r.AddTarget(p, b, artifact.Meta{Kind: artifact.KindModel, Name: "m", Version: version, Format: "onnx"})
	return p
}

// addDelta lists d as the delta from base (at basePath) to the target at path.
func addDelta(r *tuftest.Repo, basePath string, base []byte, path string, target, d []byte) string {
	dp := artifact.DeltaPath(path, hexSHA(base))
	r.AddTarget(dp, d, artifact.DeltaCustom{Delta: &artifact.Delta{Method: delta.MethodCDC,
		Base:   artifact.DeltaRef{Path: basePath, SHA256: hexSHA(base), Length: int64(len(base))},
		Result: artifact.DeltaRef{Path: path, SHA256: hexSHA(target), Length: int64(len(target))}}})
	return dp
}

func makeDelta(t *testing.T, base, target []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	if _, err := delta.Diff(context.Background(), bytes.NewReader(base), bytes.NewReader(target), &out); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// targetURL is the consistent-snapshot URL path of a target's content.
func targetURL(path string, b []byte) string {
	dir, base := filepath.Split(path)
	return "/targets/" + dir + hexSHA(b) + "." + base
}

// TestDeltaInstall: a device holding 1.0.0 installs a retrained head from the delta
// (the full target is never requested) and reports the bytes saved; a delta corrupted
// in transit, and a signed delta that builds other bytes, fall back to the full target
// and still commit.
func TestDeltaInstall(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	mlp := modelgen.Random(1, 64, 512, 512, 512, 10)
	v1 := mlp.ONNX("m", nil, nil)
	p1 := addModel(r, "1.0.0", v1)
	r.Publish()
	c, m, o := deviceState(t, r)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	d := &director{}
	srv := &server{up: false, seen: map[string]int{}} // reports wait in the outbox
	a, err := NewAgent(AgentConfig{DeviceID: "dev-1", TUF: c, Slots: m, Director: d, Judge: judge{},
		Outbox: o, Sender: srv, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	install := func(p string) wire.Report {
		t.Helper()
		d.want = map[artifact.Kind]string{artifact.KindModel: p}
		a.Step(ctx) // its error is the outbox's: the reports wait
		s, _ := m.State(ctx, artifact.KindModel)
		if s.Current == nil || s.Current.Path != p || s.Phase != rollback.Committed {
			t.Fatalf("install %s: state %+v; want it committed", p, s)
		}
		got, err := os.ReadFile(m.Payload(artifact.KindModel, s.Active))
		if err != nil || hexSHA(got) != s.Current.SHA256 {
			t.Fatalf("install %s: committed payload does not hash to the target (%v)", p, err)
		}
		now = now.Add(time.Hour)
		msgs, _ := o.Due(ctx, now.Add(24*time.Hour), 100)
		var rep wire.Report
		for _, msg := range msgs {
			var x wire.Report
			json.Unmarshal(msg.Body, &x)
			if x.Outcome == wire.OutcomeCommitted && x.Name == "m" && "models/m/"+x.Version+".onnx" == p {
				rep = x
			}
		}
		if rep.Outcome == "" {
			t.Fatalf("install %s: no commit report", p)
		}
		return rep
	}
	install(p1)

	// 1.1.0: the head retrained; its delta is listed.
	v2 := mlp.RetrainLast(2).ONNX("m", nil, nil)
	p2 := addModel(r, "1.1.0", v2)
	d2 := makeDelta(t, v1, v2)
	addDelta(r, p1, v1, p2, v2, d2)
	r.Publish()
	rep := install(p2)
	if n := r.Hits(targetURL(p2, v2)); n != 0 {
		t.Errorf("the full 1.1.0 was requested %d times; want the delta only", n)
	}
	if rep.Delta != delta.MethodCDC || rep.Bytes != int64(len(d2)) || rep.BytesSaved != int64(len(v2)-len(d2)) {
		t.Errorf("report delta %q bytes %d saved %d; want %q, %d, %d", rep.Delta, rep.Bytes, rep.BytesSaved, delta.MethodCDC, len(d2), len(v2)-len(d2))
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(m.Payload(artifact.KindModel, rollback.SlotA)), "payload.delta*")); len(left) > 0 {
		t.Errorf("delta files left behind: %v", left)
	}

	// 1.2.0: the served delta has one byte flipped: TUF's hash refuses it, the full
	// target follows.
	v3 := mlp.RetrainLast(3).ONNX("m", nil, nil)
	p3 := addModel(r, "1.2.0", v3)
	d3 := makeDelta(t, v2, v3)
	dp3 := addDelta(r, p2, v2, p3, v3, d3)
	r.Publish()
	bad := bytes.Clone(d3)
	bad[len(bad)/2] ^= 1
	r.Put(targetURL(dp3, d3), bad)
	rep = install(p3)
	if r.Hits(targetURL(p3, v3)) == 0 || rep.Delta != "" {
		t.Errorf("corrupt delta: full target requested %d times, report delta %q; want the full target", r.Hits(targetURL(p3, v3)), rep.Delta)
	}
	if !strings.Contains(rep.DeltaFallback, "download delta") || !strings.Contains(rep.DeltaFallback, "hash") {
		t.Errorf("corrupt delta: report delta_fallback %q; want the delta's download refused on its hash", rep.DeltaFallback)
	}

	// 1.3.0: a validly signed delta that builds other bytes (made for another result):
	// the result's hash fails, the full target follows.
	v4 := mlp.RetrainLast(4).ONNX("m", nil, nil)
	p4 := addModel(r, "1.3.0", v4)
	addDelta(r, p3, v3, p4, v4, makeDelta(t, v3, mlp.RetrainLast(5).ONNX("m", nil, nil)))
	r.Publish()
	rep = install(p4)
	if r.Hits(targetURL(p4, v4)) == 0 || rep.Delta != "" || rep.BytesSaved >= 0 {
		t.Errorf("wrong delta: full target requested %d times, report delta %q saved %d; want the full target and a loss", r.Hits(targetURL(p4, v4)), rep.Delta, rep.BytesSaved)
	}
	if !strings.Contains(rep.DeltaFallback, "delta result") {
		t.Errorf("wrong delta: report delta_fallback %q; want the result's hash mismatch", rep.DeltaFallback)
	}
}

// TestDeltaInterruptedApply: an apply that did not finish (its mark is there) falls
// back to the full target; without the mark the same delta is applied.
func TestDeltaInterruptedApply(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	mlp := modelgen.Random(1, 64, 256, 256, 10)
	v1, v2 := mlp.ONNX("m", nil, nil), mlp.RetrainLast(2).ONNX("m", nil, nil)
	p1, p2 := addModel(r, "1.0.0", v1), addModel(r, "1.1.0", v2)
	addDelta(r, p1, v1, p2, v2, makeDelta(t, v1, v2))
	r.Publish()
	tufDir := filepath.Join(t.TempDir(), "tuf")
	PinRoot(tufDir, r.RootBytes(1))
	c := newClient(t, r, tufDir)
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	tgt, _, err := c.Resolve(ctx, artifact.KindModel, p2)
	if err != nil {
		t.Fatal(err)
	}
	slots := t.TempDir()
	for _, s := range []string{"a", "b"} {
		os.MkdirAll(filepath.Join(slots, s), 0o700)
	}
	os.WriteFile(filepath.Join(slots, "a", rollback.PayloadName), v1, 0o600)
	dst := filepath.Join(slots, "b", rollback.PayloadName)
	f := c.SlotFetcher().(slotFetcher)

	os.WriteFile(dst+deltaMarkSuffix, []byte("x"), 0o600)
	info, _, err := f.fetch(ctx, tgt, dst)
	if err != nil || info.Method != "" || r.Hits(targetURL(p2, v2)) != 1 {
		t.Fatalf("after an interrupted apply: %+v, %v, full requested %d times; want the full target", info, err, r.Hits(targetURL(p2, v2)))
	}
	if !strings.Contains(info.Fallback, "did not finish") {
		t.Errorf("after an interrupted apply: fallback %q; want the interrupted apply named", info.Fallback)
	}
	if _, err := os.Stat(dst + deltaMarkSuffix); err == nil {
		t.Error("the mark of the interrupted apply is still there")
	}
	os.Remove(dst)
	info, _, err = f.fetch(ctx, tgt, dst)
	if err != nil || info.Method != delta.MethodCDC || r.Hits(targetURL(p2, v2)) != 1 {
		t.Fatalf("second install: %+v, %v; want the delta", info, err)
	}
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, v2) {
		t.Fatal("the delta built other bytes")
	}
	if info.Fallback != "" {
		t.Errorf("a delta that built the target: fallback %q; want none", info.Fallback)
	}

	// A fetch killed after it renamed the target in but before it removed its
	// checkpoint and the delta's files: the next fetch keeps the slot without a request
	// and removes them.
	hits := r.Hits(targetURL(p2, v2))
	for _, s := range []string{".part.state", ".part", deltaFileSuffix, deltaFileSuffix + ".part.state", deltaMarkSuffix} {
		os.WriteFile(dst+s, []byte("x"), 0o600)
	}
	if _, _, err := f.fetch(ctx, tgt, dst); err != nil {
		t.Fatalf("fetch over a complete slot: %v", err)
	}
	if r.Hits(targetURL(p2, v2)) != hits {
		t.Error("a complete slot was fetched again")
	}
	for _, s := range []string{".part.state", ".part", deltaFileSuffix, deltaFileSuffix + ".part.state", deltaMarkSuffix} {
		if _, err := os.Stat(dst + s); err == nil {
			t.Errorf("%s left behind beside a complete slot", filepath.Base(dst+s))
		}
	}
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, v2) {
		t.Fatal("the complete slot was changed")
	}

	// A device configured without deltas (edgeward-agent --deltas=false) downloads the
	// full target although a delta from its committed version is listed.
	noDeltas, err := NewTUF(TUFConfig{MetadataDir: tufDir, MetadataURL: r.MetadataURL(), TargetsURL: r.TargetsURL(), Downloader: testDownloader(nil), NoDeltas: true})
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(dst)
	deltaHits := r.Hits(targetURL(artifact.DeltaPath(p2, hexSHA(v1)), makeDelta(t, v1, v2)))
	info, _, err = noDeltas.SlotFetcher().(slotFetcher).fetch(ctx, tgt, dst)
	if err != nil || info.Method != "" || info.Fallback != "" || r.Hits(targetURL(p2, v2)) != 2 {
		t.Fatalf("NoDeltas: %+v, %v, full requested %d times; want the full target once more", info, err, r.Hits(targetURL(p2, v2)))
	}
	if n := r.Hits(targetURL(artifact.DeltaPath(p2, hexSHA(v1)), makeDelta(t, v1, v2))); n != deltaHits {
		t.Errorf("NoDeltas: the delta was requested %d more times; want none", n-deltaHits)
	}
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, v2) {
		t.Fatal("NoDeltas: the slot holds other bytes")
	}

	// Through the slot manager's own call (its Recover at start resumes an install a kill
	// interrupted so, not the agent's install), how the target came is kept for the
	// install's report: the fallback was reported as a plain full download.
	os.Remove(dst)
	os.WriteFile(dst+deltaMarkSuffix, []byte("x"), 0o600)
	if _, err := f.FetchProven(ctx, tgt, dst); err != nil {
		t.Fatal(err)
	}
	if info, ok := c.takeFetched(tgt.Path); !ok || !strings.Contains(info.Fallback, "did not finish") || info.Method != "" {
		t.Errorf("kept for the report after the slot manager's fetch: %+v, %v; want the interrupted apply named", info, ok)
	}
	if _, ok := c.takeFetched(tgt.Path); ok {
		t.Error("what was kept for the report is there after it was taken")
	}
}

// TestDeltaAppliedWhileStreaming: the result is built as the delta arrives. The server
// holds the delta's last 64 KiB back until the device has written part of the result;
// an agent that applied only a complete delta would never write it, and the server
// would give up waiting. The install still ends with the signed bytes in the slot.
func TestDeltaAppliedWhileStreaming(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	v1 := make([]byte, 4<<20)
	rand.NewChaCha8([32]byte{1}).Read(v1)
	v2 := bytes.Clone(v1)
	rand.NewChaCha8([32]byte{2}).Read(v2[len(v2)/2:]) // half of it new: a delta of about 2 MiB, many zstd blocks
	p1, p2 := addModel(r, "1.0.0", v1), addModel(r, "1.1.0", v2)
	d := makeDelta(t, v1, v2)
	dp := addDelta(r, p1, v1, p2, v2, d)
	r.Publish()

	slots := t.TempDir()
	for _, s := range []string{"a", "b"} {
		os.MkdirAll(filepath.Join(slots, s), 0o700)
	}
	os.WriteFile(filepath.Join(slots, "a", rollback.PayloadName), v1, 0o600)
	dst := filepath.Join(slots, "b", rollback.PayloadName)

	const held = 64 << 10
	var streamed atomic.Bool
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		resp, err := http.Get(r.TargetsURL() + strings.TrimPrefix(req.URL.Path, "/targets"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || req.URL.Path != targetURL(dp, d) {
			w.WriteHeader(resp.StatusCode)
			w.Write(body)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body[:len(body)-held])
		w.(http.Flusher).Flush()
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if fi, err := os.Stat(dst + deltaOutSuffix); err == nil && fi.Size() > 0 {
				streamed.Store(true)
				break
			}
		}
		w.Write(body[len(body)-held:])
	}))
	defer proxy.Close()

	tufDir := filepath.Join(t.TempDir(), "tuf")
	PinRoot(tufDir, r.RootBytes(1))
	c, err := NewTUF(TUFConfig{MetadataDir: tufDir, MetadataURL: r.MetadataURL(), TargetsURL: proxy.URL + "/targets", Downloader: testDownloader(nil)})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	tgt, _, err := c.Resolve(ctx, artifact.KindModel, p2)
	if err != nil {
		t.Fatal(err)
	}
	info, _, err := c.SlotFetcher().(slotFetcher).fetch(ctx, tgt, dst)
	if err != nil || info.Method != delta.MethodCDC || info.Fallback != "" {
		t.Fatalf("fetch: %+v, %v; want the delta", info, err)
	}
	if !streamed.Load() {
		t.Error("nothing of the result was written before the delta's last bytes were sent; want it built while the delta streams")
	}
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, v2) {
		t.Fatal("the slot holds other bytes than the target")
	}
	t.Logf("delta %d bytes for a %d-byte target", len(d), len(v2))
}

// TestDeltaStoppedMidStream: an install from a delta stopped while the delta streams
// (the agent shutting down: its context cancelled, no kill) leaves no mark and no
// delta file, and the next attempt builds the target from the delta again rather than
// downloading the full target.
func TestDeltaStoppedMidStream(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	mlp := modelgen.Random(1, 64, 512, 512, 10)
	v1, v2 := mlp.ONNX("m", nil, nil), mlp.RetrainLast(2).ONNX("m", nil, nil)
	p1, p2 := addModel(r, "1.0.0", v1), addModel(r, "1.1.0", v2)
	d := makeDelta(t, v1, v2)
	dp := addDelta(r, p1, v1, p2, v2, d)
	r.Publish()
	slots := t.TempDir()
	for _, s := range []string{"a", "b"} {
		os.MkdirAll(filepath.Join(slots, s), 0o700)
	}
	os.WriteFile(filepath.Join(slots, "a", rollback.PayloadName), v1, 0o600)
	dst := filepath.Join(slots, "b", rollback.PayloadName)

	var hold atomic.Bool
	hold.Store(true)
	sent := make(chan struct{}, 1)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		resp, err := http.Get(r.TargetsURL() + strings.TrimPrefix(req.URL.Path, "/targets"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || req.URL.Path != targetURL(dp, d) || !hold.Load() {
			w.WriteHeader(resp.StatusCode)
			w.Write(body)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body[:len(body)/2])
		w.(http.Flusher).Flush()
		sent <- struct{}{}
		<-req.Context().Done() // the rest never comes
	}))
	defer proxy.Close()
	tufDir := filepath.Join(t.TempDir(), "tuf")
	PinRoot(tufDir, r.RootBytes(1))
	c, err := NewTUF(TUFConfig{MetadataDir: tufDir, MetadataURL: r.MetadataURL(), TargetsURL: proxy.URL + "/targets", Downloader: testDownloader(nil)})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	tgt, _, err := c.Resolve(ctx, artifact.KindModel, p2)
	if err != nil {
		t.Fatal(err)
	}
	f := c.SlotFetcher().(slotFetcher)
	stop, cancel := context.WithCancel(ctx)
	go func() { <-sent; cancel() }()
	if _, _, err := f.fetch(stop, tgt, dst); err == nil {
		t.Fatal("a fetch stopped mid-delta succeeded")
	}
	if left, _ := filepath.Glob(dst + ".delta*"); len(left) > 0 {
		t.Errorf("after a stop: delta files left behind: %v; want none (no mark: the next attempt tries the delta)", left)
	}
	hold.Store(false)
	info, _, err := f.fetch(ctx, tgt, dst)
	if err != nil || info.Method != delta.MethodCDC || info.Fallback != "" || r.Hits(targetURL(p2, v2)) != 0 {
		t.Fatalf("after a stop: %+v, %v, full target requested %d times; want the delta again", info, err, r.Hits(targetURL(p2, v2)))
	}
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, v2) {
		t.Fatal("the slot holds other bytes than the target")
	}
}

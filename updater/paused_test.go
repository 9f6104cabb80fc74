package updater

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/delta"
	"github.com/edgeward/edgeward/rollback"
	"github.com/edgeward/edgeward/updater/tuftest"
)

// drippingMirror relays the targets of r (honouring Range), 64 KiB at a time with a
// pause between pieces: a mirror, or someone on its path, that sends the signed bytes
// just fast enough never to be stalled. ranges collects each request's Range header.
func drippingMirror(t *testing.T, r *tuftest.Repo, pause time.Duration, ranges *[]string) *httptest.Server {
	t.Helper()
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		up, _ := http.NewRequestWithContext(req.Context(), http.MethodGet, r.TargetsURL()+req.URL.Path, nil)
		mu.Lock()
		*ranges = append(*ranges, req.Header.Get("Range"))
		mu.Unlock()
		if rg := req.Header.Get("Range"); rg != "" {
			up.Header.Set("Range", rg)
		}
		resp, err := http.DefaultClient.Do(up)
		if err != nil {
			return
		}
		defer resp.Body.Close()
		for _, h := range []string{"Content-Length", "Content-Range"} {
			if v := resp.Header.Get(h); v != "" {
				w.Header().Set(h, v)
			}
		}
		w.WriteHeader(resp.StatusCode)
		buf := make([]byte, 64<<10)
		for {
			n, err := io.ReadFull(resp.Body, buf)
			if n > 0 {
				w.Write(buf[:n])
				w.(http.Flusher).Flush()
			}
			if err != nil {
				return
			}
			select {
			case <-time.After(pause):
			case <-req.Context().Done():
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestRoundDownloadPauses: a target trickling in from a mirror just above the stall
// floor held the agent's round, and so its check-ins, for as long as it took (length /
// 64 KiB per StallTimeout: 11 days for 1 GiB at the default; found from outside, 2 Dec).
// With Downloader.MaxTime the round's download pauses at a durable checkpoint, the round
// ends without a failure counted or reported, and the following rounds (each after its
// check-in) resume it until the version commits; no byte is fetched twice.
func TestRoundDownloadPauses(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	const size = 1 << 20
	p, _ := r.AddModel("m", "1.0.0", size)
	var ranges []string
	mirror := drippingMirror(t, r, 20*time.Millisecond, &ranges)
	state := t.TempDir()
	PinRoot(filepath.Join(state, "tuf"), r.RootBytes(1))
	dl := testDownloader(nil)
	dl.MaxTime = 150 * time.Millisecond
	c, err := NewTUF(TUFConfig{MetadataDir: filepath.Join(state, "tuf"), MetadataURL: r.MetadataURL(), TargetsURL: mirror.URL, Downloader: dl, NoDeltas: true})
	if err != nil {
		t.Fatal(err)
	}
	m, err := rollback.Open(ctx, rollback.Config{Dir: state, Fetch: c.SlotFetcher()})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	o, err := OpenOutbox(ctx, filepath.Join(state, "outbox.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	d := &director{want: map[artifact.Kind]string{artifact.KindModel: p}}
	a, err := NewAgent(AgentConfig{DeviceID: "dev-1", TUF: c, Slots: m, Director: d, Judge: judge{}, Outbox: o, Interval: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	rounds := 0
	for ; rounds < 100; rounds++ {
		err := a.Step(ctx)
		s, serr := m.State(ctx, artifact.KindModel)
		if serr != nil {
			t.Fatal(serr)
		}
		if s.Phase == rollback.Committed {
			break
		}
		if !errors.Is(err, ErrPaused) || s.Phase != rollback.Downloading {
			t.Fatalf("round %d: %v, slot %s; want the download paused, still downloading", rounds, err, s)
		}
		if len(a.retries) != 0 {
			t.Fatalf("round %d: a pause counted as a failure (retries %v)", rounds, a.retries)
		}
	}
	if rounds < 2 || rounds >= 100 {
		t.Fatalf("committed after %d paused rounds; want a few (each round's download bounded)", rounds)
	}
	if len(d.seen) != rounds+1 {
		t.Errorf("%d check-ins in %d rounds", len(d.seen), rounds+1)
	}
	if got := dueOutcomes(ctx, o, time.Now().Add(time.Hour), 20); len(got) != 1 || got[0] != "1.0.0 committed" {
		t.Errorf("reports = %v; want one, committed (no failure for the pauses)", got)
	}
	// Each round resumed where the last one's checkpoint left it, never from the start.
	last := int64(-1)
	for i, rg := range ranges {
		var from int64
		if i > 0 {
			if _, err := fmt.Sscanf(rg, "bytes=%d-", &from); err != nil || from <= last {
				t.Fatalf("request %d asked for %q after %d: want a Range past what came before (requests %q)", i, rg, last, ranges)
			}
		} else if rg != "" {
			t.Fatalf("first request asked for %q", rg)
		}
		last = from
	}
	if len(ranges) < rounds+1 {
		t.Errorf("%d requests for %d rounds; want one per round at least", len(ranges), rounds+1)
	}
}

// TestPausedDeltaResumes: a delta whose download the round's time bound paused was not
// resumed: the pause left the mark of its apply, so the next round took it for an
// apply a kill interrupted, downloaded the full target and reported a crash (found from
// outside, 2 Dec). Each round now resumes the delta where the last one stopped, and the
// target is built from it; the full target is never requested.
func TestPausedDeltaResumes(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	v1 := make([]byte, 2<<20)
	rand.NewChaCha8([32]byte{1}).Read(v1)
	v2 := bytes.Clone(v1)
	rand.NewChaCha8([32]byte{2}).Read(v2[len(v2)-len(v2)/8:]) // a delta of about 256 KiB
	p1, p2 := addModel(r, "1.0.0", v1), addModel(r, "1.1.0", v2)
	d := makeDelta(t, v1, v2)
	addDelta(r, p1, v1, p2, v2, d)
	r.Publish()
	slots := t.TempDir()
	for _, s := range []string{"a", "b"} {
		os.MkdirAll(filepath.Join(slots, s), 0o700)
	}
	os.WriteFile(filepath.Join(slots, "a", rollback.PayloadName), v1, 0o600)
	dst := filepath.Join(slots, "b", rollback.PayloadName)

	var ranges []string
	mirror := drippingMirror(t, r, 40*time.Millisecond, &ranges)
	tufDir := filepath.Join(t.TempDir(), "tuf")
	PinRoot(tufDir, r.RootBytes(1))
	dl := testDownloader(nil)
	dl.MaxTime = 100 * time.Millisecond
	c, err := NewTUF(TUFConfig{MetadataDir: tufDir, MetadataURL: r.MetadataURL(), TargetsURL: mirror.URL, Downloader: dl})
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
	rounds, marked := 0, false
	var info FetchInfo
	for ; rounds < 50; rounds++ {
		info, _, err = f.fetch(ctx, tgt, dst)
		if err == nil {
			break
		}
		if !errors.Is(err, ErrPaused) {
			t.Fatalf("round %d: %v; want the delta's download paused", rounds, err)
		}
		if _, err := os.Stat(dst + deltaMarkSuffix); err == nil && !marked {
			marked = true
			t.Errorf("round %d: paused, and the mark of an apply that did not finish is there", rounds)
		}
	}
	if rounds == 0 || rounds == 50 {
		t.Fatalf("built after %d paused rounds; want a few", rounds)
	}
	if info.Method != delta.MethodCDC || info.Fallback != "" || r.Hits(targetURL(p2, v2)) != 0 {
		t.Errorf("after %d paused rounds: %+v, full target requested %d times; want the delta, no fallback", rounds, info, r.Hits(targetURL(p2, v2)))
	}
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, v2) {
		t.Fatal("the slot holds other bytes than the target")
	}
	// Each round asked for the rest of the delta, never for all of it again.
	for i, rg := range ranges[1:] {
		if !strings.HasPrefix(rg, "bytes=") || rg == "bytes=0-" {
			t.Fatalf("request %d of the delta asked for %q; want the rest after a checkpoint (requests %q)", i+1, rg, ranges)
		}
	}
}

// deltaLab is a device whose committed slot holds v1, and a TUF client of r through
// mirror's handler (nil: r itself) with dl, for fetches of v2 from its listed delta.
type deltaLab struct {
	c   *TUF
	f   slotFetcher
	tgt rollback.Target
	dst string
}

func newDeltaLab(t *testing.T, r *tuftest.Repo, v1 []byte, p2 string, targetsURL string, dl *Downloader) deltaLab {
	t.Helper()
	ctx := context.Background()
	slots := t.TempDir()
	for _, s := range []string{"a", "b"} {
		os.MkdirAll(filepath.Join(slots, s), 0o700)
	}
	os.WriteFile(filepath.Join(slots, "a", rollback.PayloadName), v1, 0o600)
	tufDir := filepath.Join(t.TempDir(), "tuf")
	PinRoot(tufDir, r.RootBytes(1))
	c, err := NewTUF(TUFConfig{MetadataDir: tufDir, MetadataURL: r.MetadataURL(), TargetsURL: targetsURL, Downloader: dl})
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
	return deltaLab{c: c, f: c.SlotFetcher().(slotFetcher), tgt: tgt, dst: filepath.Join(slots, "b", rollback.PayloadName)}
}

// slowWriter takes pause for each write: a device whose flash writes slowly.
type slowWriter struct {
	w     io.Writer
	pause time.Duration
}

func (s slowWriter) Write(p []byte) (int, error) {
	time.Sleep(s.pause)
	return s.w.Write(p)
}

// TestRoundBoundCoversDeltaAndFull: a fetch whose delta failed downloaded the full
// target with a time bound of its own, so a mirror that drips the delta for almost the
// round's time, its last byte wrong, held the round for up to twice agent.RoundDownloadTime
// (found from outside, 2 Dec). The bound is the fetch's, delta and full target in all;
// and the next round resumes the full target rather than trying the delta again first.
func TestRoundBoundCoversDeltaAndFull(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	v1 := make([]byte, 4<<20)
	rand.NewChaCha8([32]byte{1}).Read(v1)
	v2 := bytes.Clone(v1)
	rand.NewChaCha8([32]byte{2}).Read(v2[len(v2)/2:])
	p1, p2 := addModel(r, "1.0.0", v1), addModel(r, "1.1.0", v2)
	d := makeDelta(t, v1, v2)
	deltaURL, fullURL := targetURL(addDelta(r, p1, v1, p2, v2, d), d), targetURL(p2, v2)
	r.Publish()
	const maxTime = 2 * time.Second
	var mu sync.Mutex
	requests := map[string][]string{} // Range headers by URL
	var slow atomic.Bool
	slow.Store(true)
	mirror := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		mu.Lock()
		requests[req.URL.Path] = append(requests[req.URL.Path], req.Header.Get("Range"))
		mu.Unlock()
		up, _ := http.NewRequestWithContext(req.Context(), http.MethodGet, r.TargetsURL()+strings.TrimPrefix(req.URL.Path, "/targets"), nil)
		up.Header.Set("Range", req.Header.Get("Range"))
		resp, err := http.DefaultClient.Do(up)
		if err != nil {
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		for _, h := range []string{"Content-Length", "Content-Range"} {
			w.Header().Set(h, resp.Header.Get(h))
		}
		w.WriteHeader(resp.StatusCode)
		switch {
		case !slow.Load():
			w.Write(body)
		case req.URL.Path == deltaURL:
			// Over half the bound, then a wrong last byte.
			body[len(body)-1] ^= 1
			for i := range 10 {
				w.Write(body[i*len(body)/10 : (i+1)*len(body)/10])
				w.(http.Flusher).Flush()
				time.Sleep(maxTime / 20)
			}
		default:
			// The full target: 64 KiB every 100 ms, far from done within the bound.
			for i := 0; i < len(body); i += 64 << 10 {
				w.Write(body[i:min(len(body), i+64<<10)])
				w.(http.Flusher).Flush()
				select {
				case <-req.Context().Done():
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
		}
	}))
	defer mirror.Close()
	dl := &Downloader{MaxTime: maxTime, Sleep: func(context.Context, time.Duration) error { return nil }}
	lab := newDeltaLab(t, r, v1, p2, mirror.URL+"/targets", dl)

	start := time.Now()
	info, _, err := lab.f.fetch(ctx, lab.tgt, lab.dst)
	took := time.Since(start)
	if !errors.Is(err, ErrPaused) || took > maxTime*5/4 {
		t.Errorf("fetch of a delta that fails, then of a slow full target = %v after %v; want ErrPaused within the %v bound", err, took.Round(time.Millisecond), maxTime)
	}
	if !strings.Contains(info.Fallback, "hash") {
		t.Errorf("fetch: fallback %q; want the delta's hash named", info.Fallback)
	}

	slow.Store(false)
	info, _, err = lab.f.fetch(ctx, lab.tgt, lab.dst)
	if err != nil || info.Method != "" {
		t.Fatalf("next round: %+v, %v; want the full target", info, err)
	}
	if got, _ := os.ReadFile(lab.dst); !bytes.Equal(got, v2) {
		t.Fatal("the slot holds other bytes than the target")
	}
	mu.Lock()
	defer mu.Unlock()
	if rs := requests[deltaURL]; len(rs) != 1 {
		t.Errorf("the delta was requested %d times (%q); want once, the full target resumed after it failed", len(rs), rs)
	}
	if rs := requests[fullURL]; len(rs) != 2 || rs[1] == "" || rs[1] == "bytes=0-" {
		t.Errorf("the full target was requested with Range %q; want it resumed at the next round", rs)
	}
}

// TestApplyStopsAtTheRoundBound: the apply of a delta ran outside the round's time
// bound, as long as the device took to write the result. It stops at the bound as a
// download does: the fetch is paused, the delta kept, and the next round builds the
// target from it without downloading it again.
func TestApplyStopsAtTheRoundBound(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	v1 := make([]byte, 4<<20)
	rand.NewChaCha8([32]byte{1}).Read(v1)
	v2 := bytes.Clone(v1)
	rand.NewChaCha8([32]byte{2}).Read(v2[len(v2)-len(v2)/8:])
	p1, p2 := addModel(r, "1.0.0", v1), addModel(r, "1.1.0", v2)
	d := makeDelta(t, v1, v2)
	deltaURL := targetURL(addDelta(r, p1, v1, p2, v2, d), d)
	r.Publish()
	dl := &Downloader{MaxTime: 300 * time.Millisecond}
	lab := newDeltaLab(t, r, v1, p2, r.TargetsURL(), dl)
	// 16 writes of 256 KiB, 500 ms each: 8 s.
	lab.c.wrapApply = func(w io.Writer) io.Writer { return slowWriter{w, 500 * time.Millisecond} }

	start := time.Now()
	_, _, err := lab.f.fetch(ctx, lab.tgt, lab.dst)
	if took := time.Since(start); !errors.Is(err, ErrPaused) || took > 3*time.Second {
		t.Fatalf("fetch with an apply of 8 s = %v after %v; want ErrPaused at the %v bound", err, took.Round(time.Millisecond), dl.MaxTime)
	}
	if _, err := os.Stat(lab.dst + deltaMarkSuffix); err == nil {
		t.Error("paused mid-apply: the mark of an apply that did not finish is there")
	}
	lab.c.wrapApply = nil
	info, _, err := lab.f.fetch(ctx, lab.tgt, lab.dst)
	if err != nil || info.Method != delta.MethodCDC || r.Hits(deltaURL) != 1 || r.Hits(targetURL(p2, v2)) != 0 {
		t.Fatalf("next round: %+v, %v; delta requested %d times, full target %d; want the kept delta applied", info, err, r.Hits(deltaURL), r.Hits(targetURL(p2, v2)))
	}
	if got, _ := os.ReadFile(lab.dst); !bytes.Equal(got, v2) {
		t.Fatal("the slot holds other bytes than the target")
	}
}

// TestApplyStopsWhenTheDeltaFails: the apply of a delta went on to its end after the
// delta's download had failed (here on its hash), as long as writing the result took,
// before the full target could follow (found from outside, 2 Dec). It stops when the
// download fails.
func TestApplyStopsWhenTheDeltaFails(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	v1 := make([]byte, 4<<20)
	rand.NewChaCha8([32]byte{1}).Read(v1)
	v2 := bytes.Clone(v1)
	rand.NewChaCha8([32]byte{2}).Read(v2[len(v2)-len(v2)/8:])
	p1, p2 := addModel(r, "1.0.0", v1), addModel(r, "1.1.0", v2)
	d := makeDelta(t, v1, v2)
	dp := addDelta(r, p1, v1, p2, v2, d)
	r.Publish()
	bad := bytes.Clone(d)
	bad[len(bad)-1] ^= 1 // the frame's checksum: the apply finds it only at the end
	r.Put(targetURL(dp, d), bad)
	lab := newDeltaLab(t, r, v1, p2, r.TargetsURL(), &Downloader{})
	// 16 writes of 256 KiB, 500 ms each: 8 s.
	lab.c.wrapApply = func(w io.Writer) io.Writer { return slowWriter{w, 500 * time.Millisecond} }

	start := time.Now()
	info, _, err := lab.f.fetch(ctx, lab.tgt, lab.dst)
	if took := time.Since(start); err != nil || took > 3*time.Second {
		t.Errorf("fetch of a delta refused on its hash, its apply 8 s long = %v after %v; want the full target at once", err, took.Round(time.Millisecond))
	}
	if info.Method != "" || !strings.Contains(info.Fallback, "hash") || r.Hits(targetURL(p2, v2)) != 1 {
		t.Errorf("fetch: %+v, full target requested %d times; want it once, after the delta refused on its hash", info, r.Hits(targetURL(p2, v2)))
	}
	if got, _ := os.ReadFile(lab.dst); !bytes.Equal(got, v2) {
		t.Fatal("the slot holds other bytes than the target")
	}
}

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

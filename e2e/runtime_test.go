package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/lab"
	"github.com/edgeward/edgeward/policy"
)

// TestRuntimeUpdate rolls out runtimes (ONNX Runtime libraries in the runtime slot).
// A library that does not load fails its trial: the slot rolls back, the device keeps
// serving and stays trusted. The real library then commits while two clients send
// inference requests without pause: none fails across the switch to the new runtime
// process. After an agent restart the runtime starts from the committed slot and its
// measurement keeps the device trusted.
func TestRuntimeUpdate(t *testing.T) {
	f := newFleet(t, 1)
	d := f.devs[0]
	f.startAgents()
	f.commit("1.0.0")

	bogus := filepath.Join(f.lab.Dir, "not-a-library.so")
	os.WriteFile(bogus, bytes.Repeat([]byte("not ELF "), 4096), 0o644)
	if _, err := f.repo.PublishRuntime(f.ctx, "onnxruntime", "1.24.0", bogus); err != nil {
		t.Fatal(err)
	}
	f.runtimeRollout("ort-broken", "1.24.0")
	var rep wire.Report
	err := lab.WaitFor(f.ctx, wait, "the broken runtime's report", func(context.Context) (bool, string, error) {
		for _, r := range f.reports("ort-broken")[d.ID] {
			rep = r
			return true, "", nil
		}
		return false, "", nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Outcome != wire.OutcomeProbeFailed || !strings.Contains(rep.Cause, "start the new runtime") {
		t.Fatalf("report of the broken runtime = %+v; want a failed trial (the process did not start)", rep)
	}
	if _, err := d.WaitServing(f.ctx, wait, "1.0.0"); err != nil {
		t.Fatal(err)
	}
	if err := f.srv.WaitTrusted(f.ctx, wait, f.devs, time.Now()); err != nil {
		t.Fatal(err)
	}

	// The real library, under load.
	body, err := lab.InferBody()
	if err != nil {
		t.Fatal(err)
	}
	var sent, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	url := fmt.Sprintf("http://127.0.0.1:%d/v2/models/%s/infer", d.Port, lab.Model)
	for c := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 30 * time.Second}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Idempotency-Key", fmt.Sprintf("c%d-%d", c, i)) // inference is idempotent: retried on a closed keep-alive connection
				sent.Add(1)
				resp, err := client.Do(req)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("HTTP %d", resp.StatusCode)
					}
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
			}
		}()
	}
	if _, err := f.repo.PublishRuntime(f.ctx, "onnxruntime", "1.24.3", os.Getenv("ONNXRUNTIME_LIB")); err != nil {
		t.Fatal(err)
	}
	f.runtimeRollout("ort", "1.24.3")
	err = f.srv.WaitCommitted(f.ctx, wait, f.devs, artifact.KindRuntime, "1.24.3")
	if err == nil {
		err = f.srv.WaitTrusted(f.ctx, wait, f.devs, time.Now())
	}
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d inference requests during the runtime update, %d failed", sent.Load(), failed.Load())
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d inference requests failed across the runtime switch (first: %v)", n, sent.Load(), firstErr.Load())
	}

	// Restart: the runtime comes from the committed slot and is measured again.
	if err := d.StopAgent(f.ctx); err != nil {
		t.Fatal(err)
	}
	since := time.Now()
	f.startAgents()
	if err := f.srv.WaitTrusted(f.ctx, wait, f.devs, since); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WaitServing(f.ctx, wait, "1.0.0"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(lab.Tail(d.Agent.LogPath, 400), filepath.Join(d.StateDir, "slots", "runtime")) {
		t.Errorf("after the restart the runtime was not started from the runtime slot:\n%s", d.Agent.Tail(20))
	}

	// The committed library changes on disk: at the next start it is measured as found
	// (and not run: the default library serves), the quote is not trusted, the device is
	// quarantined.
	want, err := f.repo.TargetSHA(f.ctx, "runtimes/onnxruntime/1.24.3.so")
	if err != nil {
		t.Fatal(err)
	}
	if err := d.StopAgent(f.ctx); err != nil {
		t.Fatal(err)
	}
	lib := ""
	for _, slot := range []string{"a", "b"} {
		p := filepath.Join(d.StateDir, "slots", "runtime", slot, "payload")
		if sum, err := sha256File(p); err == nil && sum == want {
			lib = p
		}
	}
	if lib == "" {
		t.Fatal("no runtime slot holds 1.24.3")
	}
	os.Chmod(lib, 0o644)
	fh, err := os.OpenFile(lib, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	fh.Write([]byte("tampered"))
	fh.Close()
	f.startAgents()
	err = lab.WaitFor(f.ctx, wait, d.Name+" to be quarantined", func(ctx context.Context) (bool, string, error) {
		fds, err := f.srv.Devices(ctx, f.devs)
		return err == nil && fds[d.Name].Quarantined, string(fds[d.Name].Verdict), err
	})
	if err != nil {
		t.Fatal(err)
	}
	fds, _ := f.srv.Devices(f.ctx, f.devs)
	if r := fds[d.Name].QuarantineReason; !strings.Contains(r, "runtime onnxruntime") {
		t.Errorf("quarantine reason %q; want the runtime's mismatch", r)
	}
}

// runtimeRollout rolls a runtime version out to every device.
func (f *fleetLab) runtimeRollout(id, version string) {
	f.t.Helper()
	if _, err := f.repo.CreateRollout(policy.RolloutSpec{ID: id, Target: policy.TargetSpec{Kind: artifact.KindRuntime, Name: "onnxruntime", Version: version}}); err != nil {
		f.t.Fatal(err)
	}
}

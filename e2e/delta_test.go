package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/delta"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/lab"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repository"
)

// wideWidth makes the delta tests' models about 4.2 MB (modelgen.Wide).
const wideWidth = 1024

// TestDeltaRollout (issue 17): two swtpm devices holding a 4.2 MB model take a retrain
// of its last layer as a delta: each downloads the delta only, commits, and reports
// method, bytes and bytes saved; the server's KPIs (`edgeward rollout status`) sum
// them. Then the next retrain's delta is corrupted on the server's disk (one byte
// flipped): both devices refuse it on its TUF hash, fall back to the full target, still
// commit, and their reports and the KPIs record the fallback and its reason.
func TestDeltaRollout(t *testing.T) {
	f := newFleet(t, 2)
	f.startAgents()
	ctx := f.ctx
	publish := func(version string, head uint64) *repository.PublishResult {
		t.Helper()
		res, err := f.repo.PublishWideModel(ctx, version, wideWidth, head, gates)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	roll := func(version string) string {
		t.Helper()
		id := "wide-" + version
		f.rollout(id, version, nil)
		if err := f.srv.WaitCommitted(ctx, wait, f.devs, artifact.KindModel, version); err != nil {
			t.Fatal(err)
		}
		return id
	}
	// committed returns each device's committed report of a rollout (exactly one).
	committed := func(id string) map[string]wire.Report {
		t.Helper()
		out := map[string]wire.Report{}
		for dev, reps := range f.reports(id) {
			for _, r := range reps {
				if r.Outcome == wire.OutcomeCommitted {
					if _, dup := out[dev]; dup {
						t.Errorf("%s: two commit reports from %s", id, dev)
					}
					out[dev] = r
				}
			}
		}
		if len(out) != len(f.devs) {
			t.Fatalf("%s: commit reports from %d devices; want %d", id, len(out), len(f.devs))
		}
		return out
	}
	token := f.operatorToken("rita", "release-manager")
	status := func(id string) (fleet.RolloutStatus, string) {
		t.Helper()
		env := []string{"EDGEWARD_SERVER=" + f.srv.URL, "EDGEWARD_TOKEN=" + token}
		out, err := f.lab.Run(ctx, env, bins.Edgeward, "rollout", "status", id, "--json")
		if err != nil {
			t.Fatal(err)
		}
		var st fleet.RolloutStatus
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("rollout status %s --json: %v\n%s", id, err, out)
		}
		text, err := f.lab.Run(ctx, env, bins.Edgeward, "rollout", "status", id)
		if err != nil {
			t.Fatal(err)
		}
		return st, text
	}

	// The base: installed whole (no earlier version to make a delta from).
	base := publish("3.0.0", 0)
	if len(base.Deltas) != 0 {
		t.Fatalf("3.0.0: deltas %+v; want none (no earlier version)", base.Deltas)
	}
	for _, r := range committed(roll("3.0.0")) {
		if r.Delta != "" || r.DeltaFallback != "" || r.Bytes != base.Length {
			t.Errorf("3.0.0 on %s: delta %q fallback %q bytes %d; want the full %d bytes", r.DeviceID, r.Delta, r.DeltaFallback, r.Bytes, base.Length)
		}
	}

	// The head retrained: a delta of a few KB instead of 4.2 MB.
	v1 := publish("3.0.1", 1)
	d1 := publishedDelta(t, v1, base.SHA256)
	t.Logf("3.0.1: full %d bytes, delta %d bytes (%.2f %%)", v1.Length, d1.Length, 100*float64(d1.Length)/float64(v1.Length))
	if d1.Length*20 > v1.Length {
		t.Fatalf("3.0.1: delta %d bytes of a %d-byte target; want under 5 %%", d1.Length, v1.Length)
	}
	id1 := roll("3.0.1")
	for _, r := range committed(id1) {
		if r.Delta != delta.MethodCDC || r.Bytes != d1.Length || r.BytesSaved != v1.Length-d1.Length || r.DeltaFallback != "" {
			t.Errorf("3.0.1 on %s: delta %q bytes %d saved %d fallback %q; want %q, %d, %d, none",
				r.DeviceID, r.Delta, r.Bytes, r.BytesSaved, r.DeltaFallback, delta.MethodCDC, d1.Length, v1.Length-d1.Length)
		}
	}
	for _, d := range f.devs {
		checkCommittedPayload(t, d, v1)
	}
	st, text := status(id1)
	k := st.KPI
	if k.DeltaInstalls != 2 || k.DeltaFallbacks != 0 || k.BytesSaved != 2*(v1.Length-d1.Length) || k.BytesDownloaded != 2*d1.Length {
		t.Errorf("rollout status %s: delta installs %d, fallbacks %d, saved %d, downloaded %d; want 2, 0, %d, %d",
			id1, k.DeltaInstalls, k.DeltaFallbacks, k.BytesSaved, k.BytesDownloaded, 2*(v1.Length-d1.Length), 2*d1.Length)
	}
	if !strings.Contains(text, "2 installs from deltas, 0 fell back to the full target") {
		t.Errorf("rollout status %s does not show the delta installs:\n%s", id1, text)
	}

	// The next retrain's delta from 3.0.1 corrupted where the server reads it.
	v2 := publish("3.0.2", 2)
	d2 := publishedDelta(t, v2, v1.SHA256)
	flipByte(t, f.repo.Repo.BlobPath(d2.SHA256))
	id2 := roll("3.0.2")
	for _, r := range committed(id2) {
		if r.Delta != "" || r.Bytes != v2.Length+d2.Length || r.BytesSaved != -d2.Length {
			t.Errorf("3.0.2 on %s: delta %q bytes %d saved %d; want the full target after the delta: \"\", %d, %d",
				r.DeviceID, r.Delta, r.Bytes, r.BytesSaved, v2.Length+d2.Length, -d2.Length)
		}
		if !strings.Contains(r.DeltaFallback, "download delta") || !strings.Contains(r.DeltaFallback, "hash mismatch") {
			t.Errorf("3.0.2 on %s: delta_fallback %q; want the delta refused on its hash", r.DeviceID, r.DeltaFallback)
		}
	}
	for _, d := range f.devs {
		checkCommittedPayload(t, d, v2)
	}
	st, text = status(id2)
	if k := st.KPI; k.DeltaInstalls != 0 || k.DeltaFallbacks != 2 || k.BytesSaved != -2*d2.Length {
		t.Errorf("rollout status %s: delta installs %d, fallbacks %d, saved %d; want 0, 2, %d", id2, k.DeltaInstalls, k.DeltaFallbacks, k.BytesSaved, -2*d2.Length)
	}
	if !strings.Contains(text, "0 installs from deltas, 2 fell back to the full target") {
		t.Errorf("rollout status %s does not show the fallbacks:\n%s", id2, text)
	}
}

// publishedDelta is the delta published with res from the base whose sha256 is baseSHA.
func publishedDelta(t *testing.T, res *repository.PublishResult, baseSHA string) repository.DeltaResult {
	t.Helper()
	for _, d := range res.Deltas {
		if d.Path == artifact.DeltaPath(res.Path, baseSHA) {
			if d.Skipped != "" {
				t.Fatalf("%s: the delta from %.16s was not published: %s", res.Path, baseSHA, d.Skipped)
			}
			return d
		}
	}
	t.Fatalf("%s: no delta from %.16s among %+v", res.Path, baseSHA, res.Deltas)
	return repository.DeltaResult{}
}

// checkCommittedPayload checks that the device's active model slot holds the target.
func checkCommittedPayload(t *testing.T, d *lab.Device, res *repository.PublishResult) {
	t.Helper()
	s := slotState(t, d)
	if s.Current == nil || s.Current.Path != res.Path {
		t.Fatalf("%s: committed %v; want %s", d.Name, s.Current, res.Path)
	}
	sum, err := sha256File(d.ModelPayload(string(s.Active)))
	if err != nil || sum != res.SHA256 {
		t.Errorf("%s: the active slot hashes to %.16s (%v); want %.16s", d.Name, sum, err, res.SHA256)
	}
}

// flipByte flips one byte in the middle of a file in place.
func flipByte(t *testing.T, path string) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, fi.Mode()|0o200); err != nil {
		t.Fatal(err)
	}
	fh, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	b := make([]byte, 1)
	off := fi.Size() / 2
	if _, err := fh.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := fh.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, fi.Mode()); err != nil {
		t.Fatal(err)
	}
	t.Logf("flipped the byte at %d of %s", off, filepath.Base(path))
}

// operatorToken creates an operator token on the fleet's repository.
func (f *fleetLab) operatorToken(name, role string) string {
	f.t.Helper()
	env := []string{"EDGEWARD_REPO=" + f.repo.Dir, "EDGEWARD_PASSPHRASE=e2e-passphrase"}
	out, err := f.lab.Run(f.ctx, env, bins.Edgeward, "token", "create", "--name", name, "--role", role)
	if err != nil {
		f.t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return lines[len(lines)-1]
}

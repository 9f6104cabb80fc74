package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/lab"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/runtime/modelgen"
)

// TestEncryptedRollout (issue 18): the demo's model, published encrypted, rolls out to
// swtpm devices through a real server holding the key-encryption key. Each device
// certifies its TPM decryption key, receives the content key wrapped to it, commits,
// and serves inference from the model decrypted in memory; no device's state directory
// or temporary directory holds a byte run of the plaintext.
func TestEncryptedRollout(t *testing.T) {
	need(t)
	ctx := context.Background()
	lb, err := lab.New(t.TempDir(), bins)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		lb.Close()
		if t.Failed() {
			entries, _ := os.ReadDir(filepath.Join(lb.Dir, "logs"))
			for _, e := range entries {
				t.Logf("--- %s (tail)\n%s", e.Name(), lab.Tail(filepath.Join(lb.Dir, "logs", e.Name()), 25))
			}
		}
	})
	repo, err := lab.InitRepo(ctx, filepath.Join(lb.Dir, "repo"), "e2e-passphrase", attestationPolicy)
	if err != nil {
		t.Fatal(err)
	}
	// The key-encryption key, made by the CLI, kept outside the repository.
	kekFile := filepath.Join(lb.Dir, "secrets", "kek")
	os.MkdirAll(filepath.Dir(kekFile), 0o700)
	if out, err := exec.Command(bins.Edgeward, "keys", "kek", "--out", kekFile).CombinedOutput(); err != nil {
		t.Fatalf("edgeward keys kek: %v\n%s", err, out)
	}
	b, err := os.ReadFile(kekFile)
	if err != nil {
		t.Fatal(err)
	}
	kek, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(strings.TrimSpace(string(b)), "edgeward-kek-v1 "))
	if err != nil || len(kek) != 32 {
		t.Fatalf("key-encryption key file %q: %v", b, err)
	}
	srv, err := lb.StartServer(ctx, lab.ServerConfig{Repo: repo.Dir, Args: []string{"--kek", kekFile}})
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(lb.Dir, "device-tmp")
	os.MkdirAll(tmp, 0o700)
	var devs []*lab.Device
	for i := range 2 {
		d, err := lb.NewDevice(ctx, fmt.Sprintf("device-%d", i+1), nil, srv, repo.RootJSON())
		if err != nil {
			t.Fatal(err)
		}
		d.AgentEnv = append(d.AgentEnv, "TMPDIR="+tmp) // the agent's and its runtimes' temporary files
		devs = append(devs, d)
	}
	errs := make(chan error, len(devs))
	for _, d := range devs {
		go func() { errs <- d.StartAgent(ctx) }()
	}
	for range devs {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}

	res, err := repo.PublishModelEncrypted(ctx, "1.0.0", gates, kek)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := modelgen.Model("1.0.0")
	if err != nil {
		t.Fatal(err)
	}
	if res.Length == int64(len(plain)) {
		t.Fatalf("published %d bytes, the plaintext's length: not encrypted", res.Length)
	}
	if _, err := repo.CreateRollout(policy.RolloutSpec{ID: "vib-enc", Target: policy.TargetSpec{Kind: artifact.KindModel, Name: lab.Model, Version: "1.0.0"}}); err != nil {
		t.Fatal(err)
	}
	if err := srv.WaitCommitted(ctx, wait, devs, artifact.KindModel, "1.0.0"); err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		r, err := d.Infer(ctx, lab.Model)
		if err != nil || r.Code != http.StatusOK || r.Version != "1.0.0" {
			t.Fatalf("%s: inference = %+v, %v; want 200 from 1.0.0", d.Name, r, err)
		}
	}
	decommissionedGetsNothing(t, lb, srv, repo, devs, kek)

	runs := [][]byte{plain[len(plain)/4:][:48], plain[len(plain)/2:][:48], plain[3*len(plain)/4:][:48]}
	var roots []string
	for _, d := range devs {
		roots = append(roots, d.StateDir)
	}
	roots = append(roots, tmp)
	for _, root := range roots {
		filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
			if err != nil || !e.Type().IsRegular() {
				return nil
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return nil
			}
			for _, r := range runs {
				if bytes.Contains(b, r) {
					t.Errorf("plaintext of the model found in %s", p)
					break
				}
			}
			return nil
		})
	}
}

// decommissionedGetsNothing: a security admin decommissions devs[1] through the real
// CLI and server; a new encrypted version then reaches devs[0] with its content key,
// while devs[1], whose TPM still attests, has every check-in refused (403 in its
// agent's log), gets neither the version nor its key, and keeps serving 1.0.0.
func decommissionedGetsNothing(t *testing.T, lb *lab.Lab, srv *lab.Server, repo *lab.Repo, devs []*lab.Device, kek []byte) {
	t.Helper()
	ctx := context.Background()
	tok, err := exec.Command(bins.Edgeward, "token", "create", "--repo", repo.Dir, "--name", "sec", "--role", "security-admin").Output()
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(tok)), "\n")
	cli := []string{"EDGEWARD_SERVER=" + srv.URL, "EDGEWARD_TOKEN=" + lines[len(lines)-1]}
	gone := devs[1]
	out, err := lb.Run(ctx, cli, bins.Edgeward, "devices", "decommission", gone.ID, "--reason", "stolen from the line")
	if err != nil || !strings.Contains(out, "decommissioned at") {
		t.Fatalf("edgeward devices decommission: %v\n%s", err, out)
	}
	if _, err := repo.PublishModelEncrypted(ctx, "1.1.0", gates, kek); err != nil {
		t.Fatal(err)
	}
	if _, err := repo.CreateRollout(policy.RolloutSpec{ID: "vib-enc-2", Target: policy.TargetSpec{Kind: artifact.KindModel, Name: lab.Model, Version: "1.1.0"}}); err != nil {
		t.Fatal(err)
	}
	if err := srv.WaitCommitted(ctx, wait, devs[:1], artifact.KindModel, "1.1.0"); err != nil {
		t.Fatal(err)
	}
	// The device kept checking in meanwhile (every few seconds): each was refused.
	err = lab.WaitFor(ctx, wait, "the decommissioned device's refused check-in", func(context.Context) (bool, string, error) {
		b, _ := os.ReadFile(gone.Agent.LogPath)
		return strings.Contains(string(b), "403: device decommissioned"), "", nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := gone.Infer(ctx, lab.Model); err != nil || r.Code != http.StatusOK || r.Version != "1.0.0" {
		t.Fatalf("decommissioned device: inference = %+v, %v; want 200 from 1.0.0 still", r, err)
	}
	reps, err := srv.Reports(ctx, fleet.ReportFilter{DeviceID: gone.ID})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range reps {
		if r.Version == "1.1.0" {
			t.Fatalf("decommissioned device reported %+v", r)
		}
	}
	st, err := srv.Fleet(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	d, err := st.Device(ctx, gone.ID)
	if err != nil || !d.Decommissioned() || d.DecommissionReason != "stolen from the line" || d.Slots[artifact.KindModel].Version != "1.0.0" {
		t.Fatalf("decommissioned device in the fleet store: %+v, %v", d, err)
	}
}

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/agent"
	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/lab"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/updater"
)

// olderServerRev is the last version of the server that refused a whole check-in for
// one invalid report (400), before 213de7b made it refuse that report alone.
const olderServerRev = "213de7b^"

// TestAgentIsolatesReportsForAnOlderServer (issue 12): this tree's agent against the
// older server itself, built from git history (olderServerRev) and run as a process
// (`edgeward server`, sqlite). The agent's outbox holds three install reports, the
// second of which that server refuses (an outcome it does not know); it refuses every
// check-in that carries it, whole. The agent finds that the check-in without its
// reports is accepted, sends the reports one at a time, sets the refused one aside in
// its dead letters and delivers the other two: the server stores each once.
func TestAgentIsolatesReportsForAnOlderServer(t *testing.T) {
	need(t)
	ctx := context.Background()
	older := buildOlderServer(t, olderServerRev)
	lb, err := lab.New(t.TempDir(), lab.Bins{Edgeward: older, Agent: bins.Agent, Runtime: bins.Runtime})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeLab(t, lb) })
	// The repository is made by this tree's library, its own audit records kept apart,
	// so that the older server creates its database (fleet.db) with its own schema.
	repo, err := lab.InitRepoOn(ctx, filepath.Join(lb.Dir, "repo"), filepath.Join(lb.Dir, "init-audit.db"), "e2e-passphrase", attestationPolicy)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := lb.StartServer(ctx, lab.ServerConfig{Repo: repo.Dir})
	if err != nil {
		t.Fatal(err)
	}
	d, err := lb.NewDevice(ctx, "device-1", nil, srv, repo.RootJSON())
	if err != nil {
		t.Fatal(err)
	}
	o, err := updater.OpenOutbox(ctx, agent.StateDir(d.StateDir).Outbox())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	var ids []string
	for i, outcome := range []wire.Outcome{wire.OutcomeInfrastructure, "exploded", wire.OutcomeInfrastructure} {
		id, err := o.Put(ctx, "install", wire.Report{Kind: artifact.KindModel, Name: lab.Model, Version: "1.0.0", Outcome: outcome,
			Cause: fmt.Sprintf("disk full (report %d)", i), At: now}, now)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
		now = now.Add(time.Millisecond) // sent oldest first
	}
	o.Close()
	if err := d.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	var st agent.Status
	err = lab.WaitFor(ctx, wait, "the agent's outbox to empty with one report set aside", func(ctx context.Context) (bool, string, error) {
		out, err := lb.Run(ctx, nil, bins.Agent, "status", "--state-dir", d.StateDir, "--json")
		if err != nil {
			return false, "", err
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return false, "", err
		}
		return st.ReportsWaiting == 0 && st.ReportsRefused == 1, fmt.Sprintf("%d waiting, %d refused", st.ReportsWaiting, st.ReportsRefused), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.StopAgent(ctx); err != nil {
		t.Fatal(err)
	}
	// The older server refused whole check-ins for the report (it knows no
	// reports_refused): the batch of three, then the report sent alone.
	b, _ := os.ReadFile(srv.Proc.LogPath)
	refusals := 0
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, `"msg":"check-in"`) && strings.Contains(line, `unknown outcome \"exploded\"`) {
			refusals++
		}
	}
	if refusals != 2 {
		t.Errorf("the older server refused %d check-ins for the report; want 2 (the batch, then the report alone):\n%s", refusals, srv.Proc.Tail(20))
	}
	if o, err = updater.OpenOutbox(ctx, agent.StateDir(d.StateDir).Outbox()); err != nil {
		t.Fatal(err)
	}
	dead, err := o.DeadLetters(ctx)
	o.Close()
	if err != nil || len(dead) != 1 || dead[0].ID != ids[1] || !strings.Contains(string(dead[0].Body), "exploded") {
		t.Fatalf("dead letters = %+v, %v; want the second report only", dead, err)
	}
	// Stopped first: this tree's fleet store upgrades the older schema when it opens it.
	srv.Stop()
	stored, err := srv.Reports(ctx, fleet.ReportFilter{DeviceID: d.ID})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range stored {
		got = append(got, string(r.Outcome)+": "+r.Cause)
	}
	slices.Sort(got)
	if want := []string{"infrastructure: disk full (report 0)", "infrastructure: disk full (report 2)"}; !slices.Equal(got, want) {
		t.Errorf("the older server stored %q; want %q (once each)", got, want)
	}
}

// buildOlderServer builds `edgeward` as it was at rev (git archive of this repository,
// then go build) and returns the binary. Without the history (a shallow clone) t is
// skipped: git history is not a dependency the project installs.
func buildOlderServer(t *testing.T, rev string) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("git", "-C", root, "rev-parse", "--verify", "--quiet", rev+"^{commit}").CombinedOutput(); err != nil {
		t.Skipf("no git history for %s here (%v: %s): cannot build the older server", rev, err, out)
	}
	src := t.TempDir()
	archive := exec.Command("sh", "-c", `git -C "$1" archive "$2" | tar -x -C "$3"`, "sh", root, rev, src)
	if out, err := archive.CombinedOutput(); err != nil {
		t.Fatalf("git archive %s: %v\n%s", rev, err, out)
	}
	bin := filepath.Join(t.TempDir(), "edgeward")
	build := exec.Command("go", "build", "-o", bin, "./cmd/edgeward")
	build.Dir = src
	build.Env = append(os.Environ(), "CGO_ENABLED=1")
	start := time.Now()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the server at %s: %v\n%s", rev, err, out)
	}
	t.Logf("built the server at %s in %.0f s", rev, time.Since(start).Seconds())
	return bin
}

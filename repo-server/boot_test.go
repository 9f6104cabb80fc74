package reposerver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/ima"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
)

// The boot applications (PCR 4) of go-attestation's Ubuntu 21.04 boot log: shim, then
// GRUB.
const (
	ubuntuShim = "6265b732b005b3f330bcd1843374e5ec6ec5aef27cdb97a23daeb8580abbf526"
	ubuntuGrub = "b0a836fec2faf4a9bea0e1a5f1945bc86ddc03ac98ce0ae172ed9b1e536d7595"
)

const bootPolicy = `version: 1
attestation:
  required: true
  max_age: 30m
  boot:
    - hardware: [x86_64]
      boot_applications: [` + ubuntuShim + `, ` + ubuntuGrub + `]
rollouts:
  - id: vib-1.0.0
    target: {kind: model, name: vibration, version: 1.0.0}
    selector: {labels: {line: press}}
    waves: [{percent: 100}]
`

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestMeasuredBootCheckIn: a device whose TPM's boot PCRs hold a real boot and which
// sends that boot's event log is trusted under a boot policy that allows its boot
// loaders; its boot state is recorded with the verdict. The same device sending a log
// with one event edited, or none, is untrusted, says which PCR, and is quarantined
// with an audit record.
func TestMeasuredBootCheckIn(t *testing.T) {
	f, d := newDeviceFixtureWith(t, bootPolicy)
	log, err := attesttest.RealBootLog(attesttest.BootLogUbuntu)
	if err != nil {
		t.Fatal(err)
	}
	if err := attesttest.ReplayBootLog(context.Background(), d.tpm, log); err != nil {
		t.Fatal(err)
	}

	d.bootLog = log
	resp, err := d.checkIn(d.request())
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Trusted {
		t.Fatalf("check-in with the genuine boot log = %+v; want trusted", resp)
	}

	// No boot log: the policy requires one.
	d.bootLog = nil
	resp, err = d.checkIn(d.request())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Trusted || !resp.Quarantined || !strings.Contains(strings.Join(resp.Reasons, " "), "boot_log_missing") {
		t.Fatalf("check-in without a boot log = %+v; want untrusted (boot_log_missing) and quarantined", resp)
	}
	if err := f.store.SetQuarantine(context.Background(), d.id, false, ""); err != nil {
		t.Fatal(err)
	}

	// One PCR 4 event edited (GRUB's digest swapped for another): the log no longer
	// replays to the quoted PCR 4.
	head, events, err := attesttest.SplitBootLog(log)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range events {
		if j := strings.Index(string(e), string(mustHex(t, ubuntuGrub))); j >= 0 {
			events[i] = []byte(strings.Replace(string(e), string(mustHex(t, ubuntuGrub)), string(mustHex(t, ubuntuShim)), 1))
		}
	}
	d.bootLog = attesttest.JoinBootLog(head, events)
	resp, err = d.checkIn(d.request())
	if err != nil {
		t.Fatal(err)
	}
	reasons := strings.Join(resp.Reasons, " ")
	if resp.Trusted || !resp.Quarantined || !strings.Contains(reasons, "boot_replay_mismatch: PCR 4") {
		t.Fatalf("check-in with an edited boot log = %+v; want untrusted (boot_replay_mismatch: PCR 4) and quarantined", resp)
	}
	dev, err := f.store.Device(context.Background(), d.id)
	if err != nil || dev.Verdict != policy.VerdictUntrusted || !dev.Quarantined {
		t.Fatalf("stored device = %+v, %v; want untrusted and quarantined", dev, err)
	}
	kinds := strings.Join(auditKinds(t, f.fixture, d.id), ",")
	if strings.Count(kinds, "device.quarantine") < 2 {
		t.Fatalf("audit records = %s; want a device.quarantine per quarantine", kinds)
	}
}

const runtimePolicy = `version: 1
attestation:
  required: true
  max_age: 30m
  runtime:
    enforce: true
`

// TestAgentTargetsTrustIMA: the trusted builds of edgeward-agent and edgeward-runtime
// are the published agent targets (agents/…, signed by the runtimes role), not a list
// in the policy. The real built binaries are published; a device whose IMA list (real
// binary format, extended into PCR 10 after its boot_aggregate) shows them is trusted;
// the same device running a modified agent is untrusted, the reason naming the file,
// and quarantined; an unknown root executable is flagged.
func TestAgentTargetsTrustIMA(t *testing.T) {
	dir := t.TempDir()
	sums := map[string]string{}
	for _, c := range []string{artifact.AgentBinary, artifact.RuntimeBinary} {
		bin := filepath.Join(dir, c)
		if out, err := exec.Command("go", "build", "-o", bin, "../cmd/"+c).CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", c, err, out)
		}
		sum, err := artifact.FileSHA256(bin)
		if err != nil {
			t.Fatal(err)
		}
		sums[c] = sum
	}
	f, d := newDeviceFixtureWith(t, runtimePolicy)
	ctx := context.Background()
	var list []ima.Entry
	run := func(path, sum string) {
		t.Helper()
		e := ima.NG(path, [32]byte(mustHex(t, sum)))
		if err := d.tpm.Extend(ctx, ima.PCR, e.ExtendDigest()); err != nil {
			t.Fatal(err)
		}
		list = append(list, e)
		d.imaLog = ima.Marshal(list)
	}
	pcrs, err := d.tpm.ReadPCRs(ctx, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9)
	if err != nil {
		t.Fatal(err)
	}
	agg, _ := ima.BootAggregate(pcrs, 9)
	run("boot_aggregate", hex.EncodeToString(agg[:]))
	run("/usr/bin/edgeward-agent", sums[artifact.AgentBinary])
	run("/usr/bin/edgeward-runtime", sums[artifact.RuntimeBinary])

	checkIn := func() *wire.CheckInResponse {
		t.Helper()
		resp, err := d.checkIn(d.request())
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	// Not published yet: nothing trusts these builds.
	if resp := checkIn(); resp.Trusted || !strings.Contains(strings.Join(resp.Reasons, " "), "/usr/bin/edgeward-agent has digest "+sums[artifact.AgentBinary]) {
		t.Fatalf("check-in before the agent is published = %+v; want untrusted naming the agent", resp)
	}
	if err := f.store.SetQuarantine(ctx, d.id, false, ""); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{artifact.AgentBinary, artifact.RuntimeBinary} {
		b, err := os.ReadFile(filepath.Join(dir, c))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.publish(artifact.KindAgent, c, "1.0.0", "", b, nil); err != nil {
			t.Fatalf("publish %s: %v", c, err)
		}
	}
	if resp := checkIn(); !resp.Trusted {
		t.Fatalf("check-in running the published agent and runtime = %+v; want trusted", resp)
	}

	// A root executable nobody allowed: flagged (enforce).
	run("/usr/local/bin/tpm2_pcrreset", strings.Repeat("5a", 32))
	resp := checkIn()
	if reasons := strings.Join(resp.Reasons, " "); resp.Trusted || !strings.Contains(reasons, "ima_untrusted_file") || !strings.Contains(reasons, "/usr/local/bin/tpm2_pcrreset") {
		t.Fatalf("check-in after an unknown root executable = %+v; want untrusted naming it", resp)
	}
	if err := f.store.SetQuarantine(ctx, d.id, false, ""); err != nil {
		t.Fatal(err)
	}

	// A modified agent binary (one byte appended) runs.
	b, err := os.ReadFile(filepath.Join(dir, artifact.AgentBinary))
	if err != nil {
		t.Fatal(err)
	}
	modified := sha256.Sum256(append(b, 0))
	run("/usr/bin/edgeward-agent", hex.EncodeToString(modified[:]))
	resp = checkIn()
	reasons := strings.Join(resp.Reasons, " ")
	if resp.Trusted || !resp.Quarantined || !strings.Contains(reasons, "/usr/bin/edgeward-agent has digest "+hex.EncodeToString(modified[:])) {
		t.Fatalf("check-in running a modified agent = %+v; want untrusted naming /usr/bin/edgeward-agent and quarantined", resp)
	}
	dev, err := f.store.Device(ctx, d.id)
	if err != nil || dev.Verdict != policy.VerdictUntrusted || !dev.Quarantined {
		t.Fatalf("stored device = %+v, %v; want untrusted and quarantined", dev, err)
	}
}

// TestBootLogVerifiedWithoutBootPolicy: with no boot policy, a boot log the device
// sends still has to replay to its quoted PCRs 0–7. Decision (issue 19): a log that
// does not replay is never silently accepted: the verdict is untrusted and the device
// quarantined, naming the PCR; a device whose firmware writes a log that cannot
// replay is run with --boot-log none until a policy can tell (docs/DEVICES.md).
func TestBootLogVerifiedWithoutBootPolicy(t *testing.T) {
	f, d := newDeviceFixture(t) // testPolicy: attestation required, no boot section
	log, err := attesttest.RealBootLog(attesttest.BootLogUbuntu)
	if err != nil {
		t.Fatal(err)
	}
	if err := attesttest.ReplayBootLog(context.Background(), d.tpm, log); err != nil {
		t.Fatal(err)
	}
	d.bootLog = log
	resp, err := d.checkIn(d.request())
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Trusted {
		t.Fatalf("check-in with its own boot log and no boot policy = %+v; want trusted", resp)
	}
	if dev, err := f.store.Device(context.Background(), d.id); err != nil || dev.Boot == nil || len(dev.Boot.BootApplications) != 2 {
		t.Fatalf("stored boot state = %+v, %v; want the verified boot (shim, GRUB)", dev.Boot, err)
	}
	other, err := attesttest.RealBootLog(attesttest.BootLogCoreOS) // another machine's log
	if err != nil {
		t.Fatal(err)
	}
	d.bootLog = other
	resp, err = d.checkIn(d.request())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Trusted || !resp.Quarantined || !strings.Contains(strings.Join(resp.Reasons, " "), "boot_replay_mismatch: PCR ") {
		t.Fatalf("check-in with a log that does not replay, no boot policy = %+v; want untrusted (boot_replay_mismatch naming the PCR) and quarantined", resp)
	}
}

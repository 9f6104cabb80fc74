package verify_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/attest/verify"
	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/eventlog"
	"github.com/edgeward/edgeward/internal/ima"
	"github.com/edgeward/edgeward/internal/reference"
)

// builtBinaries builds edgeward-agent and edgeward-runtime and returns their SHA-256
// digests: the files a device's kernel measures when it runs them.
func builtBinaries(t *testing.T) (agentPath, agentSum, runtimeSum string) {
	t.Helper()
	dir := t.TempDir()
	for _, c := range []string{"edgeward-agent", "edgeward-runtime"} {
		if out, err := exec.Command("go", "build", "-o", filepath.Join(dir, c), "../../cmd/"+c).CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", c, err, out)
		}
	}
	agentPath = filepath.Join(dir, "edgeward-agent")
	return agentPath, fileSum(t, agentPath), fileSum(t, filepath.Join(dir, "edgeward-runtime"))
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	s, err := artifact.FileSHA256(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func ng(t *testing.T, path, sum string) ima.Entry {
	t.Helper()
	b, err := hex.DecodeString(sum)
	if err != nil || len(b) != 32 {
		t.Fatalf("digest %q: %v", sum, err)
	}
	return ima.NG(path, [32]byte(b))
}

// imaPCRs are what the agent quotes with an IMA list: PCRs 0-9 (boot_aggregate), 10
// and the artifact PCR.
var imaPCRs = []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ima.PCR, eventlog.PCRDevelopment}

// kernelBootedDevice is an enrolled simulator device booted as a real machine: a real boot log
// replayed into PCRs 0-7 as firmware would, PCRs 8 and 9 extended as GRUB does (the
// kernel command line, the kernel image). It returns the kernel's boot_aggregate for
// the boot (PCRs 0-9, Linux 5.8 and later).
func kernelBootedDevice(t *testing.T, ca *attestca.CA, maker *attesttest.Manufacturer) (d *device, agg9 string) {
	t.Helper()
	ctx := context.Background()
	d = enrolledDevice(t, ca, maker)
	log, err := attesttest.RealBootLog(attesttest.BootLogUbuntu)
	if err != nil {
		t.Fatal(err)
	}
	if err := attesttest.ReplayBootLog(ctx, d.tpm, log); err != nil {
		t.Fatal(err)
	}
	for pcr, what := range map[int]string{8: "kernel_cmdline: /vmlinuz root=/dev/sda1 ro ima_template=ima-ng ima_hash=sha256", 9: "/vmlinuz-6.1.0"} {
		if err := d.tpm.Extend(ctx, pcr, sha256.Sum256([]byte(what))); err != nil {
			t.Fatal(err)
		}
	}
	pcrs, err := d.tpm.ReadPCRs(ctx, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9)
	if err != nil {
		t.Fatal(err)
	}
	a9, _ := ima.BootAggregate(pcrs, 9)
	return d, hex.EncodeToString(a9[:])
}

// TestIMA: an IMA list in the kernel's binary format, naming the real digests of the
// built agent and runtime, extended into the simulator's PCR 10 as the kernel does,
// after a real boot log was replayed into PCRs 0-7. The trusted agent and runtime
// builds are the published agent targets (Policy.AgentBuilds, from the signed TUF
// metadata). The genuine binaries pass; an edited, truncated or reordered list fails;
// a modified agent fails with its file name; an unknown root executable is flagged;
// and the attack the artifact PCR alone cannot see — a root process resets PCR 16 and
// replays the digests the server expects — is untrusted, because the process itself
// is in the IMA list.
func TestIMA(t *testing.T) {
	agentPath, agentSum, runtimeSum := builtBinaries(t)
	libc := "/lib/x86_64-linux-gnu/libc.so.6"
	if _, err := os.Stat(libc); err != nil {
		libc, _ = os.Executable()
	}
	libcSum := fileSum(t, libc)
	ortSum := hex.EncodeToString(func() []byte { s := sha256.Sum256([]byte("libonnxruntime 1.24.0 as published")); return s[:] }())
	self, _ := os.Executable()
	attackerSum := fileSum(t, self)

	ca, maker := newCA(t)
	d, agg9 := kernelBootedDevice(t, ca, maker)
	ctx := context.Background()
	var list []ima.Entry
	run := func(e ima.Entry) { // the kernel measures a file before it runs
		t.Helper()
		if err := d.tpm.Extend(ctx, ima.PCR, e.ExtendDigest()); err != nil {
			t.Fatal(err)
		}
		list = append(list, e)
	}
	run(ng(t, "boot_aggregate", agg9))
	run(ng(t, "/usr/lib/x86_64-linux-gnu/libc.so.6", libcSum))
	run(ng(t, "/usr/bin/edgeward-agent", agentSum))
	rtSig := ima.Sig("/usr/bin/edgeward-runtime", [32]byte(must(hex.DecodeString(runtimeSum))), []byte{3, 2, 4, 0x8f, 0xa1, 0x1c, 0x7e, 0, 3, 's', 'i', 'g'})
	run(rtSig) // an ima-sig entry: the template a signed distribution's IMA policy uses
	run(ng(t, "/var/lib/edgeward/slots/runtime/a/libonnxruntime.so.1.24.0", ortSum))

	nonce := bytes.Repeat([]byte{9}, 32)
	evidence := func(l []ima.Entry, pcrs ...int) verify.Evidence {
		t.Helper()
		if pcrs == nil {
			pcrs = imaPCRs
		}
		ev, err := d.tpm.Evidence(ctx, d.akCert, nonce, pcrs, slices.Clone(d.log))
		if err != nil {
			t.Fatal(err)
		}
		if l != nil {
			ev.IMALog = ima.Marshal(l)
		}
		return *ev
	}
	rt := reference.Runtime{Allowed: []string{libcSum}, Enforce: true}
	builds := map[string][]string{artifact.AgentBinary: {agentSum}, artifact.RuntimeBinary: {runtimeSum}}
	policy := verify.Policy{Roots: ca.Roots(), Runtime: &rt, RuntimeLibraries: []string{ortSum}, RuntimeSlot: ortSum, AgentBuilds: builds,
		Expected: []eventlog.Artifact{art(runtimeV1), art(modelV3)}}
	check := func(name string, p verify.Policy, ev verify.Evidence, want []verify.Code, detail string) verify.Verdict {
		t.Helper()
		v := verify.Verify(p, ev, nonce, time.Now())
		if got := slices.Compact(codes(v)); !slices.Equal(got, want) {
			t.Errorf("%s: Verify = %v; want codes %v", name, v.Reasons, want)
		} else if detail != "" && !strings.Contains(v.Reasons[0].Detail, detail) {
			t.Errorf("%s: reason %q does not name %q", name, v.Reasons[0].Detail, detail)
		}
		return v
	}

	// The genuine device.
	v := check("genuine", policy, evidence(list), nil, "")
	if v.Runtime == nil || v.Runtime.Entries != len(list) || v.Runtime.Agent[0] != agentSum || v.Runtime.Runtime[0] != runtimeSum {
		t.Fatalf("runtime state = %+v; want %d entries and the agent's and runtime's digests", v.Runtime, len(list))
	}
	// The list is read after the quote: entries past it are not covered, not wrong.
	later := append(slices.Clone(list), ng(t, "/usr/bin/later", libcSum))
	check("list runs past the quote", policy, evidence(later), nil, "")
	// The trusted builds may also be listed in the policy (a build not published).
	listed := policy
	listed.AgentBuilds = nil
	listedRT := rt
	listedRT.Agent, listedRT.Runtime = []string{agentSum}, []string{runtimeSum}
	listed.Runtime = &listedRT
	check("builds listed in the policy", listed, evidence(list), nil, "")

	// Hostile lists.
	edited := ima.Marshal(list)
	edited[bytes.Index(edited, []byte("edgeward-runtime"))] ^= 'x' ^ 'e'
	ev := evidence(nil)
	ev.IMALog = edited
	check("a path edited", policy, ev, []verify.Code{verify.IMALogMalformed}, "template hash")
	check("an entry dropped", policy, evidence(slices.Delete(slices.Clone(list), 2, 3)), []verify.Code{verify.IMAReplayMismatch}, "")
	swapped := slices.Clone(list)
	swapped[2], swapped[3] = swapped[3], swapped[2]
	check("reordered", policy, evidence(swapped), []verify.Code{verify.IMAReplayMismatch}, "")
	check("truncated", policy, evidence(list[:3]), []verify.Code{verify.IMAReplayMismatch}, "")
	forgedAgent := slices.Clone(list)
	forgedAgent[2] = ng(t, "/usr/bin/edgeward-agent", strings.Repeat("ab", 32))
	check("the agent's digest swapped in the list", policy, evidence(forgedAgent), []verify.Code{verify.IMAReplayMismatch}, "")
	check("no list, policy requires one", policy, evidence(nil), []verify.Code{verify.IMALogMissing}, "")
	check("PCR 10 not quoted", policy, evidence(list, 0, 1, 2, 3, 4, 5, 6, 7, eventlog.PCRDevelopment), []verify.Code{verify.IMAPCRNotQuoted}, "[10]")
	check("boot PCRs not quoted", policy, evidence(list, ima.PCR, eventlog.PCRDevelopment), []verify.Code{verify.IMAPCRNotQuoted}, "[0 1 2 3 4 5 6 7]")
	check("PCRs 8-9 not quoted: only the 0-7 aggregate can match", policy, evidence(list, 0, 1, 2, 3, 4, 5, 6, 7, ima.PCR, eventlog.PCRDevelopment), []verify.Code{verify.IMABootAggregate}, "PCRs 8-9 not quoted")
	unpublished := policy
	unpublished.AgentBuilds = map[string][]string{artifact.AgentBinary: {strings.Repeat("cd", 32)}, artifact.RuntimeBinary: {runtimeSum}}
	check("agent build not published", unpublished, evidence(list), []verify.Code{verify.IMAUntrustedFile}, "/usr/bin/edgeward-agent")
	unpublished.AgentBuilds = map[string][]string{artifact.AgentBinary: {agentSum}}
	check("runtime build not published", unpublished, evidence(list), []verify.Code{verify.IMAUntrustedFile}, "/usr/bin/edgeward-runtime")
	noORT := policy
	noORT.RuntimeLibraries = nil
	check("ONNX Runtime library not published", noORT, evidence(list), []verify.Code{verify.IMAUntrustedFile}, "libonnxruntime.so.1.24.0")
	otherSlot := policy
	otherSlot.RuntimeSlot = strings.Repeat("ef", 32)
	check("the runtime slot's library never loaded", otherSlot, evidence(list), []verify.Code{verify.IMARuntimeNotLoaded}, otherSlot.RuntimeSlot)

	// The attack: a root process resets the artifact PCR and replays what the server
	// expects. The artifact log alone verifies; the IMA list names the process.
	run(ng(t, "/usr/local/bin/pcr-replay", attackerSum))
	if err := d.tpm.ResetPCR(ctx, eventlog.PCRDevelopment); err != nil {
		t.Fatal(err)
	}
	replayed := d.log
	d.log = nil
	for _, e := range replayed {
		d.measure(t, e)
	}
	noIMA := policy
	noIMA.Runtime = nil
	if v := verify.Verify(noIMA, evidence(nil), nonce, time.Now()); !v.Trusted {
		t.Fatalf("the replayed artifact log alone = %v; the attack should fool it (that is the gap)", v.Reasons)
	}
	check("attack, enforce", policy, evidence(list), []verify.Code{verify.IMAUntrustedFile}, "/usr/local/bin/pcr-replay")
	audit := policy
	auditRT := rt
	auditRT.Enforce = false
	audit.Runtime = &auditRT
	v = check("attack, audit only", audit, evidence(list), nil, "")
	if v.Runtime == nil || len(v.Runtime.Unknown) != 1 || !strings.HasPrefix(v.Runtime.Unknown[0], "/usr/local/bin/pcr-replay ") {
		t.Errorf("audit-only runtime state = %+v; want the replaying process listed as unknown", v.Runtime)
	}

	// A modified agent binary runs: its digest is no published agent target.
	modified := fileSum(t, func() string {
		b, err := os.ReadFile(agentPath)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(t.TempDir(), "edgeward-agent")
		if err := os.WriteFile(p, append(b, 0), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}())
	run(ng(t, "/usr/bin/edgeward-agent", modified))
	check("modified agent", audit, evidence(list), []verify.Code{verify.IMAUntrustedFile}, "/usr/bin/edgeward-agent has digest "+modified)

}

// TestIMABootAggregate: the list's first entry must digest the quoted PCRs 0-9 (or
// 0-7, kernels before 5.8): an older kernel's passes; a list whose boot_aggregate is
// another boot's (another machine's list, or one replayed into PCR 10 on a device whose
// boot PCRs differ) fails, naming both values.
func TestIMABootAggregate(t *testing.T) {
	ca, maker := newCA(t)
	var other string
	t.Run("the booted device", func(t *testing.T) {
		_, other = kernelBootedDevice(t, ca, maker)
	})
	ctx := context.Background()
	nonce := bytes.Repeat([]byte{7}, 32)
	agent := strings.Repeat("12", 32)
	rt := reference.Runtime{Enforce: true}
	builds := map[string][]string{artifact.AgentBinary: {agent}}
	for _, tc := range []struct {
		name string
		agg  func(agg9, agg7 string) string
		want []verify.Code
	}{
		{"PCRs 0-9 (Linux 5.8 and later)", func(a9, _ string) string { return a9 }, nil},
		{"PCRs 0-7 (kernels before 5.8)", func(_, a7 string) string { return a7 }, nil},
		{"another boot's", func(string, string) string { return other }, []verify.Code{verify.IMABootAggregate}},
		{"zero (IMA ran without the TPM)", func(string, string) string { return strings.Repeat("00", 32) }, []verify.Code{verify.IMABootAggregate}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := enrolledDevice(t, ca, maker) // PCRs 0-9 as a boot that measured nothing
			pcrs, err := d.tpm.ReadPCRs(ctx, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9)
			if err != nil {
				t.Fatal(err)
			}
			a9, _ := ima.BootAggregate(pcrs, 9)
			a7, _ := ima.BootAggregate(pcrs, 7)
			agg := tc.agg(hex.EncodeToString(a9[:]), hex.EncodeToString(a7[:]))
			l := []ima.Entry{ng(t, "boot_aggregate", agg), ng(t, "/usr/bin/edgeward-agent", agent)}
			for _, e := range l {
				if err := d.tpm.Extend(ctx, ima.PCR, e.ExtendDigest()); err != nil {
					t.Fatal(err)
				}
			}
			ev, err := d.tpm.Evidence(ctx, d.akCert, nonce, imaPCRs, slices.Clone(d.log))
			if err != nil {
				t.Fatal(err)
			}
			ev.IMALog = ima.Marshal(l)
			v := verify.Verify(verify.Policy{Roots: ca.Roots(), Runtime: &rt, AgentBuilds: builds}, *ev, nonce, time.Now())
			if got := codes(v); !slices.Equal(got, tc.want) {
				t.Fatalf("Verify = %v; want codes %v", v.Reasons, tc.want)
			}
			if tc.want != nil && !strings.Contains(v.Reasons[0].Detail, "boot_aggregate "+agg) || tc.want != nil && !strings.Contains(v.Reasons[0].Detail, hex.EncodeToString(a9[:])) {
				t.Errorf("reason %q does not name the list's boot_aggregate and the quoted PCRs' digest", v.Reasons[0].Detail)
			}
		})
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

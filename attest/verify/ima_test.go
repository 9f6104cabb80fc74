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

// TestIMA: an IMA list in the kernel's binary format, naming the real digests of the
// built agent and runtime, extended into the simulator's PCR 10 as the kernel does.
// The genuine binaries pass; an edited, truncated or reordered list fails; a
// modified agent fails with its file name; and the attack the artifact PCR alone
// cannot see — a root process resets PCR 16 and replays the digests the server
// expects — is untrusted, because the process itself is in the IMA list.
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
	d := enrolledDevice(t, ca, maker)
	ctx := context.Background()
	var list []ima.Entry
	run := func(e ima.Entry) { // the kernel measures a file before it runs
		t.Helper()
		if err := d.tpm.Extend(ctx, ima.PCR, e.ExtendDigest()); err != nil {
			t.Fatal(err)
		}
		list = append(list, e)
	}
	run(ng(t, "boot_aggregate", strings.Repeat("00", 32)))
	run(ng(t, "/usr/lib/x86_64-linux-gnu/libc.so.6", libcSum))
	run(ng(t, "/usr/bin/edgeward-agent", agentSum))
	run(ng(t, "/usr/bin/edgeward-runtime", runtimeSum))
	run(ng(t, "/var/lib/edgeward/slots/runtime/a/libonnxruntime.so.1.24.0", ortSum))

	nonce := bytes.Repeat([]byte{9}, 32)
	evidence := func(l []ima.Entry, pcrs ...int) verify.Evidence {
		t.Helper()
		if pcrs == nil {
			pcrs = []int{ima.PCR, eventlog.PCRDevelopment}
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
	rt := reference.Runtime{Agent: []string{agentSum}, Runtime: []string{runtimeSum}, Allowed: []string{libcSum}, Enforce: true}
	policy := verify.Policy{Roots: ca.Roots(), Runtime: &rt, RuntimeLibraries: []string{ortSum},
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
	if v.Runtime == nil || v.Runtime.Entries != len(list) || v.Runtime.Agent[0] != agentSum {
		t.Fatalf("runtime state = %+v; want %d entries and the agent's digest", v.Runtime, len(list))
	}
	// The list is read after the quote: entries past it are not covered, not wrong.
	later := append(slices.Clone(list), ng(t, "/usr/bin/later", libcSum))
	check("list runs past the quote", policy, evidence(later), nil, "")

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
	check("PCR 10 not quoted", policy, evidence(list, eventlog.PCRDevelopment), []verify.Code{verify.IMAPCRNotQuoted}, "")
	noAgent := policy
	noAgentRT := rt
	noAgentRT.Agent = []string{strings.Repeat("cd", 32)}
	noAgent.Runtime = &noAgentRT
	check("agent build not trusted", noAgent, evidence(list), []verify.Code{verify.IMAUntrustedFile}, "/usr/bin/edgeward-agent")
	noORT := policy
	noORT.RuntimeLibraries = nil
	check("ONNX Runtime library not published", noORT, evidence(list), []verify.Code{verify.IMAUntrustedFile}, "libonnxruntime.so.1.24.0")

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

	// A modified agent binary runs: its digest is not a trusted build.
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

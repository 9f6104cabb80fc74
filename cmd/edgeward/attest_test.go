package main

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/internal/reference"
	"github.com/edgeward/edgeward/policy"
)

// TestAttestLearn: the draft learned from a device's last trusted verdict in an audit
// export is a valid policy file that holds exactly that device's boot and runtime.
func TestAttestLearn(t *testing.T) {
	h := func(c string) string { return strings.Repeat(c, 64) }
	boot := reference.BootState{SecureBoot: true, BootApplications: []string{h("b"), h("a")}, PCRs: map[int]string{0: h("0"), 4: h("4")}, Events: 40}
	rt := reference.RuntimeState{Entries: 9, Agent: []string{h("c")}, Runtime: []string{h("d")}, Unknown: []string{"/usr/bin/python3 " + h("e"), "/var/log/x (measured while open for writing)"}}
	line := func(seq int, kind, subject string, data any) string {
		b, _ := json.Marshal(map[string]any{"type": "record", "seq": seq, "at": "2026-11-30T10:00:00Z", "actor": "device:" + subject, "kind": kind, "subject": subject, "data": data})
		return string(b) + "\n"
	}
	export := line(1, "device.enroll", "dev-1", map[string]any{"hardware": "aarch64"}) +
		line(2, "attestation.verdict", "dev-1", map[string]any{"verdict": "trusted", "boot": boot, "runtime": rt}) +
		line(3, "attestation.verdict", "dev-2", map[string]any{"verdict": "trusted", "boot": reference.BootState{}}) +
		line(4, "attestation.verdict", "dev-1", map[string]any{"verdict": "untrusted", "reasons": []string{"boot_policy: …"}, "boot": reference.BootState{}}) +
		`{"type":"checkpoint","note":"…"}` + "\n"
	c := newCLI(t)
	out := c.must("attest", "learn", writeTemp(t, "audit.jsonl", export), "--device", "dev-1")
	if !strings.Contains(out, "audit record 2 (device dev-1") {
		t.Errorf("draft does not name the record it was learned from:\n%s", out)
	}
	p, err := policy.Parse(policy.File{Name: "draft.yaml", Data: []byte(out)})
	if err != nil {
		t.Fatalf("the draft is not a valid policy: %v\n%s", err, out)
	}
	b := p.Attestation.Boot
	if len(b) != 1 || !b[0].SecureBoot || !slices.Equal(b[0].Hardware, []string{"aarch64"}) || !slices.Equal(b[0].BootApplications, []string{h("a"), h("b")}) ||
		len(b[0].PCRs) != 1 || !slices.Equal(b[0].PCRs[0], []string{h("0")}) {
		t.Errorf("drafted boot policy = %+v", b)
	}
	r := p.Attestation.Runtime
	if r == nil || r.Enforce || !slices.Equal(r.Agent, []string{h("c")}) || !slices.Equal(r.Runtime, []string{h("d")}) || !slices.Equal(r.Allowed, []string{h("e")}) {
		t.Errorf("drafted runtime policy = %+v", r)
	}
	if _, _, err := c.run("attest", "learn", writeTemp(t, "audit.jsonl", export), "--device", "dev-3"); err == nil || !strings.Contains(err.Error(), "no trusted verdict") {
		t.Errorf("learn for a device without evidence = %v; want an error", err)
	}
}

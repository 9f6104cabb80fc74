package verify_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"slices"
	"strings"
	"testing"
	"time"

	goattest "github.com/google/go-attestation/attest"

	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/attest/verify"
	"github.com/edgeward/edgeward/internal/reference"
)

// bootDevice is an enrolled simulator whose boot PCRs were extended with a real boot
// event log, as its firmware would have done; its quotes cover PCRs 0–7 and 16.
func bootDevice(t *testing.T, name string) (*device, []byte, verify.Policy) {
	t.Helper()
	log, err := attesttest.RealBootLog(name)
	if err != nil {
		t.Fatal(err)
	}
	ca, maker := newCA(t)
	d := enrolledDevice(t, ca, maker)
	if err := attesttest.ReplayBootLog(context.Background(), d.tpm, log); err != nil {
		t.Fatal(err)
	}
	return d, log, verify.Policy{Roots: ca.Roots(), PermanentIdentifier: d.akCert.PermanentIdentifier}
}

func (d *device) bootEvidence(t *testing.T, nonce, bootLog []byte) verify.Evidence {
	t.Helper()
	ev, err := d.tpm.Evidence(context.Background(), d.akCert, nonce, append(reference.BootPCRs(), 16), slices.Clone(d.log))
	if err != nil {
		t.Fatal(err)
	}
	ev.BootLog = bootLog
	return *ev
}

// TestBootLogReplays: real boot logs replayed into the simulator's PCRs verify, the
// state they prove is reported, and a policy learned from it admits the same boot.
func TestBootLogReplays(t *testing.T) {
	for _, tc := range []struct {
		log        string
		secureBoot bool
		apps       int
	}{
		{attesttest.BootLogSecureBoot, true, 3},
		{attesttest.BootLogUbuntu, false, 2},
		{attesttest.BootLogCoreOS, false, 2},
	} {
		t.Run(tc.log, func(t *testing.T) {
			d, log, p := bootDevice(t, tc.log)
			nonce := bytes.Repeat([]byte{3}, 32)
			ev := d.bootEvidence(t, nonce, log)
			v := verify.Verify(p, ev, nonce, time.Now())
			if !v.Trusted || v.Boot == nil {
				t.Fatalf("Verify(genuine %s) = %v, boot %v; want trusted with a boot state", tc.log, v.Reasons, v.Boot)
			}
			if v.Boot.SecureBoot != tc.secureBoot || len(v.Boot.BootApplications) != tc.apps {
				t.Errorf("boot state = %+v; want secure boot %v and %d boot applications", v.Boot, tc.secureBoot, tc.apps)
			}
			learned := reference.Learn(*v.Boot, "x86_64")
			if err := learned.Validate(); err != nil {
				t.Fatal(err)
			}
			p.Boot = &learned
			if v := verify.Verify(p, ev, nonce, time.Now()); !v.Trusted {
				t.Errorf("Verify(genuine, learned policy %+v) = %v; want trusted", learned, v.Reasons)
			}
		})
	}
}

// TestBootLogHostile: every edit of a genuine boot log, and every boot its policy does
// not allow, is an untrusted verdict with the reason that names the PCR or event.
func TestBootLogHostile(t *testing.T) {
	other, err := attesttest.RealBootLog(attesttest.BootLogCoreOS)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{attesttest.BootLogUbuntu, attesttest.BootLogSecureBoot} {
		t.Run(name, func(t *testing.T) {
			d, log, policy := bootDevice(t, name)
			head, events, err := attesttest.SplitBootLog(log)
			if err != nil {
				t.Fatal(err)
			}
			el, err := goattest.ParseEventLog(log)
			if err != nil {
				t.Fatal(err)
			}
			if got := attesttest.JoinBootLog(head, events); !bytes.Equal(got, log) {
				t.Fatal("SplitBootLog then JoinBootLog does not give the log back")
			}
			var pcr4, pcr7 []int // indices of events of PCR 4 and PCR 7
			for i, e := range events {
				switch attesttest.BootLogEventPCR(e) {
				case 4:
					pcr4 = append(pcr4, i)
				case 7:
					pcr7 = append(pcr7, i)
				}
			}
			if len(pcr4) < 2 || len(pcr7) < 2 {
				t.Fatalf("%s: %d PCR 4 and %d PCR 7 events; the test needs two of each", name, len(pcr4), len(pcr7))
			}
			nonce := bytes.Repeat([]byte{5}, 32)
			good := d.bootEvidence(t, nonce, log)
			gv := verify.Verify(policy, good, nonce, time.Now())
			if !gv.Trusted {
				t.Fatalf("genuine: %v", gv.Reasons)
			}
			kernel := gv.Boot.BootApplications[len(gv.Boot.BootApplications)-1]
			edit := func(f func(evs [][]byte) [][]byte) []byte {
				evs := make([][]byte, len(events))
				for i, e := range events {
					evs[i] = slices.Clone(e)
				}
				return attesttest.JoinBootLog(head, f(evs))
			}
			tests := []struct {
				name   string
				log    []byte
				policy func(p *verify.Policy)
				ev     func(ev *verify.Evidence)
				want   []verify.Code
				detail string
			}{
				{name: "one digest edited", log: edit(func(evs [][]byte) [][]byte {
					i := pcr4[len(pcr4)-1]
					at := bytes.Index(evs[i], el.Events(goattest.HashSHA256)[i].Digest)
					evs[i][at] ^= 1 // the SHA-256 digest, the one the quoted bank replays
					return evs
				}), want: []verify.Code{verify.BootReplayMismatch}, detail: "PCR 4"},
				{name: "Secure Boot variable data edited, digest kept", log: edit(func(evs [][]byte) [][]byte {
					e := evs[pcr7[0]]
					e[len(e)-1] ^= 1
					return evs
				}), want: []verify.Code{verify.BootLogMalformed}, detail: "PCR 7"},
				{name: "truncated: last event dropped", log: edit(func(evs [][]byte) [][]byte { return evs[:len(evs)-1] }),
					want: []verify.Code{verify.BootReplayMismatch}},
				{name: "reordered within PCR 4", log: edit(func(evs [][]byte) [][]byte {
					a, b := pcr4[len(pcr4)-2], pcr4[len(pcr4)-1]
					evs[a], evs[b] = evs[b], evs[a]
					return evs
				}), want: []verify.Code{verify.BootReplayMismatch}, detail: "PCR 4"},
				{name: "PCR 4 events removed", log: edit(func(evs [][]byte) [][]byte {
					return slices.DeleteFunc(evs, func(e []byte) bool { return attesttest.BootLogEventPCR(e) == 4 })
				}), want: []verify.Code{verify.BootReplayMismatch}, detail: "PCR 4: extended"},
				{name: "another machine's log", log: other, want: []verify.Code{verify.BootReplayMismatch}},
				{name: "garbage", log: []byte("not an event log"), want: []verify.Code{verify.BootLogMalformed}},
				{name: "log cut mid-event", log: log[:len(log)-7], want: []verify.Code{verify.BootLogMalformed}},
				{name: "boot PCRs not quoted", ev: func(ev *verify.Evidence) {
					q, err := d.tpm.Quote(context.Background(), nonce, []int{16})
					if err != nil {
						t.Fatal(err)
					}
					ev.Quote = *q
				}, want: []verify.Code{verify.BootPCRNotQuoted}},
				{name: "policy requires a boot log, none sent", log: []byte{}, policy: func(p *verify.Policy) { p.Boot = &reference.Boot{} },
					want: []verify.Code{verify.BootLogMissing}},
				{name: "Secure Boot required", policy: func(p *verify.Policy) { p.Boot = &reference.Boot{SecureBoot: true} },
					want: func() []verify.Code {
						if gv.Boot.SecureBoot {
							return nil
						}
						return []verify.Code{verify.BootPolicyViolated}
					}(), detail: "Secure Boot"},
				{name: "kernel not allowed", policy: func(p *verify.Policy) {
					p.Boot = &reference.Boot{BootApplications: slices.DeleteFunc(slices.Clone(gv.Boot.BootApplications), func(s string) bool { return s == kernel })}
				}, want: []verify.Code{verify.BootPolicyViolated}, detail: kernel},
				// The replay proves digests, not types: the kernel relabelled as a driver
				// or an action still counts as a boot application (it passed as trusted).
				{name: "kernel not allowed, relabelled as a boot services driver", log: edit(func(evs [][]byte) [][]byte {
					binary.LittleEndian.PutUint32(evs[pcr4[len(pcr4)-1]][4:], 0x80000004)
					return evs
				}), policy: func(p *verify.Policy) {
					p.Boot = &reference.Boot{BootApplications: slices.DeleteFunc(slices.Clone(gv.Boot.BootApplications), func(s string) bool { return s == kernel })}
				}, want: []verify.Code{verify.BootPolicyViolated}, detail: kernel},
				{name: "kernel not allowed, relabelled as an EFI action", log: edit(func(evs [][]byte) [][]byte {
					binary.LittleEndian.PutUint32(evs[pcr4[len(pcr4)-1]][4:], 0x80000007)
					return evs
				}), policy: func(p *verify.Policy) {
					p.Boot = &reference.Boot{BootApplications: slices.DeleteFunc(slices.Clone(gv.Boot.BootApplications), func(s string) bool { return s == kernel })}
				}, want: []verify.Code{verify.BootPolicyViolated}, detail: kernel},
				{name: "kernel forbidden", policy: func(p *verify.Policy) {
					p.Boot = &reference.Boot{Forbidden: []string{kernel}}
				}, want: []verify.Code{verify.BootPolicyViolated}, detail: "forbidden: " + kernel},
				{name: "firmware (PCR 0) not allowed", policy: func(p *verify.Policy) {
					p.Boot = &reference.Boot{PCRs: map[int][]string{0: {strings.Repeat("0", 64)}}}
				}, want: []verify.Code{verify.BootPolicyViolated}, detail: "PCR 0"},
			}
			for _, tc := range tests {
				p := policy
				if tc.policy != nil {
					tc.policy(&p)
				}
				ev := good
				if tc.log != nil {
					ev.BootLog = tc.log
				}
				if tc.ev != nil {
					tc.ev(&ev)
				}
				v := verify.Verify(p, ev, nonce, time.Now())
				if got := slices.Compact(codes(v)); !slices.Equal(got, tc.want) {
					t.Errorf("%s: Verify = %v; want codes %v", tc.name, v.Reasons, tc.want)
					continue
				}
				if tc.detail != "" && len(v.Reasons) > 0 && !strings.Contains(v.Reasons[0].Detail, tc.detail) {
					t.Errorf("%s: reason %q does not name %q", tc.name, v.Reasons[0].Detail, tc.detail)
				}
			}
		})
	}
}

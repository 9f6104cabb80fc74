// Package reference holds the reference values a fleet trusts for the code that runs
// below and around the agent: what a device's measured boot (the TCG boot event log
// replayed against PCRs 0–7) must show. The policy files declare them (package policy
// parses them into these types), the verifier (attest/verify) judges evidence against
// them, and `edgeward attest learn` drafts them from a reference device. Pure: no I/O,
// stdlib only.
package reference

import (
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// ErrInvalid is wrapped by every Validate error.
var ErrInvalid = errors.New("reference: invalid")

// BootPCRs returns the PCRs the firmware and the boot loaders extend (TCG PC Client
// Platform Firmware Profile): 0 firmware code, 1 firmware configuration, 2 option
// ROMs, 3 their configuration, 4 boot manager and boot applications, 5 GPT and boot
// configuration, 6 platform specific, 7 Secure Boot policy.
func BootPCRs() []int { return []int{0, 1, 2, 3, 4, 5, 6, 7} }

// IsBootPCR reports whether pcr is one of BootPCRs.
func IsBootPCR(pcr int) bool { return pcr >= 0 && pcr <= 7 }

// Boot is what a device's measured boot must prove, for the devices of some hardware
// classes. Every digest is lowercase hex SHA-256. The zero value (apart from Hardware)
// requires only that the boot log replays to the quoted PCRs.
type Boot struct {
	// Hardware are the hardware classes (wire.CheckInRequest.Hardware, e.g. "x86_64")
	// this entry applies to; empty: every device. Select takes the first match.
	Hardware []string `json:"hardware,omitempty" yaml:"hardware"`
	// SecureBoot requires UEFI Secure Boot enabled (the SecureBoot variable measured in
	// PCR 7, with the keys that verified the boot applications).
	SecureBoot bool `json:"secure_boot,omitempty" yaml:"secure_boot"`
	// BootApplications, if not empty, are the allowed Authenticode digests of the EFI
	// boot applications (EV_EFI_BOOT_SERVICES_APPLICATION in PCR 4): boot loaders
	// (shim, GRUB, systemd-boot) and EFI-stub kernels. Every application the log shows
	// loaded must be one of them.
	BootApplications []string `json:"boot_applications,omitempty" yaml:"boot_applications"`
	// Forbidden are digests no event of the boot log may carry (a revoked boot loader,
	// a kernel with a known hole), whatever the other lists allow.
	Forbidden []string `json:"forbidden,omitempty" yaml:"forbidden"`
	// PCRs, if set for a PCR, are its allowed final values (e.g. PCR 0, the firmware
	// build, per hardware class).
	PCRs map[int][]string `json:"pcrs,omitempty" yaml:"pcrs"`
}

// Validate checks the digests and PCR indices.
func (b *Boot) Validate() error {
	for _, h := range b.Hardware {
		if h == "" {
			return fmt.Errorf("%w: empty hardware class", ErrInvalid)
		}
	}
	for _, l := range []struct {
		name string
		ds   []string
	}{{"boot_applications", b.BootApplications}, {"forbidden", b.Forbidden}} {
		for _, d := range l.ds {
			if err := checkDigest(d); err != nil {
				return fmt.Errorf("%w: %s: %w", ErrInvalid, l.name, err)
			}
		}
	}
	for pcr, ds := range b.PCRs {
		if !IsBootPCR(pcr) {
			return fmt.Errorf("%w: pcrs: %d is not a boot PCR (0-7)", ErrInvalid, pcr)
		}
		if len(ds) == 0 {
			return fmt.Errorf("%w: pcrs: PCR %d lists no value", ErrInvalid, pcr)
		}
		for _, d := range ds {
			if err := checkDigest(d); err != nil {
				return fmt.Errorf("%w: pcrs: PCR %d: %w", ErrInvalid, pcr, err)
			}
		}
	}
	return nil
}

func checkDigest(d string) error {
	if len(d) != 64 || strings.ToLower(d) != d {
		return fmt.Errorf("%q is not 64 lowercase hex digits", d)
	}
	if _, err := hex.DecodeString(d); err != nil {
		return fmt.Errorf("%q: %w", d, err)
	}
	return nil
}

// Select returns the first entry of list that applies to hardware, or nil.
func Select(list []Boot, hardware string) *Boot {
	for i := range list {
		if len(list[i].Hardware) == 0 || slices.Contains(list[i].Hardware, hardware) {
			return &list[i]
		}
	}
	return nil
}

// BootState is what a verified boot log proves about a device's boot: the state
// the verifier judges and the dashboard shows.
type BootState struct {
	// SecureBoot: UEFI Secure Boot was enabled.
	SecureBoot bool `json:"secure_boot"`
	// BootApplications are the digests of the EFI boot applications loaded, in order
	// (PCR 4): the boot loaders, then an EFI-stub kernel if the device boots one.
	BootApplications []string `json:"boot_applications,omitempty"`
	// MoreBootApplications counts the boot applications past the first
	// MaxBootApplications, checked against the policy but not kept: a device's log of
	// 20,000 of them put 1.3 MB into the audit log at every check-in (found from
	// outside, 2 Dec).
	MoreBootApplications int `json:"more_boot_applications,omitempty"`
	// PCRs are the quoted boot PCR values (hex).
	PCRs map[int]string `json:"pcrs,omitempty"`
	// Events is the number of boot log events replayed.
	Events int `json:"events"`
}

// MaxBootApplications bounds the boot applications a BootState keeps.
const MaxBootApplications = 64

// MaxListed bounds the distinct agent and runtime digests a RuntimeState keeps.
const MaxListed = 16

// Learn drafts the entry that admits exactly this boot state, for hardware: the
// reference device's Secure Boot setting, boot applications and PCR 0 (firmware).
// A security admin reviews it before it goes into the policy.
func Learn(s BootState, hardware string) Boot {
	b := Boot{SecureBoot: s.SecureBoot, BootApplications: slices.Clone(s.BootApplications)}
	slices.Sort(b.BootApplications)
	b.BootApplications = slices.Compact(b.BootApplications)
	if hardware != "" {
		b.Hardware = []string{hardware}
	}
	if v, ok := s.PCRs[0]; ok {
		b.PCRs = map[int][]string{0: {v}}
	}
	return b
}

// Runtime is what a device's IMA measurement list (PCR 10) must show of the code that
// ran after the kernel: the agent, its runtime, the ONNX Runtime library and every
// other file the device's IMA policy measures (with `measure func=BPRM_CHECK uid=0`
// and `measure func=FILE_MMAP mask=MAY_EXEC uid=0`: every executable and library
// root ran). Digests are lowercase hex SHA-256 of the files.
type Runtime struct {
	// Agent are the trusted builds of edgeward-agent. Every measured file named
	// edgeward-agent must be one of them, and one must be measured.
	Agent []string `json:"agent,omitempty" yaml:"agent"`
	// Runtime are the trusted builds of edgeward-runtime; every measured file of that
	// name must be one of them.
	Runtime []string `json:"runtime,omitempty" yaml:"runtime"`
	// Allowed are the other files that may run (the OS's executables and libraries).
	// An ONNX Runtime library (libonnxruntime.so*) must be a published runtime target
	// or one of these, whatever Enforce says.
	Allowed []string `json:"allowed,omitempty" yaml:"allowed"`
	// Enforce: a measured file in none of the lists makes the verdict untrusted.
	// False (audit only): such files are recorded with the verdict, which stays
	// trusted.
	Enforce bool `json:"enforce,omitempty" yaml:"enforce"`
}

// Validate checks the digests.
func (r *Runtime) Validate() error {
	for _, l := range []struct {
		name string
		ds   []string
	}{{"agent", r.Agent}, {"runtime", r.Runtime}, {"allowed", r.Allowed}} {
		for _, d := range l.ds {
			if err := checkDigest(d); err != nil {
				return fmt.Errorf("%w: %s: %w", ErrInvalid, l.name, err)
			}
		}
	}
	return nil
}

// RuntimeState is what a verified IMA list proves: the digests of the agent and
// runtime binaries that ran and the files no list names (audit only).
type RuntimeState struct {
	Entries int `json:"entries"`
	// Agent and Runtime are the distinct digests of the agent and runtime binaries the
	// list measured, at most MaxListed each (one entry per file measured: a device that
	// ran 17,000 copies of the agent put 1.1 MB into the audit log at every check-in,
	// found from outside, 2 Dec). Every entry is checked against the policy all the same.
	Agent   []string `json:"agent,omitempty"`
	Runtime []string `json:"runtime,omitempty"`
	// Unknown are "path sha256" of measured files no list names (at most 100).
	Unknown []string `json:"unknown,omitempty"`
}

// LearnRuntime drafts the runtime policy that admits exactly what this verified IMA
// list showed: its agent and runtime builds, and every other file it listed as unknown
// (allowed). Enforce stays off: a security admin turns it on after review.
func LearnRuntime(s RuntimeState) Runtime {
	r := Runtime{Agent: sortedSet(s.Agent), Runtime: sortedSet(s.Runtime)}
	var allowed []string
	for _, u := range s.Unknown {
		if i := strings.LastIndexByte(u, ' '); i >= 0 && checkDigest(u[i+1:]) == nil {
			allowed = append(allowed, u[i+1:])
		}
	}
	r.Allowed = sortedSet(allowed)
	return r
}

func sortedSet(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return slices.Compact(out)
}

// Draft writes the attestation section of a policy file (YAML) holding b and r (either
// may be nil), under a comment naming where they were learned. The policy loader reads
// it back to the same values.
func Draft(b *Boot, r *Runtime, learnedFrom string) string {
	var w strings.Builder
	list := func(indent, key string, ds []string) {
		if len(ds) == 0 {
			return
		}
		fmt.Fprintf(&w, "%s%s:\n", indent, key)
		for _, d := range ds {
			fmt.Fprintf(&w, "%s  - %q\n", indent, d)
		}
	}
	fmt.Fprintf(&w, "# Drafted by edgeward attest learn from %s.\n# Review every digest before this goes into the policy (one file holds the attestation section).\nattestation:\n", learnedFrom)
	if b != nil {
		w.WriteString("  boot:\n")
		fmt.Fprintf(&w, "    - secure_boot: %v\n", b.SecureBoot)
		list("      ", "hardware", b.Hardware)
		list("      ", "boot_applications", b.BootApplications)
		list("      ", "forbidden", b.Forbidden)
		pcrs := slices.Sorted(maps.Keys(b.PCRs))
		if len(pcrs) > 0 {
			w.WriteString("      pcrs:\n")
			for _, p := range pcrs {
				list("        ", strconv.Itoa(p), b.PCRs[p])
			}
		}
	}
	if r != nil {
		w.WriteString("  runtime:\n")
		fmt.Fprintf(&w, "    enforce: %v # turn on once allowed lists everything root runs\n", r.Enforce)
		list("    ", "agent", r.Agent)
		list("    ", "runtime", r.Runtime)
		list("    ", "allowed", r.Allowed)
	}
	return w.String()
}

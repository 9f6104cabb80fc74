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
	"slices"
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
	// PCRs are the quoted boot PCR values (hex).
	PCRs map[int]string `json:"pcrs,omitempty"`
	// Events is the number of boot log events replayed.
	Events int `json:"events"`
}

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

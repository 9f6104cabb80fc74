package verify

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"

	goattest "github.com/google/go-attestation/attest"

	"github.com/edgeward/edgeward/internal/reference"
	"github.com/edgeward/edgeward/internal/wire"
)

// Reason codes of measured boot.
const (
	BootLogMissing     Code = "boot_log_missing"
	BootLogMalformed   Code = "boot_log_malformed"
	BootPCRNotQuoted   Code = "boot_pcr_not_quoted"
	BootReplayMismatch Code = "boot_replay_mismatch"
	BootPolicyViolated Code = "boot_policy"
)

// Event types of the TCG PC Client Platform Firmware Profile read here.
const (
	// evBootServicesApplication is EV_EFI_BOOT_SERVICES_APPLICATION: an EFI application
	// (boot loader, EFI-stub kernel) measured by its Authenticode digest into PCR 4.
	evBootServicesApplication = 0x80000003
	evSeparator               = 0x00000004 // EV_SEPARATOR
	evAction                  = 0x00000005 // EV_ACTION
	evOmitBootDeviceEvents    = 0x00000012 // EV_OMIT_BOOT_DEVICE_EVENTS
	evEFIAction               = 0x80000007 // EV_EFI_ACTION
)

// bootApplication says whether a replayed PCR 4 event counts as a boot application for
// the policy. The replay proves an event's digest, not its type (go-attestation: the
// type "is not verified by event log replays and can be tampered with"): an application
// relabelled as a driver, an action or anything else replayed all the same, and a boot
// loader the policy does not allow passed as trusted (found from outside, 2 Dec). So
// every PCR 4 event is an application except those of the types whose digest is the
// hash of their own data (EV_SEPARATOR, EV_ACTION, EV_EFI_ACTION,
// EV_OMIT_BOOT_DEVICE_EVENTS) when it is: an application's Authenticode digest is not
// the hash of anything its event carries.
func bootApplication(e goattest.Event) bool {
	switch e.Type {
	case evSeparator, evAction, evEFIAction, evOmitBootDeviceEvents:
		sum := sha256.Sum256(e.Data)
		return !bytes.Equal(sum[:], e.Digest)
	}
	return true
}

// maxSpecAlgorithms bounds the hash algorithms a boot log's Spec ID event may list:
// the TCG registry has 8 for PCR banks (SHA-1, SHA-256, SHA-384, SHA-512, SM3-256,
// SHA3-256, SHA3-384, SHA3-512).
const maxSpecAlgorithms = 8

// specDigestSizes are the digest sizes of the registered PCR bank algorithms.
var specDigestSizes = map[uint16]uint16{0x0004: 20, 0x000B: 32, 0x000C: 48, 0x000D: 64, 0x0012: 32, 0x0027: 32, 0x0028: 48, 0x0029: 64}

// checkSpecID refuses a crypto-agile boot log whose Spec ID event lists more hash
// algorithms than exist, one twice, or a registered one with another digest size,
// before go-attestation parses it: its parser matches every digest of every event
// against every algorithm listed and allocates for each match, so a 1 MiB log listing
// SHA-256 131,070 times took 97 s of CPU and 61 GB of allocations per check-in, and was
// still trusted (found from outside, 2 Dec). A log in the older SHA-1 format has no
// such list and is left to the parser.
func checkSpecID(log []byte) error {
	// TCG_PCClientPCREvent: PCR index, type, SHA-1 digest, event size, then the event.
	const head = 4 + 4 + 20 + 4
	if len(log) < head || binary.LittleEndian.Uint32(log[4:]) != 3 { // EV_NO_ACTION
		return nil
	}
	size := int(binary.LittleEndian.Uint32(log[28:]))
	spec := log[head:]
	if size > len(spec) {
		return nil // the parser says it is truncated
	}
	spec = spec[:size]
	const sig = "Spec ID Event03\x00"
	if !bytes.HasPrefix(spec, []byte(sig)) {
		return nil
	}
	// After the signature: platform class (4), version minor, major, errata, uintn size
	// (4), the number of algorithms (4), then each algorithm's ID and digest size (4).
	if len(spec) < 24+4 {
		return errors.New("the Spec ID event is truncated")
	}
	n := binary.LittleEndian.Uint32(spec[24:])
	if n == 0 || n > maxSpecAlgorithms {
		return fmt.Errorf("the Spec ID event lists %d hash algorithms; at most %d exist", n, maxSpecAlgorithms)
	}
	if len(spec) < 28+4*int(n) {
		return errors.New("the Spec ID event's algorithm list is truncated")
	}
	seen := map[uint16]bool{}
	for i := range int(n) {
		id := binary.LittleEndian.Uint16(spec[28+4*i:])
		sz := binary.LittleEndian.Uint16(spec[30+4*i:])
		if seen[id] {
			return fmt.Errorf("the Spec ID event lists hash algorithm %#04x twice", id)
		}
		seen[id] = true
		if want, ok := specDigestSizes[id]; (ok && sz != want) || sz == 0 || sz > 64 {
			return fmt.Errorf("the Spec ID event lists hash algorithm %#04x with %d-byte digests", id, sz)
		}
	}
	return nil
}

// verifyBoot checks the boot event log against the quoted boot PCRs and p.Boot. It is
// called once the quote's signature, nonce and PCR digest are checked (pcrsQuoted: the
// PCR values sent are the ones the TPM signed); it reports into v and fills v.Boot.
//
// A device that sends a boot log must send a true one: a log that does not parse or
// does not replay is a reason whether or not a boot policy is set. The log is parsed
// and replayed by go-attestation (ParseEventLog, EventLog.Verify), and only the events
// Verify returns (those that replayed) are read. Verify passes a PCR the log has no
// event for, whatever its value, so every boot PCR that was extended must have events.
func verifyBoot(v *Verdict, p Policy, ev Evidence, selected []int, pcrsQuoted bool) {
	if len(ev.BootLog) == 0 {
		if p.Boot != nil {
			v.add(BootLogMissing, "the boot policy requires the boot event log and the device sent none")
		}
		return
	}
	var missing []int
	for _, i := range reference.BootPCRs() {
		if !slices.Contains(selected, i) {
			missing = append(missing, i)
		}
	}
	if len(missing) > 0 {
		v.add(BootPCRNotQuoted, "the quote does not cover boot PCRs %v", missing)
		return
	}
	if !pcrsQuoted {
		return // PCRDigestMismatch is reported: the values cannot be replayed against
	}
	if len(ev.BootLog) > wire.MaxBootLogBytes {
		v.add(BootLogMalformed, "%d bytes, limit %d", len(ev.BootLog), wire.MaxBootLogBytes)
		return
	}
	if err := checkSpecID(ev.BootLog); err != nil {
		v.add(BootLogMalformed, "%v", err)
		return
	}
	el, err := goattest.ParseEventLog(ev.BootLog)
	if err != nil {
		v.add(BootLogMalformed, "%v", err)
		return
	}
	var pcrs []goattest.PCR
	for _, i := range reference.BootPCRs() {
		pcrs = append(pcrs, goattest.PCR{Index: i, Digest: ev.Quote.PCRs[i], DigestAlg: crypto.SHA256})
	}
	events, err := el.Verify(pcrs)
	if err != nil {
		var re goattest.ReplayError
		if errors.As(err, &re) {
			for _, i := range re.InvalidPCRs {
				v.add(BootReplayMismatch, "PCR %d: %s", i, replayDetail(el, i, ev.Quote.PCRs[i]))
			}
			return
		}
		v.add(BootReplayMismatch, "%v", err)
		return
	}
	state := reference.BootState{Events: len(events), PCRs: map[int]string{}}
	extended := map[int]bool{}
	for _, e := range events {
		extended[e.Index] = true
	}
	var zero [32]byte
	for _, i := range reference.BootPCRs() {
		state.PCRs[i] = hex.EncodeToString(ev.Quote.PCRs[i])
		if !extended[i] && !bytes.Equal(ev.Quote.PCRs[i], zero[:]) {
			v.add(BootReplayMismatch, "PCR %d: extended to %x but the log has no event for it", i, ev.Quote.PCRs[i])
		}
	}
	var apps []string // every one, for the policy; the state keeps the first MaxBootApplications
	for _, e := range events {
		if e.Index == 4 && bootApplication(e) {
			apps = append(apps, hex.EncodeToString(e.Digest))
		}
	}
	state.BootApplications = apps[:min(len(apps), reference.MaxBootApplications)]
	state.MoreBootApplications = len(apps) - len(state.BootApplications)
	sb, err := goattest.ParseSecurebootState(events)
	if err != nil {
		v.add(BootLogMalformed, "Secure Boot state (PCR 7): %v", err)
	} else {
		state.SecureBoot = sb.Enabled
	}
	v.Boot = &state
	if p.Boot == nil {
		return
	}
	b := p.Boot
	if b.SecureBoot && (err != nil || !sb.Enabled) {
		v.add(BootPolicyViolated, "Secure Boot is not enabled (PCR 7)")
	}
	for n, e := range events {
		d := hex.EncodeToString(e.Digest)
		if slices.Contains(b.Forbidden, d) {
			v.add(BootPolicyViolated, "boot event %d (PCR %d, %v) is forbidden: %s", n, e.Index, e.Type, d)
		}
	}
	if len(b.BootApplications) > 0 {
		for n, d := range apps {
			if !slices.Contains(b.BootApplications, d) {
				v.add(BootPolicyViolated, "boot application %d (PCR 4) %s is not allowed", n, d)
			}
		}
	}
	for _, i := range reference.BootPCRs() {
		if allowed, ok := b.PCRs[i]; ok && !slices.Contains(allowed, state.PCRs[i]) {
			v.add(BootPolicyViolated, "PCR %d is %s, not an allowed value", i, state.PCRs[i])
		}
	}
}

// replayDetail says where the log and the TPM part for pcr: what the log's SHA-256
// digests replay to (read from the unverified events, for the reason only) and what
// the TPM quoted.
func replayDetail(el *goattest.EventLog, pcr int, quoted []byte) string {
	cur := make([]byte, sha256.Size)
	n := 0
	for _, e := range el.Events(goattest.HashSHA256) {
		if e.Index != pcr || e.Type == 3 /* EV_NO_ACTION */ {
			continue
		}
		if len(e.Digest) != sha256.Size {
			return fmt.Sprintf("event of type %v has no SHA-256 digest; the TPM quoted %x", e.Type, quoted)
		}
		h := sha256.New()
		h.Write(cur)
		h.Write(e.Digest)
		cur = h.Sum(nil)
		n++
	}
	return fmt.Sprintf("the log's %d events replay to %x, the TPM quoted %x", n, cur, quoted)
}

func sha256Extend(cur, d [32]byte) [32]byte { return sha256.Sum256(append(cur[:], d[:]...)) }

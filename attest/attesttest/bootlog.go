package attesttest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	goattest "github.com/google/go-attestation/attest"

	"github.com/edgeward/edgeward/attest"
)

// Real TCG boot event logs that go-attestation (a module this one depends on) ships
// as its test data, in attest/testdata of its module directory. They are read from the
// module cache, not copied into this repository.
const (
	// BootLogSecureBoot: UEFI with Secure Boot enabled (PCRs 0, 4, 5, 7; SHA-1,
	// SHA-256 and SHA-384 digests).
	BootLogSecureBoot = "sb_cert_eventlog"
	// BootLogUbuntu: an Ubuntu 21.04 shielded VM, Secure Boot disabled (PCRs 0–9, 14).
	BootLogUbuntu = "ubuntu_2104_shielded_vm_no_secure_boot_eventlog"
	// BootLogCoreOS: a Fedora CoreOS 36 shielded VM, Secure Boot disabled.
	BootLogCoreOS = "coreos_36_shielded_vm_no_secure_boot_eventlog"
)

// RealBootLog reads one of go-attestation's test event logs (BootLogSecureBoot, …)
// from the module cache (`go list -m` finds it; the module is downloaded whenever this
// package is built).
func RealBootLog(name string) ([]byte, error) {
	if strings.ContainsAny(name, `/\`) {
		return nil, fmt.Errorf("boot log %q: a file name, not a path", name)
	}
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/google/go-attestation").Output()
	if err != nil {
		return nil, fmt.Errorf("locate go-attestation's module: %w", err)
	}
	dir := strings.TrimSpace(string(out))
	if dir == "" {
		return nil, errors.New("go-attestation's module is not downloaded (go mod download github.com/google/go-attestation)")
	}
	return os.ReadFile(filepath.Join(dir, "attest", "testdata", name))
}

// ReplayBootLog does what a device's firmware and boot loaders did when they wrote
// log: it extends each event's SHA-256 digest into the TPM's boot PCRs (0–7), in log
// order, so that the TPM's quotes and the log agree as on real hardware. The TPM's
// boot PCRs must be fresh (zero): a simulator or swtpm just started.
func ReplayBootLog(ctx context.Context, tpm *attest.TPM, log []byte) error {
	el, err := goattest.ParseEventLog(log)
	if err != nil {
		return fmt.Errorf("replay boot log: %w", err)
	}
	for n, e := range el.Events(goattest.HashSHA256) {
		if e.Index < 0 || e.Index > 7 || e.Type == evNoAction {
			continue
		}
		if len(e.Digest) != sha256.Size {
			return fmt.Errorf("replay boot log: event %d (%v) has no SHA-256 digest", n, e.Type)
		}
		if err := tpm.Extend(ctx, e.Index, [32]byte(e.Digest)); err != nil {
			return fmt.Errorf("replay boot log: event %d: %w", n, err)
		}
	}
	return nil
}

const (
	evNoAction = 0x03
	// EvSeparator, EvEFIAction and EvBootApplication are TCG event types (PC Client
	// Platform Firmware Profile) that BuildBootLog callers use.
	EvSeparator       = 0x04
	EvEFIAction       = 0x80000007
	EvBootApplication = 0x80000003
	algSHA256         = 0x000B
)

// BootEvent is one event of a boot log BuildBootLog writes.
type BootEvent struct {
	PCR  int
	Type uint32
	Data []byte
	// Digest is what the event extends; zero: SHA-256(Data).
	Digest [32]byte
}

// BuildBootLog writes a crypto-agile (TCG2) boot event log with SHA-256 digests: a
// Spec ID event, then events. Tests build their own boot (e.g. a device whose kernel
// digest differs) and ReplayBootLog it into a TPM.
func BuildBootLog(events []BootEvent) []byte {
	var b bytes.Buffer
	le := func(v any) { binary.Write(&b, binary.LittleEndian, v) }
	var spec bytes.Buffer
	spec.WriteString("Spec ID Event03\x00")
	binary.Write(&spec, binary.LittleEndian, struct {
		PlatformClass        uint32
		Minor, Major, Errata uint8
		UintnSize            uint8
		NumAlgs              uint32
		Alg, Size            uint16
		VendorInfoSize       uint8
	}{Major: 2, UintnSize: 2, NumAlgs: 1, Alg: algSHA256, Size: sha256.Size})
	le(uint32(0))
	le(uint32(evNoAction))
	b.Write(make([]byte, 20))
	le(uint32(spec.Len()))
	b.Write(spec.Bytes())
	for _, e := range events {
		d := e.Digest
		if d == ([32]byte{}) {
			d = sha256.Sum256(e.Data)
		}
		le(uint32(e.PCR))
		le(e.Type)
		le(uint32(1))
		le(uint16(algSHA256))
		b.Write(d[:])
		le(uint32(len(e.Data)))
		b.Write(e.Data)
	}
	return b.Bytes()
}

// SplitBootLog cuts a crypto-agile boot log into its header (the Spec ID event) and
// its events, each as its raw bytes, so that a test can edit, drop or reorder events
// and JoinBootLog the result.
func SplitBootLog(log []byte) (head []byte, events [][]byte, err error) {
	r := bytes.NewReader(log)
	u32 := func() uint32 {
		var v uint32
		if e := binary.Read(r, binary.LittleEndian, &v); e != nil && err == nil {
			err = e
		}
		return v
	}
	// TCG_PCClientPCREvent: PCR, type, SHA-1 digest, size, Spec ID event.
	u32()
	u32()
	r.Seek(20, 1)
	size := u32()
	specStart := len(log) - r.Len()
	if err != nil || int(size) > r.Len() || size < 28 {
		return nil, nil, fmt.Errorf("split boot log: bad Spec ID event")
	}
	spec := log[specStart : specStart+int(size)]
	n := binary.LittleEndian.Uint32(spec[24:28])
	sizes := map[uint16]int{}
	for i := 0; i < int(n) && 28+4*i+4 <= len(spec); i++ {
		sizes[binary.LittleEndian.Uint16(spec[28+4*i:])] = int(binary.LittleEndian.Uint16(spec[30+4*i:]))
	}
	r.Seek(int64(size), 1)
	head = log[:len(log)-r.Len()]
	for r.Len() > 0 {
		start := len(log) - r.Len()
		u32()
		u32()
		for range u32() {
			var alg uint16
			if e := binary.Read(r, binary.LittleEndian, &alg); e != nil {
				return nil, nil, fmt.Errorf("split boot log: %w", e)
			}
			sz, ok := sizes[alg]
			if !ok {
				return nil, nil, fmt.Errorf("split boot log: unknown algorithm %#x", alg)
			}
			r.Seek(int64(sz), 1)
		}
		sz := u32()
		if err != nil || int(sz) > r.Len() {
			return nil, nil, fmt.Errorf("split boot log: truncated event at byte %d", start)
		}
		r.Seek(int64(sz), 1)
		events = append(events, log[start:len(log)-r.Len()])
	}
	return head, events, nil
}

// JoinBootLog is the inverse of SplitBootLog.
func JoinBootLog(head []byte, events [][]byte) []byte {
	out := append([]byte(nil), head...)
	for _, e := range events {
		out = append(out, e...)
	}
	return out
}

// BootLogEventPCR returns the PCR index of a raw crypto-agile event from SplitBootLog.
func BootLogEventPCR(event []byte) int { return int(binary.LittleEndian.Uint32(event)) }

// BootLogEventType returns the event type of a raw event from SplitBootLog.
func BootLogEventType(event []byte) uint32 { return binary.LittleEndian.Uint32(event[4:]) }

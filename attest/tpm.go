package attest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
	"github.com/google/go-tpm/tpm2/transport/simulator"
)

// Transport is the one small interface every TPM access goes through: send a
// marshalled TPM command, get the marshalled response. It is go-tpm's
// transport.TPMCloser; the simulator, the Linux resource manager and swtpm's
// TCP protocol all implement it.
type Transport = transport.TPMCloser

// ErrBadURL is returned by Open for a TPM location it does not understand.
var ErrBadURL = errors.New("attest: bad TPM URL")

// TPM is an open TPM. Its methods are safe for concurrent use: commands are
// serialised, because no transport tolerates interleaved commands.
type TPM struct {
	mu  sync.Mutex
	t   Transport
	url string

	// Guarded by mu. ak is the AK, loaded on first use; loaded lists the
	// objects loaded now (at most MaxLoaded), all flushed by Close.
	ak        *object
	loaded    []*object
	useTick   uint64
	leftovers Leftovers
	closed    bool
}

// Open opens the TPM named by url:
//
//   - "sim": the in-process Microsoft reference TPM (go-tpm-tools simulator),
//     freshly manufactured, for development and tests. It is one per process:
//     a second Open("sim") blocks until the first is closed, and its NV
//     contents do not survive Close.
//   - "/dev/tpmrm0" (or any absolute path): a Linux TPM character device; use
//     the kernel resource manager (tpmrm), not /dev/tpm0, so several
//     processes can share the TPM.
//   - "swtpm://host:port": swtpm's TCP socket interface (what tpm2-tools'
//     "swtpm" TCTI speaks, not the reference simulator's mssim protocol):
//     raw TPM commands on port, swtpm's control protocol on port+1, used
//     (CMD_INIT) only to power on a TPM that is off. TPM2_Startup(CLEAR)
//     is sent; a TPM that was already started keeps its state and PCRs, so
//     reopening (an agent restart) is not a reboot.
//
// Open first flushes every transient object and session the TPM holds (see
// Leftovers): a process killed before Close leaves its objects loaded, and
// two such kills used to fill the TPM's object slots for good.
func Open(ctx context.Context, url string) (*TPM, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	tr, err := openTransport(url)
	if err != nil {
		return nil, err
	}
	left, err := flushLeftovers(tr)
	if err != nil {
		tr.Close()
		return nil, fmt.Errorf("attest: %s: flush what a previous process left: %w", url, err)
	}
	t := New(tr, url)
	t.leftovers = left
	return t, nil
}

// New wraps an already open transport. The TPM must be started (TPM2_Startup
// sent). Unlike Open, New flushes nothing: the caller may own objects in
// it. Close closes the transport.
func New(t Transport, name string) *TPM {
	return &TPM{t: t, url: name, ak: &object{what: "AK", hierarchy: tpm2.TPMRHOwner, template: akTemplate}}
}

// Leftovers reports what Open found and flushed: transient objects and
// sessions of a process that did not close the TPM.
func (t *TPM) Leftovers() Leftovers {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.leftovers
}

func openTransport(u string) (Transport, error) {
	switch {
	case u == "sim":
		t, err := simulator.OpenSimulator()
		if err != nil {
			return nil, fmt.Errorf("attest: open simulator: %w", err)
		}
		return t, nil
	case strings.HasPrefix(u, "/"):
		t, err := linuxtpm.Open(u)
		if err != nil {
			return nil, fmt.Errorf("attest: open TPM device %s: %w", u, err)
		}
		return t, nil
	case strings.HasPrefix(u, "swtpm://"):
		return openSwtpm(u)
	default:
		return nil, fmt.Errorf("%w: %q (want sim, /dev/tpmrm0 or swtpm://host:port)", ErrBadURL, u)
	}
}

// URL returns the location the TPM was opened with.
func (t *TPM) URL() string { return t.url }

// Close flushes the transient objects this TPM created and closes the
// transport.
func (t *TPM) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	var errs []error
	for len(t.loaded) > 0 {
		errs = append(errs, t.unloadLocked(t.t, t.loaded[0]))
	}
	t.closed = true
	errs = append(errs, t.t.Close())
	return errors.Join(errs...)
}

// do runs f with the TPM lock held, after checking ctx. go-tpm commands take
// no context, so cancellation is honoured between commands.
func (t *TPM) do(ctx context.Context, f func(tp transport.TPM) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return errors.New("attest: TPM is closed")
	}
	return f(t.t)
}

// Info is what the TPM says about itself (TPM2_GetCapability); the
// attestation CA copies it into the AK certificate's subject alternative
// name.
type Info struct {
	// Manufacturer is the TCG vendor ID in the EK profile form "id:XXXXXXXX".
	Manufacturer string `json:"manufacturer"`
	// Model is the vendor string (TPM_PT_VENDOR_STRING_1..4).
	Model string `json:"model"`
	// Version is the firmware version in the form "id:XXXXXXXX".
	Version string `json:"version"`
}

// Info reads the manufacturer, model and firmware version.
func (t *TPM) Info(ctx context.Context) (Info, error) {
	var info Info
	err := t.do(ctx, func(tp transport.TPM) error {
		rsp, err := tpm2.GetCapability{
			Capability:    tpm2.TPMCapTPMProperties,
			Property:      uint32(tpm2.TPMPTManufacturer),
			PropertyCount: 8,
		}.Execute(tp)
		if err != nil {
			return fmt.Errorf("attest: get TPM properties: %w", err)
		}
		props, err := rsp.CapabilityData.Data.TPMProperties()
		if err != nil {
			return fmt.Errorf("attest: get TPM properties: %w", err)
		}
		vals := map[tpm2.TPMPT]uint32{}
		for _, p := range props.TPMProperty {
			vals[p.Property] = p.Value
		}
		info.Manufacturer = fmt.Sprintf("id:%08X", vals[tpm2.TPMPTManufacturer])
		var model []byte
		for i := tpm2.TPMPTVendorString1; i < tpm2.TPMPTVendorString1+4; i++ {
			v := vals[i]
			model = append(model, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
		}
		info.Model = strings.TrimSpace(strings.Map(func(r rune) rune {
			if r < 0x20 || r > 0x7e {
				return -1
			}
			return r
		}, string(model)))
		if info.Model == "" {
			info.Model = "unknown"
		}
		info.Version = fmt.Sprintf("id:%08X", vals[tpm2.TPMPTFirmwareVersion1])
		return nil
	})
	return info, err
}

// Exec runs f with exclusive use of the raw TPM transport. It is the escape
// hatch for provisioning tools and tests (attest/attesttest writes EK
// certificates with it); f must flush whatever transient objects it creates.
func (t *TPM) Exec(ctx context.Context, f func(tp transport.TPM) error) error {
	return t.do(ctx, f)
}

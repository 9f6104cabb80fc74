package attest

import (
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// MaxLoaded bounds the transient objects one TPM keeps loaded at once: the
// reference simulator and libtpms (swtpm) have three object slots, and so do
// many discrete TPMs. Every object this package loads is a primary key
// derived from a fixed template, so one that has to make room is flushed,
// least recently used first, and re-created from its template at its next
// use: the same key, since the hierarchy seed has not changed.
const MaxLoaded = 3

// object is a primary key: where it lives, how to derive it and, while it is
// loaded, its handle. Fields are guarded by the TPM's lock.
type object struct {
	what      string // for errors: "AK", "rsa EK", "signing key"
	hierarchy tpm2.TPMHandle
	template  tpm2.TPMTPublic

	handle  tpm2.TPMHandle // 0 while not loaded
	name    tpm2.TPM2BName // known after the first load
	public  tpm2.TPMTPublic
	lastUse uint64
}

func (o *object) loaded() bool { return o.handle != 0 }

// loadLocked makes sure o is loaded, creating it from its template when it is
// not, and marks it used. To make room it flushes the least recently used
// loaded object other than o and those in keep (which the caller needs in
// the same command). A re-created key must be the key it was (same name):
// otherwise the hierarchy was cleared under us, and using it would sign with
// another identity.
func (t *TPM) loadLocked(tp transport.TPM, o *object, keep ...*object) error {
	t.useTick++
	o.lastUse = t.useTick
	if o.loaded() {
		return nil
	}
	for len(t.loaded) >= MaxLoaded {
		if !t.evictLocked(tp, o, keep) {
			return fmt.Errorf("attest: create %s: %d objects loaded and all in use", o.what, len(t.loaded))
		}
	}
	for {
		rsp, err := tpm2.CreatePrimary{PrimaryHandle: o.hierarchy, InPublic: tpm2.New2B(o.template)}.Execute(tp)
		if errors.Is(err, tpm2.TPMRCObjectMemory) && t.evictLocked(tp, o, keep) {
			continue // someone else's object took a slot; give up one of ours
		}
		if err != nil {
			return fmt.Errorf("attest: create %s: %w", o.what, err)
		}
		pub, err := rsp.OutPublic.Contents()
		if err != nil {
			tpm2.FlushContext{FlushHandle: rsp.ObjectHandle}.Execute(tp)
			return fmt.Errorf("attest: %s public: %w", o.what, err)
		}
		if len(o.name.Buffer) > 0 && string(o.name.Buffer) != string(rsp.Name.Buffer) {
			tpm2.FlushContext{FlushHandle: rsp.ObjectHandle}.Execute(tp)
			return fmt.Errorf("attest: re-created %s is another key (hierarchy %#x cleared?)", o.what, uint32(o.hierarchy))
		}
		o.handle, o.name, o.public = rsp.ObjectHandle, rsp.Name, *pub
		t.loaded = append(t.loaded, o)
		return nil
	}
}

// evictLocked flushes the least recently used loaded object that is neither
// o nor in keep, and reports whether there was one.
func (t *TPM) evictLocked(tp transport.TPM, o *object, keep []*object) bool {
	var victim *object
	for _, l := range t.loaded {
		if l == o || containsObject(keep, l) {
			continue
		}
		if victim == nil || l.lastUse < victim.lastUse {
			victim = l
		}
	}
	if victim == nil {
		return false
	}
	// A failed flush leaves nothing we could use either: forget the handle.
	_ = t.unloadLocked(tp, victim)
	return true
}

func containsObject(s []*object, o *object) bool {
	for _, x := range s {
		if x == o {
			return true
		}
	}
	return false
}

// unloadLocked flushes o if it is loaded. o stays usable: the next
// loadLocked re-creates it.
func (t *TPM) unloadLocked(tp transport.TPM, o *object) error {
	if !o.loaded() {
		return nil
	}
	h := o.handle
	o.handle = 0
	for i, l := range t.loaded {
		if l == o {
			t.loaded = append(t.loaded[:i], t.loaded[i+1:]...)
			break
		}
	}
	if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(tp); err != nil {
		return fmt.Errorf("attest: flush %s %#x: %w", o.what, uint32(h), err)
	}
	return nil
}

// Handle ranges TPM2_GetCapability(TPM_CAP_HANDLES) lists: transient
// objects, loaded HMAC sessions, and policy sessions (loaded or saved).
var leftoverRanges = [...]struct {
	what  string
	first tpm2.TPMHandle
}{
	{"transient object", tpm2.TPMHandle(tpm2.TPMHTTransient) << 24},
	{"HMAC session", tpm2.TPMHandle(tpm2.TPMHTHMACSession) << 24},
	{"policy session", tpm2.TPMHandle(tpm2.TPMHTPolicySession) << 24},
}

// Leftovers counts what flushLeftovers flushed, per kind.
type Leftovers struct {
	Objects, Sessions int
}

// flushLeftovers flushes every transient object and session the TPM holds.
// Open calls it before anything else, when this process owns nothing yet:
// what is there was left by a process that never reached Close (SIGKILL, a
// crash), and a TPM has only a few slots for each. Behind the kernel
// resource manager (/dev/tpmrm0) the lists hold only this connection's
// handles, so it finds nothing there; swtpm and /dev/tpm0 have no resource
// manager, and leftovers survive until the TPM is reset.
func flushLeftovers(tp transport.TPM) (Leftovers, error) {
	var left Leftovers
	var errs []error
	for _, r := range leftoverRanges {
		handles, err := listHandles(tp, r.first)
		if err != nil {
			return left, fmt.Errorf("attest: list %ss: %w", r.what, err)
		}
		for _, h := range handles {
			if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(tp); err != nil {
				errs = append(errs, fmt.Errorf("attest: flush leftover %s %#x: %w", r.what, uint32(h), err))
				continue
			}
			if r.first == leftoverRanges[0].first {
				left.Objects++
			} else {
				left.Sessions++
			}
		}
	}
	return left, errors.Join(errs...)
}

// listHandles returns the handles of first's type (its top byte) from first on.
func listHandles(tp transport.TPM, first tpm2.TPMHandle) ([]tpm2.TPMHandle, error) {
	var out []tpm2.TPMHandle
	next := first
	for {
		rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(next), PropertyCount: 32}.Execute(tp)
		if err != nil {
			return nil, err
		}
		hs, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			return nil, err
		}
		for _, h := range hs.Handle {
			if h>>24 == first>>24 {
				out = append(out, h)
			}
		}
		if !rsp.MoreData || len(hs.Handle) == 0 {
			return out, nil
		}
		last := hs.Handle[len(hs.Handle)-1]
		if last>>24 != first>>24 {
			return out, nil
		}
		next = last + 1
	}
}

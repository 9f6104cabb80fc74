package attest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Counter is a monotonic anti-rollback floor kept in TPM NV, one per slot
// kind. It is the interface the rollback package consumes.
//
// Semantics:
//   - Read returns the current floor; 0 when it was never raised.
//   - RaiseTo(v) makes the floor max(floor, v) and returns the new floor. It
//     never lowers the floor: v <= floor is a no-op that returns floor. A
//     raise is one NV write whatever the distance, so the floor can be an
//     encoded version (e.g. major<<40|minor<<20|patch) or a release sequence
//     number.
//   - A raise that returned nil is durable (TPM NV write) and survives a disk
//     wipe or restore; callers persist their own cache only after it.
type Counter interface {
	Read(ctx context.Context) (uint64, error)
	RaiseTo(ctx context.Context, v uint64) (uint64, error)
}

// Why an ordinary NV index and not a TPM_NT_COUNTER:
//
//   - TPM2_NV_Increment adds exactly 1. Raising a floor from 3.1.0 to 4.0.0
//     (or by a release number jump of thousands) would take one command per
//     step; an ordinary index takes one NV_Write.
//   - A counter index starts at the TPM's high-water mark of all counters,
//     not at 0, so a counter-based floor needs an offset stored somewhere,
//     and whoever can rewrite the offset can lower the floor anyway.
//   - What the TPM cannot enforce here either way: an attacker running as
//     root holds the owner authorisation the agent uses, and can undefine and
//     redefine any index it created. The floor protects against the attacks
//     it is for — wiping or restoring the disk (the sqlite cache) to get an
//     old, validly signed version accepted again — and RaiseTo is the only
//     write path, so the agent itself never lowers it. Quotes, not the floor,
//     reveal a device whose root was compromised.
//
// Layout: 8 bytes big-endian floor, then SHA-256("edgeward floor\0" kind), so
// that an index-number collision between two kinds is detected, never
// silently shared.

// FloorIndexBase is the first NV index of floors; a kind's index is
// FloorIndexBase + FNV-1a-16(kind), in the owner range 0x01000000-0x013FFFFF.
const FloorIndexBase tpm2.TPMHandle = 0x013e0000

const floorSize = 8 + sha256.Size

// ErrFloorCollision is returned when another kind already owns the index.
var ErrFloorCollision = errors.New("attest: NV floor index belongs to another kind")

// NVFloor is a Counter in a TPM NV index. Safe for concurrent use.
type NVFloor struct {
	t     *TPM
	kind  string
	index tpm2.TPMHandle
	tag   [32]byte
}

var _ Counter = (*NVFloor)(nil)

// Floor returns the anti-rollback floor of a slot kind. Nothing is written to
// the TPM until the first RaiseTo.
func (t *TPM) Floor(kind string) *NVFloor {
	h := fnv.New32a()
	h.Write([]byte(kind))
	s := h.Sum32()
	return &NVFloor{
		t:     t,
		kind:  kind,
		index: FloorIndexBase + tpm2.TPMHandle((s>>16)^(s&0xffff)),
		tag:   sha256.Sum256([]byte("edgeward floor\x00" + kind)),
	}
}

// Index is the NV index holding this floor.
func (f *NVFloor) Index() tpm2.TPMHandle { return f.index }

// Read implements Counter.
func (f *NVFloor) Read(ctx context.Context) (uint64, error) {
	var v uint64
	err := f.t.do(ctx, func(tp transport.TPM) error {
		var err error
		v, _, err = f.readLocked(tp)
		return err
	})
	return v, err
}

// RaiseTo implements Counter.
func (f *NVFloor) RaiseTo(ctx context.Context, v uint64) (uint64, error) {
	var out uint64
	err := f.t.do(ctx, func(tp transport.TPM) error {
		cur, defined, err := f.readLocked(tp)
		if err != nil {
			return err
		}
		if v <= cur && defined {
			out = cur
			return nil
		}
		if !defined {
			if err := f.defineLocked(tp); err != nil {
				return err
			}
		}
		v = max(v, cur)
		data := make([]byte, floorSize)
		binary.BigEndian.PutUint64(data, v)
		copy(data[8:], f.tag[:])
		name, err := f.nameLocked(tp)
		if err != nil {
			return err
		}
		if _, err := (tpm2.NVWrite{
			AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
			NVIndex:    tpm2.NamedHandle{Handle: f.index, Name: name},
			Data:       tpm2.TPM2BMaxNVBuffer{Buffer: data},
		}).Execute(tp); err != nil {
			return fmt.Errorf("attest: raise %s floor to %d: NV_Write %#x: %w", f.kind, v, uint32(f.index), err)
		}
		got, _, err := f.readLocked(tp)
		if err != nil {
			return err
		}
		if got != v {
			return fmt.Errorf("attest: raise %s floor to %d: read back %d", f.kind, v, got)
		}
		out = got
		return nil
	})
	return out, err
}

func (f *NVFloor) nameLocked(tp transport.TPM) (tpm2.TPM2BName, error) {
	rp, err := tpm2.NVReadPublic{NVIndex: f.index}.Execute(tp)
	if err != nil {
		return tpm2.TPM2BName{}, fmt.Errorf("attest: %s floor: NV_ReadPublic %#x: %w", f.kind, uint32(f.index), err)
	}
	return rp.NVName, nil
}

// readLocked returns the floor and whether the index exists.
func (f *NVFloor) readLocked(tp transport.TPM) (uint64, bool, error) {
	rp, err := tpm2.NVReadPublic{NVIndex: f.index}.Execute(tp)
	if errors.Is(err, tpm2.TPMRCHandle) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("attest: %s floor: NV_ReadPublic %#x: %w", f.kind, uint32(f.index), err)
	}
	pub, err := rp.NVPublic.Contents()
	if err != nil {
		return 0, false, fmt.Errorf("attest: %s floor: %w", f.kind, err)
	}
	if pub.DataSize != floorSize {
		return 0, true, fmt.Errorf("%w: %#x has size %d", ErrFloorCollision, uint32(f.index), pub.DataSize)
	}
	r, err := tpm2.NVRead{
		AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		NVIndex:    tpm2.NamedHandle{Handle: f.index, Name: rp.NVName},
		Size:       floorSize,
	}.Execute(tp)
	if errors.Is(err, tpm2.TPMRCNVUninitialized) {
		return 0, true, nil // defined, crash before the first write
	}
	if err != nil {
		return 0, true, fmt.Errorf("attest: %s floor: NV_Read %#x: %w", f.kind, uint32(f.index), err)
	}
	b := r.Data.Buffer
	if len(b) != floorSize || !bytes.Equal(b[8:], f.tag[:]) {
		return 0, true, fmt.Errorf("%w: %#x (kind %q)", ErrFloorCollision, uint32(f.index), f.kind)
	}
	return binary.BigEndian.Uint64(b), true, nil
}

func (f *NVFloor) defineLocked(tp transport.TPM) error {
	_, err := tpm2.NVDefineSpace{
		AuthHandle: tpm2.TPMRHOwner,
		PublicInfo: tpm2.New2B(tpm2.TPMSNVPublic{
			NVIndex: f.index,
			NameAlg: tpm2.TPMAlgSHA256,
			Attributes: tpm2.TPMANV{
				OwnerWrite: true,
				OwnerRead:  true,
				AuthRead:   true,
				NoDA:       true,
				NT:         tpm2.TPMNTOrdinary,
			},
			DataSize: floorSize,
		}),
	}.Execute(tp)
	if err != nil && !errors.Is(err, tpm2.TPMRCNVDefined) {
		return fmt.Errorf("attest: %s floor: NV_DefineSpace %#x: %w", f.kind, uint32(f.index), err)
	}
	return nil
}

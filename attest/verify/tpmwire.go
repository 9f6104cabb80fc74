package verify

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// The two TPM structures every check-in carries, TPMT_SIGNATURE and the quote's
// TPMS_ATTEST (TPM 2.0 part 2, 11.3.4 and 10.12.12), read field by field: go-tpm's
// reflection-driven tpm2.Unmarshal cost the server more CPU per check-in than the
// log replay and the nonce together. The readers are strict: every length is checked
// against the input, nothing may follow the structure, and only what Verify accepts
// is read (RSASSA, RSA-PSS and ECDSA signatures; an attestation of type quote). For
// every input they accept, tpm2.Unmarshal reads the same values (tpmwire_test.go,
// FuzzTPMWire). The attestation is read only after its signature verified, so what it
// says was written by a TPM.

var errShort = errors.New("truncated")

// tpmReader reads big-endian TPM fields; the first error sticks.
type tpmReader struct {
	b   []byte
	err error
}

func (r *tpmReader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n > len(r.b) {
		r.err = errShort
		return nil
	}
	out := r.b[:n:n]
	r.b = r.b[n:]
	return out
}

func (r *tpmReader) u8() uint8 {
	if b := r.take(1); b != nil {
		return b[0]
	}
	return 0
}

func (r *tpmReader) u16() uint16 {
	if b := r.take(2); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (r *tpmReader) u32() uint32 {
	if b := r.take(4); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (r *tpmReader) u64() uint64 {
	if b := r.take(8); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

// sized reads a TPM2B: a 16-bit size, then that many bytes.
func (r *tpmReader) sized() []byte { return r.take(int(r.u16())) }

// end fails on anything left over, and returns the first error.
func (r *tpmReader) end() error {
	if r.err == nil && len(r.b) > 0 {
		r.err = fmt.Errorf("%d bytes of trailing data", len(r.b))
	}
	return r.err
}

// tpmSignature is a TPMT_SIGNATURE of an accepted algorithm: RSASSA or RSA-PSS (sig
// set), or ECDSA (r and s set).
type tpmSignature struct {
	alg  tpm2.TPMAlgID
	hash tpm2.TPMIAlgHash
	sig  []byte
	r, s []byte
}

func parseSignature(b []byte) (tpmSignature, error) {
	r := &tpmReader{b: b}
	out := tpmSignature{alg: tpm2.TPMAlgID(r.u16())}
	switch out.alg {
	case tpm2.TPMAlgRSASSA, tpm2.TPMAlgRSAPSS:
		out.hash = tpm2.TPMIAlgHash(r.u16())
		out.sig = r.sized()
	case tpm2.TPMAlgECDSA:
		out.hash = tpm2.TPMIAlgHash(r.u16())
		out.r, out.s = r.sized(), r.sized()
	default:
		if r.err == nil {
			return tpmSignature{}, fmt.Errorf("signature algorithm %v not accepted", out.alg)
		}
	}
	if err := r.end(); err != nil {
		return tpmSignature{}, fmt.Errorf("TPMT_SIGNATURE: %w", err)
	}
	return out, nil
}

// quoteAttest is what Verify reads of a quote's TPMS_ATTEST.
type quoteAttest struct {
	magic                    tpm2.TPMGenerated
	typ                      tpm2.TPMST
	extraData                []byte
	resetCount, restartCount uint32
	pcrSelect                tpm2.TPMLPCRSelection
	pcrDigest                []byte
}

// maxPCRSelections bounds TPML_PCR_SELECTION's count (HASH_COUNT: one per bank).
const maxPCRSelections = 16

func parseQuote(b []byte) (quoteAttest, error) {
	r := &tpmReader{b: b}
	var q quoteAttest
	q.magic = tpm2.TPMGenerated(r.u32())
	q.typ = tpm2.TPMST(r.u16())
	r.sized() // qualifiedSigner
	q.extraData = r.sized()
	r.u64() // clockInfo.clock
	q.resetCount, q.restartCount = r.u32(), r.u32()
	r.u8()  // clockInfo.safe
	r.u64() // firmwareVersion
	if r.err == nil && q.typ != tpm2.TPMSTAttestQuote {
		return quoteAttest{}, fmt.Errorf("not a quote (type %#x)", uint16(q.typ))
	}
	n := r.u32()
	if r.err == nil && n > maxPCRSelections {
		return quoteAttest{}, fmt.Errorf("TPMS_ATTEST: %d PCR selections", n)
	}
	for i := uint32(0); i < n && r.err == nil; i++ {
		hash := tpm2.TPMIAlgHash(r.u16())
		sel := r.take(int(r.u8()))
		q.pcrSelect.PCRSelections = append(q.pcrSelect.PCRSelections, tpm2.TPMSPCRSelection{Hash: hash, PCRSelect: sel})
	}
	q.pcrDigest = r.sized()
	if err := r.end(); err != nil {
		return quoteAttest{}, fmt.Errorf("TPMS_ATTEST: %w", err)
	}
	return q, nil
}

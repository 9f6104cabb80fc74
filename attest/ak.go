package attest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/edgeward/edgeward/internal/eventlog"
	"github.com/edgeward/edgeward/internal/protocol"
	"github.com/edgeward/edgeward/internal/wire"
)

// akTemplate is an RSA-2048 restricted signing key (RSASSA, SHA-256): it can
// only sign data the TPM produced itself (quotes, certify), which is what
// makes its signatures evidence. RSA because step-ca's device-attest-01
// verifier accepts only RSA attestation keys.
var akTemplate = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgRSA,
	NameAlg: tpm2.TPMAlgSHA256,
	ObjectAttributes: tpm2.TPMAObject{
		FixedTPM:            true,
		FixedParent:         true,
		SensitiveDataOrigin: true,
		UserWithAuth:        true,
		NoDA:                true,
		Restricted:          true,
		SignEncrypt:         true,
	},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
		Scheme: tpm2.TPMTRSAScheme{
			Scheme:  tpm2.TPMAlgRSASSA,
			Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgRSASSA, &tpm2.TPMSSigSchemeRSASSA{HashAlg: tpm2.TPMAlgSHA256}),
		},
		KeyBits: 2048,
	}),
	// Empty unique: the same key tpm2_createprimary makes from these attributes.
	Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{}),
}

// AK describes the attestation key.
type AK struct {
	Public crypto.PublicKey
	// TPMPublic is the marshalled TPMT_PUBLIC; its name (hash) is what the
	// attestation CA's credential is bound to.
	TPMPublic []byte
}

// AK returns the attestation key. It is a primary key of the owner hierarchy
// derived from a fixed template, so it is the same key after every boot until
// the owner hierarchy is cleared; nothing needs storing on disk.
func (t *TPM) AK(ctx context.Context) (*AK, error) {
	var public tpm2.TPMTPublic
	err := t.do(ctx, func(tp transport.TPM) error {
		if err := t.loadLocked(tp, t.ak); err != nil {
			return err
		}
		public = t.ak.public
		return nil
	})
	if err != nil {
		return nil, err
	}
	pub, err := tpm2.Pub(public)
	if err != nil {
		return nil, fmt.Errorf("attest: AK public: %w", err)
	}
	return &AK{Public: pub, TPMPublic: tpm2.Marshal(public)}, nil
}

// ActivateCredential recovers the secret the attestation CA encrypted to the
// EK (of algorithm alg) and bound to the AK's name. The TPM releases it only
// if the AK is loaded in the TPM that holds the EK: this is the proof the CA
// relies on before it certifies the AK.
func (t *TPM) ActivateCredential(ctx context.Context, alg KeyAlg, credentialBlob, encryptedSecret []byte) ([]byte, error) {
	ak := t.ak
	var secret []byte
	err := t.withEK(ctx, alg, []*object{ak}, func(tp transport.TPM, ek *object) error {
		rsp, err := tpm2.ActivateCredential{
			ActivateHandle: tpm2.AuthHandle{Handle: ak.handle, Name: ak.name, Auth: tpm2.PasswordAuth(nil)},
			KeyHandle: tpm2.AuthHandle{
				Handle: ek.handle, Name: ek.name,
				// The TCG EK template's policy is PolicySecret(TPM_RH_ENDORSEMENT).
				Auth: tpm2.Policy(tpm2.TPMAlgSHA256, 16, func(tp transport.TPM, h tpm2.TPMISHPolicy, nonce tpm2.TPM2BNonce) error {
					_, err := tpm2.PolicySecret{AuthHandle: tpm2.TPMRHEndorsement, PolicySession: h, NonceTPM: nonce}.Execute(tp)
					return err
				}),
			},
			CredentialBlob: tpm2.TPM2BIDObject{Buffer: credentialBlob},
			Secret:         tpm2.TPM2BEncryptedSecret{Buffer: encryptedSecret},
		}.Execute(tp)
		if err != nil {
			return fmt.Errorf("attest: ActivateCredential: %w", err)
		}
		secret = rsp.CertInfo.Buffer
		return nil
	})
	return secret, err
}

// Quote is a TPM2_Quote signed by the AK, plus the SHA-256 PCR values it
// covers (read right before the quote).
type Quote = protocol.Quote

// Quote signs the SHA-256 bank values of pcrs and the nonce with the AK. The
// nonce (from the verifier, at most 64 bytes) prevents replay: a verifier
// must issue a fresh one per quote.
func (t *TPM) Quote(ctx context.Context, nonce []byte, pcrs []int) (*Quote, error) {
	if len(pcrs) == 0 {
		return nil, fmt.Errorf("attest: quote: no PCRs selected")
	}
	for _, p := range pcrs {
		if p < 0 || p > 23 {
			return nil, fmt.Errorf("attest: quote: PCR %d out of range", p)
		}
	}
	ak := t.ak
	sel := pcrSelection(pcrs)
	q := &Quote{PCRs: map[int][]byte{}}
	err := t.do(ctx, func(tp transport.TPM) error {
		if err := t.loadLocked(tp, ak); err != nil {
			return err
		}
		// PCR_Read and Quote are two commands: another user of the TPM (the kernel
		// extending PCR 10 for IMA, a boot service) can extend a selected PCR between
		// them, and the values sent would not be the ones quoted (the verifier's
		// pcr_digest_mismatch, a device untrusted until its next check-in). So the
		// values are checked against the quote's own digest, read again after the quote
		// when they differ, and the whole taken again, a few times, if both reads miss.
		for attempt := 1; ; attempt++ {
			vals, err := readPCRs(tp, pcrs)
			if err != nil {
				return err
			}
			rsp, err := tpm2.Quote{
				SignHandle:     tpm2.AuthHandle{Handle: ak.handle, Name: ak.name, Auth: tpm2.PasswordAuth(nil)},
				QualifyingData: tpm2.TPM2BData{Buffer: nonce},
				InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
				PCRSelect:      sel,
			}.Execute(tp)
			if err != nil {
				return fmt.Errorf("attest: quote: %w", err)
			}
			q.PCRs, q.Attest, q.Signature = vals, rsp.Quoted.Bytes(), tpm2.Marshal(rsp.Signature)
			quoted, err := quotedPCRDigest(&rsp.Quoted)
			if err != nil || bytes.Equal(pcrDigest(vals, pcrs), quoted) {
				return nil // (a quote this code cannot parse is the verifier's to judge)
			}
			if after, err := readPCRs(tp, pcrs); err == nil && bytes.Equal(pcrDigest(after, pcrs), quoted) {
				q.PCRs = after
				return nil
			}
			if attempt == maxQuoteAttempts {
				return nil // sent as is: the verifier says which PCR moved
			}
		}
	})
	if err != nil {
		return nil, err
	}
	return q, nil
}

// maxQuoteAttempts bounds Quote's retries while selected PCRs keep changing.
const maxQuoteAttempts = 4

// quotedPCRDigest is the PCR digest inside a quote's TPMS_ATTEST.
func quotedPCRDigest(a *tpm2.TPM2BAttest) ([]byte, error) {
	att, err := a.Contents()
	if err != nil {
		return nil, err
	}
	info, err := att.Attested.Quote()
	if err != nil {
		return nil, err
	}
	return info.PCRDigest.Buffer, nil
}

// pcrDigest is what TPM2_Quote digests for pcrSelection(pcrs) with the AK's SHA-256
// scheme: the values in ascending PCR order (one selection), each PCR once.
func pcrDigest(vals map[int][]byte, pcrs []int) []byte {
	order := slices.Compact(slices.Sorted(slices.Values(pcrs)))
	h := sha256.New()
	for _, p := range order {
		h.Write(vals[p])
	}
	return h.Sum(nil)
}

func pcrSelection(pcrs []int) tpm2.TPMLPCRSelection {
	u := make([]uint, len(pcrs))
	for i, p := range pcrs {
		u[i] = uint(p)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash:      tpm2.TPMAlgSHA256,
		PCRSelect: tpm2.PCClientCompatible.PCRs(u...),
	}}}
}

// readPCRs reads SHA-256 PCR values; TPM2_PCR_Read returns at most 8 per call.
func readPCRs(tp transport.TPM, pcrs []int) (map[int][]byte, error) {
	want := slices.Clone(pcrs)
	slices.Sort(want)
	want = slices.Compact(want)
	out := map[int][]byte{}
	for len(want) > 0 {
		rsp, err := tpm2.PCRRead{PCRSelectionIn: pcrSelection(want)}.Execute(tp)
		if err != nil {
			return nil, fmt.Errorf("attest: PCR_Read: %w", err)
		}
		got := 0
		// The response lists values in ascending PCR order of the returned selection.
		var returned []int
		for _, s := range rsp.PCRSelectionOut.PCRSelections {
			for i, b := range s.PCRSelect {
				for bit := 0; bit < 8; bit++ {
					if b&(1<<bit) != 0 {
						returned = append(returned, i*8+bit)
					}
				}
			}
		}
		for i, p := range returned {
			if i < len(rsp.PCRValues.Digests) {
				out[p] = slices.Clone(rsp.PCRValues.Digests[i].Buffer)
				got++
			}
		}
		if got == 0 {
			return nil, fmt.Errorf("attest: PCR_Read returned no values for %v", want)
		}
		want = slices.DeleteFunc(want, func(p int) bool { _, ok := out[p]; return ok })
	}
	return out, nil
}

// Evidence quotes pcrs over nonce and packages the quote with the AK
// certificate and the measurement log, ready for the server's verifier
// (attest/verify). The log must be the complete log of this boot for the
// measurement PCR; intermediates of the AK chain are included, the root is
// not (the verifier has it).
func (t *TPM) Evidence(ctx context.Context, ak *AKCertificate, nonce []byte, pcrs []int, log eventlog.Log) (*wire.Evidence, error) {
	q, err := t.Quote(ctx, nonce, pcrs)
	if err != nil {
		return nil, err
	}
	ev := &wire.Evidence{AKCert: ak.Certificate.Raw, Quote: *q, Log: log}
	for _, c := range ak.Chain {
		if string(c.RawSubject) != string(c.RawIssuer) {
			ev.AKChain = append(ev.AKChain, c.Raw)
		}
	}
	return ev, nil
}

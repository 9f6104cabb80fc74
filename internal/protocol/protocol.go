// Package protocol holds the wire types shared by the device (package attest)
// and the server (attest/attestca, attest/verify), and the pure helpers both
// sides must compute identically. It has no TPM and no I/O.
//
// Byte fields are base64 in JSON (encoding/json's []byte encoding).
package protocol

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"fmt"
)

// TPMInfo is what the device's TPM reports about itself.
type TPMInfo struct {
	Manufacturer string `json:"manufacturer"`
	Model        string `json:"model"`
	Version      string `json:"version"`
}

// EnrollRequest starts enrollment: POST {prefix}/enroll.
type EnrollRequest struct {
	// EKAlg is "rsa" or "ecc".
	EKAlg string `json:"ek_alg"`
	// EKCert is the DER EK certificate from the TPM's NV; empty when the TPM
	// has none (then the EK must be on the CA's allowlist).
	EKCert []byte `json:"ek_cert,omitempty"`
	// EKChain are optional DER intermediates between EKCert and a
	// manufacturer root.
	EKChain [][]byte `json:"ek_chain,omitempty"`
	// EKPublic is the EK's marshalled TPMT_PUBLIC; its key must equal
	// EKCert's.
	EKPublic []byte `json:"ek_public"`
	// AKPublic is the AK's marshalled TPMT_PUBLIC.
	AKPublic []byte  `json:"ak_public"`
	TPM      TPMInfo `json:"tpm"`
}

// EnrollChallenge is the CA's answer: a credential encrypted to the EK and
// bound to the AK's name (TPM2_MakeCredential done in software).
type EnrollChallenge struct {
	ID              string `json:"id"`
	CredentialBlob  []byte `json:"credential_blob"`
	EncryptedSecret []byte `json:"encrypted_secret"`
}

// ActivateRequest proves the AK is in the EK's TPM: POST {prefix}/activate.
type ActivateRequest struct {
	ID     string `json:"id"`
	Secret []byte `json:"secret"`
}

// EnrollResponse carries the AK certificate.
type EnrollResponse struct {
	// AKCert is the DER AK certificate.
	AKCert []byte `json:"ak_cert"`
	// Chain are the DER CA certificates above AKCert, issuer first; the last
	// one is the attestation CA root.
	Chain [][]byte `json:"chain"`
	// PermanentIdentifier is the EK-derived device identifier in AKCert's
	// SAN, the value of an ACME "permanent-identifier".
	PermanentIdentifier string `json:"permanent_identifier"`
}

// Error is the body of every 4xx/5xx answer.
type Error struct {
	Error string `json:"error"`
	// Code says what a client should do about it, where the status alone does not:
	// CodeRefused, or empty.
	Code string `json:"code,omitempty"`
}

// CodeRefused: the fleet refuses this TPM for good (the device was decommissioned).
// Asking again soon changes nothing; a client asks rarely (the agent hourly) and says
// why. Other rejections (an EK not yet on the allowlist, an untrusted EK certificate)
// may end when an operator acts, and carry no code.
const CodeRefused = "refused"

// Quote is a TPM2_Quote by the AK plus the PCR values it covers.
type Quote struct {
	// Attest is the marshalled TPMS_ATTEST the AK signed.
	Attest []byte `json:"attest"`
	// Signature is the marshalled TPMT_SIGNATURE over Attest.
	Signature []byte `json:"signature"`
	// PCRs are the SHA-256 bank values of the quoted PCRs.
	PCRs map[int][]byte `json:"pcrs"`
}

// EKID is the device's permanent identifier derived from its EK public key:
// "urn:ek:sha256:" + base64(SHA-256(PKIX DER of the key)), the form
// smallstep's TPM tooling uses. It is stable for the TPM's lifetime.
func EKID(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("protocol: EK public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return "urn:ek:sha256:" + base64.StdEncoding.EncodeToString(sum[:]), nil
}

// OIDs of the TPM certificate profiles (the TCG EK credential profile, RFC 5280's
// subjectAltName, RFC 4043's permanent identifier), for the CA, the verifier and the
// test manufacturer alike. Functions, not variables: an asn1.ObjectIdentifier is a
// slice, and a shared variable could be changed by any importer.
func OIDSubjectAltName() asn1.ObjectIdentifier  { return asn1.ObjectIdentifier{2, 5, 29, 17} }
func OIDTPMManufacturer() asn1.ObjectIdentifier { return asn1.ObjectIdentifier{2, 23, 133, 2, 1} }
func OIDTPMModel() asn1.ObjectIdentifier        { return asn1.ObjectIdentifier{2, 23, 133, 2, 2} }
func OIDTPMVersion() asn1.ObjectIdentifier      { return asn1.ObjectIdentifier{2, 23, 133, 2, 3} }

// OIDPermanentIdentifier is RFC 4043's otherName type.
func OIDPermanentIdentifier() asn1.ObjectIdentifier {
	return asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 8, 3}
}

// OIDEKCertificate and OIDAIKCertificate are the TCG extended key usages of EK and AK
// certificates (tcg-kp-EKCertificate, tcg-kp-AIKCertificate).
func OIDEKCertificate() asn1.ObjectIdentifier  { return asn1.ObjectIdentifier{2, 23, 133, 8, 1} }
func OIDAIKCertificate() asn1.ObjectIdentifier { return asn1.ObjectIdentifier{2, 23, 133, 8, 3} }

// TPMDetails extracts the TPM manufacturer, model and version from a
// certificate's SAN directoryName (EK and AK certificate profile).
func TPMDetails(c *x509.Certificate) (TPMInfo, bool) {
	var info TPMInfo
	for _, e := range c.Extensions {
		if !e.Id.Equal(OIDSubjectAltName()) {
			continue
		}
		var names []asn1.RawValue
		if _, err := asn1.Unmarshal(e.Value, &names); err != nil {
			return info, false
		}
		for _, n := range names {
			if n.Class != asn1.ClassContextSpecific || n.Tag != 4 {
				continue
			}
			var rdns pkix.RDNSequence
			if _, err := asn1.Unmarshal(n.Bytes, &rdns); err != nil {
				continue
			}
			for _, rdn := range rdns {
				for _, atv := range rdn {
					s, _ := atv.Value.(string)
					switch {
					case atv.Type.Equal(OIDTPMManufacturer()):
						info.Manufacturer = s
					case atv.Type.Equal(OIDTPMModel()):
						info.Model = s
					case atv.Type.Equal(OIDTPMVersion()):
						info.Version = s
					}
				}
			}
		}
	}
	return info, info.Manufacturer != "" && info.Model != "" && info.Version != ""
}

// PermanentIdentifiers returns the RFC 4043 permanent identifiers in a
// certificate's SAN.
func PermanentIdentifiers(c *x509.Certificate) []string {
	var out []string
	for _, e := range c.Extensions {
		if !e.Id.Equal(OIDSubjectAltName()) {
			continue
		}
		var names []asn1.RawValue
		if _, err := asn1.Unmarshal(e.Value, &names); err != nil {
			return nil
		}
		for _, n := range names {
			if n.Class != asn1.ClassContextSpecific || n.Tag != 0 {
				continue
			}
			var on struct {
				TypeID asn1.ObjectIdentifier
				Value  asn1.RawValue
			}
			if _, err := asn1.UnmarshalWithParams(n.FullBytes, &on, "tag:0"); err != nil || !on.TypeID.Equal(OIDPermanentIdentifier()) {
				continue
			}
			var pid struct {
				IdentifierValue string                `asn1:"utf8,optional"`
				Assigner        asn1.ObjectIdentifier `asn1:"optional"`
			}
			if _, err := asn1.UnmarshalWithParams(on.Value.FullBytes, &pid, "explicit,tag:0"); err == nil && pid.IdentifierValue != "" {
				out = append(out, pid.IdentifierValue)
			}
		}
	}
	return out
}

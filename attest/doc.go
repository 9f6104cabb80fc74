// Package attest is the device side of Edgeward attestation: access to the TPM
// (simulator, /dev/tpmrm0, swtpm over TCP), the endorsement key (EK) and its
// certificate, the attestation key (AK), quotes, TPM2_Certify of TPM-resident
// signing keys, PCR measurements and NV anti-rollback floors, the client of
// the attestation CA and the ACME device-attest-01 client.
//
// # Device flow
//
//	tpm, _ := attest.Open(ctx, "/dev/tpmrm0")            // or "sim", "swtpm://127.0.0.1:2321"
//	ak, _ := (&attest.EnrollClient{URL: server + "/v1/attest"}).Enroll(ctx, tpm)
//	key, _ := tpm.CreateKey(ctx, []byte("device-tls"))    // same label → same key after reboot
//	chain, _ := attest.RequestDeviceCert(ctx, attest.DeviceCertRequest{
//		DirectoryURL: stepCADirectory, HTTP: client, AK: ak, Key: key})
//	// tls.Certificate{Certificate: DERs of chain, PrivateKey: key} for mTLS
//	e, _ := tpm.Measure(ctx, eventlog.Event{PCR: 16, Kind: "model", Name: n, Version: v, SHA256: h})
//	log = append(log, e)                                   // persist before relying on it
//	ev, _ := tpm.Evidence(ctx, ak, serverNonce, []int{16}, log)
//	floor := tpm.Floor("model"); floor.RaiseTo(ctx, v)    // anti-rollback (attest.Counter)
//
// # Server side (subpackages the agent does not link)
//
//   - attest/attestca: the attestation CA (EK chain + allowlist, MakeCredential,
//     AK certificate in step-ca's profile) and its http.Handler
//     (POST /enroll, POST /activate).
//   - attest/verify: Verify (pure) and Check (with single-use Nonces) turn
//     wire.Evidence into a Verdict.
//   - attest/stepca: embedded step-ca with an ACME provisioner that allows
//     only device-attest-01, format tpm, trusting the attestation CA root.
//
// Shared pure packages: internal/eventlog (measurement log, replay) and
// internal/protocol (wire types, the EK-derived permanent identifier).
// attest/attesttest holds test fixtures (a manufacturer CA that provisions EK
// certificates into a TPM's NV, and a swtpm launcher).
//
// A *TPM serialises its commands; it is safe for concurrent use.
package attest

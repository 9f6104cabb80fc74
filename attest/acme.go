package attest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/fxamacker/cbor/v2"
	"golang.org/x/crypto/acme"
)

// coseAlgRS256 is the COSE identifier of RSASSA-PKCS1-v1_5 with SHA-256, the
// AK's signature scheme.
const coseAlgRS256 = -257

// DeviceCertRequest configures RequestDeviceCert.
type DeviceCertRequest struct {
	// DirectoryURL is the ACME directory of the step-ca provisioner.
	DirectoryURL string
	// HTTP is the client (it must trust the CA's TLS root); nil means
	// http.DefaultClient.
	HTTP *http.Client
	// AK is the AK certificate from Enroll; its PermanentIdentifier is the
	// ACME identifier.
	AK *AKCertificate
	// Key is the TPM-resident key to certify; its private part never leaves
	// the TPM.
	Key *Key
	// AccountKey signs ACME requests; nil means a fresh P-256 key (an
	// ACME account per request, which step-ca allows).
	AccountKey crypto.Signer
}

// ErrACME wraps failures of the ACME exchange.
var ErrACME = errors.New("attest: ACME device-attest-01")

// RequestDeviceCert obtains a device certificate for r.Key from step-ca with
// ACME device-attest-01 (format "tpm"): an order for the "permanent-identifier"
// r.AK.PermanentIdentifier; the challenge answered with an attestation object
// whose x5c is the AK certificate chain and whose certInfo/pubArea/sig are a
// TPM2_Certify of r.Key by the AK over SHA-256(keyAuthorization); then a CSR
// signed by r.Key. It returns the certificate chain, leaf first.
func RequestDeviceCert(ctx context.Context, r DeviceCertRequest) ([]*x509.Certificate, error) {
	if r.AK == nil || r.Key == nil || r.AK.PermanentIdentifier == "" {
		return nil, fmt.Errorf("%w: AK certificate with permanent identifier and key are required", ErrACME)
	}
	acct := r.AccountKey
	if acct == nil {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		acct = k
	}
	c := &acme.Client{Key: acct, DirectoryURL: r.DirectoryURL, HTTPClient: r.HTTP, UserAgent: "edgeward-agent"}
	if _, err := c.Register(ctx, &acme.Account{}, acme.AcceptTOS); err != nil && !errors.Is(err, acme.ErrAccountAlreadyExists) {
		return nil, fmt.Errorf("%w: register: %w", ErrACME, err)
	}
	order, err := c.AuthorizeOrder(ctx, []acme.AuthzID{{Type: "permanent-identifier", Value: r.AK.PermanentIdentifier}})
	if err != nil {
		return nil, fmt.Errorf("%w: new order: %w", ErrACME, err)
	}
	for _, u := range order.AuthzURLs {
		z, err := c.GetAuthorization(ctx, u)
		if err != nil {
			return nil, fmt.Errorf("%w: authorization: %w", ErrACME, err)
		}
		if z.Status == acme.StatusValid {
			continue
		}
		var chal *acme.Challenge
		for _, ch := range z.Challenges {
			if ch.Type == "device-attest-01" {
				chal = ch
			}
		}
		if chal == nil {
			return nil, fmt.Errorf("%w: server offered no device-attest-01 challenge", ErrACME)
		}
		// keyAuthorization = token "." base64url(JWK thumbprint); the
		// http-01 response is exactly that string.
		keyAuth, err := c.HTTP01ChallengeResponse(chal.Token)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrACME, err)
		}
		attObj, err := attestationObject(ctx, r.AK, r.Key, keyAuth)
		if err != nil {
			return nil, err
		}
		payload, err := json.Marshal(map[string]string{"attObj": base64.RawURLEncoding.EncodeToString(attObj)})
		if err != nil {
			return nil, err
		}
		chal.Payload = payload
		got, err := c.Accept(ctx, chal)
		if err != nil {
			return nil, fmt.Errorf("%w: challenge: %w", ErrACME, err)
		}
		// step-ca validates synchronously and leaves the authorization
		// pending when the challenge fails, so watch the challenge.
		for got.Status != acme.StatusValid {
			if got.Status == acme.StatusInvalid {
				return nil, fmt.Errorf("%w: challenge rejected: %v", ErrACME, got.Error)
			}
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("%w: challenge: %w", ErrACME, ctx.Err())
			case <-time.After(250 * time.Millisecond):
			}
			if got, err = c.GetChallenge(ctx, chal.URI); err != nil {
				return nil, fmt.Errorf("%w: challenge: %w", ErrACME, err)
			}
		}
		if _, err := c.WaitAuthorization(ctx, z.URI); err != nil {
			return nil, fmt.Errorf("%w: authorization: %w", ErrACME, err)
		}
	}
	if order, err = c.WaitOrder(ctx, order.URI); err != nil {
		return nil, fmt.Errorf("%w: order: %w", ErrACME, err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: r.AK.PermanentIdentifier},
	}, r.Key)
	if err != nil {
		return nil, fmt.Errorf("%w: CSR: %w", ErrACME, err)
	}
	ders, _, err := c.CreateOrderCert(ctx, order.FinalizeURL, csr, true)
	if err != nil {
		return nil, fmt.Errorf("%w: finalize: %w", ErrACME, err)
	}
	var chain []*x509.Certificate
	for _, der := range ders {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("%w: certificate: %w", ErrACME, err)
		}
		chain = append(chain, cert)
	}
	if len(chain) == 0 || !PublicKeyEqual(chain[0].PublicKey, r.Key.Public()) {
		return nil, fmt.Errorf("%w: certificate is not for the TPM key", ErrACME)
	}
	return chain, nil
}

// attestationObject builds the CBOR attestation object of device-attest-01
// format "tpm" (the WebAuthn TPM attestation statement shape).
func attestationObject(ctx context.Context, ak *AKCertificate, key *Key, keyAuth string) ([]byte, error) {
	qd := sha256.Sum256([]byte(keyAuth))
	cert, err := key.Certify(ctx, qd[:])
	if err != nil {
		return nil, err
	}
	x5c := []any{ak.Certificate.Raw}
	for _, c := range ak.Chain {
		if !c.IsCA || string(c.RawSubject) != string(c.RawIssuer) { // the root is the verifier's
			x5c = append(x5c, c.Raw)
		}
	}
	return cbor.Marshal(map[string]any{
		"fmt": "tpm",
		"attStmt": map[string]any{
			"ver":      "2.0",
			"alg":      int64(coseAlgRS256),
			"x5c":      x5c,
			"sig":      cert.Signature,
			"certInfo": cert.CertifyInfo,
			"pubArea":  cert.Public,
		},
	})
}

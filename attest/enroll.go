package attest

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/google/go-tpm/tpm2"

	"github.com/edgeward/edgeward/internal/protocol"
)

// ErrEnrollRejected wraps a 4xx answer of the attestation CA (a *RejectedError).
var ErrEnrollRejected = errors.New("attest: attestation CA refused enrollment")

// ErrOutOfService: the fleet refuses this TPM for good (the device was decommissioned;
// protocol.CodeRefused). A *RejectedError is it too. Asking again soon changes nothing.
var ErrOutOfService = errors.New("the fleet has taken this device out of service")

// RejectedError is a 4xx answer of the attestation CA: ErrEnrollRejected, and
// ErrOutOfService when the CA says the fleet refuses the TPM for good.
type RejectedError struct {
	URL     string
	Status  int
	Code    string // protocol.Error's Code
	Message string // the CA's words, not escaped: print them with care
}

func (e *RejectedError) Error() string {
	return fmt.Sprintf("%v: %s: %d %s", ErrEnrollRejected, e.URL, e.Status, e.Message)
}

// Unwrap is ErrEnrollRejected, with ErrOutOfService for protocol.CodeRefused. Before
// the code existed, a decommissioned device's refusal read "refused: device
// decommissioned" (a server of then is understood too).
func (e *RejectedError) Unwrap() []error {
	if e.Code == protocol.CodeRefused || (e.Status == http.StatusForbidden && strings.Contains(e.Message, "refused: device decommissioned")) {
		return []error{ErrEnrollRejected, ErrOutOfService}
	}
	return []error{ErrEnrollRejected}
}

// maxResponseBytes bounds what the client reads from the CA.
const maxResponseBytes = 256 << 10

// EnrollClient talks to the attestation CA (attest/attestca) to obtain an AK
// certificate.
type EnrollClient struct {
	// URL is the CA's base URL, e.g. https://repo.example/v1/attest.
	URL string
	// HTTP is the client; nil means http.DefaultClient.
	HTTP *http.Client
	// EKAlg selects the EK; the zero value is RSA.
	EKAlg KeyAlg
	// EKChain are optional DER intermediates for the EK certificate.
	EKChain [][]byte
}

// AKCertificate is an issued AK certificate and its chain.
type AKCertificate struct {
	Certificate *x509.Certificate
	// Chain is issuer first; the last one is the attestation CA root.
	Chain []*x509.Certificate
	// PermanentIdentifier is the EK-derived device identifier.
	PermanentIdentifier string
}

// Enroll proves to the attestation CA that the TPM's AK lives beside its EK
// and returns the AK certificate. It checks that the certificate is for the
// TPM's AK; trusting the CA's root is the caller's configuration.
func (c *EnrollClient) Enroll(ctx context.Context, t *TPM) (*AKCertificate, error) {
	ek, err := t.EK(ctx, c.EKAlg)
	if err != nil {
		return nil, err
	}
	ak, err := t.AK(ctx)
	if err != nil {
		return nil, err
	}
	info, err := t.Info(ctx)
	if err != nil {
		return nil, err
	}
	req := protocol.EnrollRequest{
		EKAlg:    c.EKAlg.String(),
		EKCert:   ek.CertificateDER,
		EKChain:  c.EKChain,
		EKPublic: tpm2.Marshal(ek.TPMPublic),
		AKPublic: ak.TPMPublic,
		TPM:      protocol.TPMInfo(info),
	}
	var ch protocol.EnrollChallenge
	if err := c.post(ctx, "/enroll", req, &ch); err != nil {
		return nil, err
	}
	secret, err := t.ActivateCredential(ctx, c.EKAlg, ch.CredentialBlob, ch.EncryptedSecret)
	if err != nil {
		return nil, err
	}
	var resp protocol.EnrollResponse
	if err := c.post(ctx, "/activate", protocol.ActivateRequest{ID: ch.ID, Secret: secret}, &resp); err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(resp.AKCert)
	if err != nil {
		return nil, fmt.Errorf("attest: AK certificate from CA: %w", err)
	}
	if !PublicKeyEqual(cert.PublicKey, ak.Public) {
		return nil, errors.New("attest: CA returned a certificate for another key")
	}
	out := &AKCertificate{Certificate: cert, PermanentIdentifier: resp.PermanentIdentifier}
	for i, der := range resp.Chain {
		cc, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("attest: AK chain[%d]: %w", i, err)
		}
		out.Chain = append(out.Chain, cc)
	}
	return out, nil
}

func (c *EnrollClient) post(ctx context.Context, path string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	url := strings.TrimSuffix(c.URL, "/") + path
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("attest: %s: %w", url, err)
	}
	req.Header.Set("Content-Type", "application/json")
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("attest: %s: %w", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return fmt.Errorf("attest: %s: %w", url, err)
	}
	if len(b) > maxResponseBytes {
		return fmt.Errorf("attest: %s: response larger than %d bytes", url, maxResponseBytes)
	}
	if resp.StatusCode != http.StatusOK {
		var e protocol.Error
		_ = json.Unmarshal(b, &e)
		if resp.StatusCode >= 400 && resp.StatusCode < 500 {
			return &RejectedError{URL: url, Status: resp.StatusCode, Code: e.Code, Message: e.Error}
		}
		return fmt.Errorf("attest: %s: %d %s", url, resp.StatusCode, e.Error)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("attest: %s: %w", url, err)
	}
	return nil
}

// MarshalPEM encodes the AK certificate and its chain as PEM, for the agent
// to store (none of it is secret).
func (a *AKCertificate) MarshalPEM() []byte {
	var out []byte
	for _, c := range append([]*x509.Certificate{a.Certificate}, a.Chain...) {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// ParseAKCertificatePEM decodes what MarshalPEM wrote: the AK certificate
// first, then its chain. The permanent identifier is read back from the
// certificate.
func ParseAKCertificatePEM(b []byte) (*AKCertificate, error) {
	var certs []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("attest: AK certificate PEM: %w", err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("attest: AK certificate PEM: no certificate")
	}
	ids := protocol.PermanentIdentifiers(certs[0])
	if len(ids) != 1 {
		return nil, fmt.Errorf("attest: AK certificate has %d permanent identifiers; want 1", len(ids))
	}
	return &AKCertificate{Certificate: certs[0], Chain: certs[1:], PermanentIdentifier: ids[0]}, nil
}

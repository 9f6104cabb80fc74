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
	"io"
	"net/http"
	"strconv"
	"strings"
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
	// Timeout bounds the whole exchange, retries and polling included; zero means
	// two minutes.
	Timeout time.Duration
}

// The bounds on what an ACME server (or someone on the path to it) can make the device
// do. Without them, one 503 with Retry-After: 1000000000 parked the agent in
// x/crypto/acme's backoff for about 31 years, before its first check-in, and 503s
// with a 1 GiB body took it to 5.4 GB resident: the library reads an error body whole
// and retries (found by an outside audit, 1 Dec).
const (
	acmeTimeout      = 2 * time.Minute
	acmeMaxRetries   = 4               // of one request, after its first try
	acmeMaxBackoff   = 5 * time.Second // whatever Retry-After says
	acmeMaxBodyBytes = 1 << 20         // of one response: JSON, or a certificate chain
)

// acmeBackoff is acme.Client.RetryBackoff: 250 ms doubling, or Retry-After, at most
// acmeMaxBackoff, for acmeMaxRetries retries; then the request fails.
func acmeBackoff(n int, _ *http.Request, resp *http.Response) time.Duration {
	if n > acmeMaxRetries {
		return -1
	}
	d := min(250*time.Millisecond<<min(n, 10), acmeMaxBackoff)
	if resp != nil {
		// 0 would end the retries (the library stops at a wait of 0 or less).
		if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && secs > 0 {
			d = min(time.Duration(min(secs, 3600))*time.Second, acmeMaxBackoff)
		}
	}
	return d
}

// boundedBodies wraps a RoundTripper so that no response body yields more than
// acmeMaxBodyBytes: a read past them fails.
type boundedBodies struct{ rt http.RoundTripper }

func (b boundedBodies) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := b.rt.RoundTrip(req)
	if err == nil {
		resp.Body = &cappedBody{ReadCloser: resp.Body}
	}
	return resp, err
}

type cappedBody struct {
	io.ReadCloser
	read int64
}

// Read passes the body through up to acmeMaxBodyBytes; a byte past them fails the read.
func (c *cappedBody) Read(p []byte) (int, error) {
	if left := acmeMaxBodyBytes + 1 - c.read; int64(len(p)) > left {
		p = p[:left]
	}
	n, err := c.ReadCloser.Read(p)
	c.read += int64(n)
	if c.read > acmeMaxBodyBytes {
		return n - 1, fmt.Errorf("%w: an ACME response longer than %d bytes", ErrACME, acmeMaxBodyBytes)
	}
	return n, err
}

// refusedForGood reports whether err is the CA's refusal of a device it has taken out of
// service: ACME "unauthorized" naming a decommissioned device (the server's step-ca asks
// the fleet before it signs). A running agent whose certificate then expired renewed it
// at every check-in, each a full ACME order the CA refused, instead of asking hourly
// (found from outside, 2 Dec).
func refusedForGood(err error) bool {
	var ae *acme.Error
	return errors.As(err, &ae) && strings.HasSuffix(ae.ProblemType, ":unauthorized") && strings.Contains(ae.Error(), "device decommissioned")
}

// maxErrorText bounds the text of RequestDeviceCert's errors: x/crypto/acme puts an
// error answer's body in its error, and the agent logs and reports it.
const maxErrorText = 1024

// boundedError is err with its text cut to maxErrorText bytes (and its length said).
type boundedError struct{ err error }

func (e *boundedError) Error() string {
	s := e.err.Error()
	return strings.ToValidUTF8(s[:maxErrorText], "") + fmt.Sprintf("… (%d bytes)", len(s))
}

func (e *boundedError) Unwrap() error { return e.err }

// acmeHTTP is base (nil: http.DefaultClient) with its responses bounded.
func acmeHTTP(base *http.Client) *http.Client {
	if base == nil {
		base = http.DefaultClient
	}
	hc := *base
	rt := hc.Transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	hc.Transport = boundedBodies{rt: rt}
	return &hc
}

// ErrACME wraps failures of the ACME exchange.
var ErrACME = errors.New("attest: ACME device-attest-01")

// RequestDeviceCert obtains a device certificate for r.Key from step-ca with
// ACME device-attest-01 (format "tpm"): an order for the "permanent-identifier"
// r.AK.PermanentIdentifier; the challenge answered with an attestation object
// whose x5c is the AK certificate chain and whose certInfo/pubArea/sig are a
// TPM2_Certify of r.Key by the AK over SHA-256(keyAuthorization); then a CSR
// signed by r.Key. It returns the certificate chain, leaf first.
func RequestDeviceCert(ctx context.Context, r DeviceCertRequest) (_ []*x509.Certificate, err error) {
	defer func() {
		if refusedForGood(err) {
			err = fmt.Errorf("%w: %w", ErrOutOfService, err)
		}
		if err != nil && len(err.Error()) > maxErrorText {
			err = &boundedError{err: err}
		}
	}()
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
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = acmeTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c := &acme.Client{Key: acct, DirectoryURL: r.DirectoryURL, HTTPClient: acmeHTTP(r.HTTP), UserAgent: "edgeward-agent",
		RetryBackoff: acmeBackoff}
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

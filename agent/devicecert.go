package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/internal/wire"
)

// DeviceCert keeps the device's TLS client certificate: a short-lived certificate
// from step-ca (ACME device-attest-01, format tpm) for a TPM-resident key certified
// by the AK. The private key never leaves the TPM. The certificate is renewed when a
// third of its lifetime remains. Safe for concurrent use.
type DeviceCert struct {
	// acct is the ACME account key: a TPM-resident key derived from the label, so the
	// same key (and so the same ACME account) after every restart of the agent, rather
	// than an account per renewal or per start in the CA's database, which never
	// deletes them. Its private part never leaves the TPM either.
	acct *attest.Key
	tpm  *attest.TPM
	ak   *attest.AKCertificate // guarded by mu (SetAK)
	key  *attest.Key
	dir  string
	http *http.Client
	now  func() time.Time

	mu   sync.Mutex
	cert *tls.Certificate
}

// NewDeviceCert creates (or re-creates, for the same label) the TPM key and obtains its
// first certificate from the device CA ca.
func NewDeviceCert(ctx context.Context, tpm *attest.TPM, ak *attest.AKCertificate, ca *wire.DeviceCA, label string) (*DeviceCert, error) {
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(ca.RootPEM)) {
		return nil, errors.New("device CA: no root certificate")
	}
	key, err := tpm.CreateKey(ctx, []byte(label))
	if err != nil {
		return nil, fmt.Errorf("device key: %w", err)
	}
	acct, err := tpm.CreateKey(ctx, append([]byte(label), "\x00acme-account"...))
	if err != nil {
		key.Close()
		return nil, fmt.Errorf("ACME account key: %w", err)
	}
	d := &DeviceCert{acct: acct, tpm: tpm, ak: ak, key: key, dir: ca.DirectoryURL, now: time.Now,
		http: &http.Client{Timeout: time.Minute, Transport: serverTransport(roots)}}
	if err := d.Renew(ctx); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// Renew obtains a new certificate now.
func (d *DeviceCert) Renew(ctx context.Context) error {
	d.mu.Lock()
	ak := d.ak
	d.mu.Unlock()
	chain, err := attest.RequestDeviceCert(ctx, attest.DeviceCertRequest{DirectoryURL: d.dir, HTTP: d.http, AK: ak, Key: d.key, AccountKey: d.acct})
	if err != nil {
		return fmt.Errorf("device certificate: %w", err)
	}
	c := &tls.Certificate{PrivateKey: d.key, Leaf: chain[0]}
	for _, x := range chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	d.mu.Lock()
	d.cert = c
	d.mu.Unlock()
	return nil
}

// SetAK makes ak the AK certificate of the next ACME orders (Attested.OnAK): step-ca
// verifies the attestation's AK chain at the time of the order.
func (d *DeviceCert) SetAK(ak *attest.AKCertificate) {
	d.mu.Lock()
	d.ak = ak
	d.mu.Unlock()
}

// Leaf is the current certificate.
func (d *DeviceCert) Leaf() *x509.Certificate {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cert.Leaf
}

// GetClientCertificate is the tls.Config hook: it returns the current certificate,
// renewing it first when a third of its lifetime or less remains. A failed renewal
// keeps the current certificate while it is valid.
func (d *DeviceCert) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	d.mu.Lock()
	c := d.cert
	d.mu.Unlock()
	now := d.now()
	life := c.Leaf.NotAfter.Sub(c.Leaf.NotBefore)
	if c.Leaf.NotAfter.Sub(now) < life/3 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := d.Renew(ctx)
		cancel()
		if err != nil && now.After(c.Leaf.NotAfter) {
			return nil, err
		}
		d.mu.Lock()
		c = d.cert
		d.mu.Unlock()
	}
	return c, nil
}

// Close releases the TPM key handles.
func (d *DeviceCert) Close() error { return errors.Join(d.key.Close(), d.acct.Close()) }

// PEMChain encodes the current certificate chain (for status output).
func (d *DeviceCert) PEMChain() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []byte
	for _, der := range d.cert.Certificate {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	return out
}

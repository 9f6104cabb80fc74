package stepca

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

// IssueClientCert issues a TLS client certificate for pub, signed by the intermediate
// CA of the step-ca in dir (the embedded device CA, so the server's TLS listener
// verifies it against the same root as device certificates). The certificate names the
// holder in its subject and in uri (a URI SAN, which no ACME device-attest-01 order can
// obtain: those carry permanent identifiers only), is valid from now until notAfter
// (at most a year), and has the clientAuth usage only. It returns the certificate and
// the intermediate, PEM-encoded. The root stays offline: nothing here needs it.
func IssueClientCert(dir string, pub crypto.PublicKey, name string, uri *url.URL, notAfter time.Time) ([]byte, error) {
	if uri == nil || name == "" {
		return nil, errors.New("stepca: client certificate: a name and a URI are required")
	}
	now := time.Now()
	if max := now.Add(366 * 24 * time.Hour); notAfter.After(max) {
		notAfter = max
	}
	interPEM, err := os.ReadFile(filepath.Join(dir, "intermediate_ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("stepca: no device CA in %s (start the server with --tls-listen once): %w", dir, err)
	}
	blk, _ := pem.Decode(interPEM)
	if blk == nil {
		return nil, fmt.Errorf("stepca: %s: no PEM certificate", filepath.Join(dir, "intermediate_ca.crt"))
	}
	inter, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("stepca: intermediate: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "intermediate_ca_key"))
	if err != nil {
		return nil, fmt.Errorf("stepca: %w", err)
	}
	kblk, _ := pem.Decode(keyPEM)
	if kblk == nil {
		return nil, errors.New("stepca: intermediate key: no PEM block")
	}
	key, err := x509.ParseECPrivateKey(kblk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("stepca: intermediate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: name, OrganizationalUnit: []string{"Edgeward operators"}},
		NotBefore: now.Add(-5 * time.Minute), NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true, IsCA: false, URIs: []*url.URL{uri},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, inter, pub, key)
	if err != nil {
		return nil, fmt.Errorf("stepca: client certificate: %w", err)
	}
	return append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), interPEM...), nil
}

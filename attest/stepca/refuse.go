package stepca

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/smallstep/certificates/cas/apiv1"
	"github.com/smallstep/certificates/cas/softcas"
	"github.com/smallstep/certificates/webhook"

	"github.com/edgeward/edgeward/internal/protocol"
)

// refusingCAS is step-ca's own signer (softcas, the CA's intermediate in Dir) asking
// Config.Refuse before every device certificate it signs, new or renewed. Its other
// methods (the signer, CRLs) are softcas's, so step-ca finds what it looks for.
type refusingCAS struct {
	*softcas.SoftCAS
	refuse func(ctx context.Context, ids []string) error
}

// refuseTimeout bounds one Refuse call: step-ca gives the signer no context.
const refuseTimeout = 10 * time.Second

func (c *refusingCAS) check(t *x509.Certificate) error {
	// The template's subject alternative names are among its ExtraExtensions until it
	// is signed; protocol.PermanentIdentifiers reads Extensions.
	probe := &x509.Certificate{Extensions: append(append([]pkix.Extension(nil), t.Extensions...), t.ExtraExtensions...)}
	ids := protocol.PermanentIdentifiers(probe)
	if len(ids) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), refuseTimeout)
	defer cancel()
	if err := c.refuse(ctx, ids); err != nil {
		// step-ca answers a signing error as a server error, which ACME clients retry
		// without end (golang.org/x/crypto/acme does), except a webhook's refusal: that
		// is ACME's "unauthorized" (403), final. This is the same decision an
		// authorizing webhook makes, made in process.
		return &webhook.Error{Code: "refused", Message: fmt.Sprintf("certificate for %v refused: %v", ids, err)}
	}
	return nil
}

func (c *refusingCAS) CreateCertificate(req *apiv1.CreateCertificateRequest) (*apiv1.CreateCertificateResponse, error) {
	if req.Template != nil && !req.IsCAServerCert {
		if err := c.check(req.Template); err != nil {
			return nil, err
		}
	}
	return c.SoftCAS.CreateCertificate(req)
}

func (c *refusingCAS) RenewCertificate(req *apiv1.RenewCertificateRequest) (*apiv1.RenewCertificateResponse, error) {
	if req.Template != nil {
		if err := c.check(req.Template); err != nil {
			return nil, err
		}
	}
	return c.SoftCAS.RenewCertificate(req)
}

// newRefusingCAS loads the intermediate step-ca would sign with from dir.
func newRefusingCAS(ctx context.Context, dir string, refuse func(ctx context.Context, ids []string) error) (*refusingCAS, error) {
	crt, err := os.ReadFile(filepath.Join(dir, "intermediate_ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("stepca: %w", err)
	}
	cb, _ := pem.Decode(crt)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, errors.New("stepca: the intermediate's certificate is not PEM")
	}
	intermediate, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("stepca: the intermediate's certificate: %w", err)
	}
	kb, err := os.ReadFile(filepath.Join(dir, "intermediate_ca_key"))
	if err != nil {
		return nil, fmt.Errorf("stepca: %w", err)
	}
	blk, _ := pem.Decode(kb)
	if blk == nil || blk.Type != "EC PRIVATE KEY" {
		return nil, errors.New("stepca: the intermediate's key is not a PEM EC key")
	}
	key, err := x509.ParseECPrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("stepca: the intermediate's key: %w", err)
	}
	s, err := softcas.New(ctx, apiv1.Options{Type: apiv1.SoftCAS, CertificateChain: []*x509.Certificate{intermediate}, Signer: key})
	if err != nil {
		return nil, fmt.Errorf("stepca: %w", err)
	}
	return &refusingCAS{SoftCAS: s, refuse: refuse}, nil
}

// Package tlshint turns a TLS certificate failure into an error that names its fix.
// It is stdlib-only and pure: the binaries call it on the error they are about to print.
package tlshint

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
)

// Untrusted says whether err is a failure to verify a server's certificate: an unknown
// authority, a name mismatch, an expired or otherwise invalid certificate.
func Untrusted(err error) bool {
	if err == nil {
		return false
	}
	var (
		unknown *x509.UnknownAuthorityError
		host    x509.HostnameError
		invalid x509.CertificateInvalidError
		verify  *tls.CertificateVerificationError
	)
	if errors.As(err, &unknown) || errors.As(err, &host) || errors.As(err, &invalid) || errors.As(err, &verify) {
		return true
	}
	// Some layers flatten the error into text (%v): recognise crypto/x509's wording.
	return strings.Contains(err.Error(), "x509: ")
}

// Explain returns err, wrapped with fix ("trust the server's certificate with …") when
// err is a certificate failure; any other error (nil included) is returned as it is.
func Explain(err error, fix string) error {
	if !Untrusted(err) {
		return err
	}
	return fmt.Errorf("%w\n  the server's TLS certificate did not verify (untrusted issuer, wrong name or expired): %s", err, fix)
}

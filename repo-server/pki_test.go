package reposerver

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// TestKeyMaterialCreatedOnceByReplicas: replicas starting together on a fresh shared
// directory get one attestation CA and one TLS certificate, the ones on disk; without
// the directory lock each created its own and the last writes won, so a replica signed
// AK certificates with a key no other replica knew.
func TestKeyMaterialCreatedOnceByReplicas(t *testing.T) {
	dir := t.TempDir()
	const n = 8
	certs := make([]*x509.Certificate, n)
	tlsCerts := make([]tls.Certificate, n)
	errs := make([]error, 2*n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(2)
		go func() {
			defer wg.Done()
			_, certs[i], errs[i] = loadOrCreateAttestCA(filepath.Join(dir, "attest"))
		}()
		go func() {
			defer wg.Done()
			tlsCerts[i], errs[n+i] = loadOrCreateServerCert(filepath.Join(dir, "tls"), []string{"localhost"}, nil)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: %v", i%n, err)
		}
	}
	_, onDisk, err := loadOrCreateAttestCA(filepath.Join(dir, "attest"))
	if err != nil {
		t.Fatal(err)
	}
	tlsDisk, err := tls.LoadX509KeyPair(filepath.Join(dir, "tls", "server.pem"), filepath.Join(dir, "tls", "server.key"))
	if err != nil {
		t.Fatalf("the TLS key pair on disk: %v", err)
	}
	for i := range n {
		if !certs[i].Equal(onDisk) {
			t.Errorf("replica %d uses attestation CA %x; the one on disk is %x", i, certs[i].SubjectKeyId, onDisk.SubjectKeyId)
		}
		if !bytes.Equal(tlsCerts[i].Certificate[0], tlsDisk.Certificate[0]) {
			t.Errorf("replica %d serves a TLS certificate other than the one on disk", i)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "attest", "ca.key")); err != nil {
		t.Fatal(err)
	}
}

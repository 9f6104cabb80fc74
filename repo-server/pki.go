package reposerver

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/internal/durable"
)

// The server's own key material and starter files, created on first start.

// lockDir takes an exclusive lock on dir/.lock (dir created if needed, mode 0700), so
// that replicas starting together on a shared directory create its key material once:
// without it each would create its own and overwrite the others' (issue 12: an
// attestation CA whose key on disk is not the one a replica signs with).
func lockDir(dir string) (func(), error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
}

// loadOrCreateAttestCA reads the attestation CA's key and certificate from dir, creating
// a self-signed CA (valid ten years) on first use. The key file is mode 0600. Safe for
// replicas starting together on one directory: one creates, the others read (lockDir).
func loadOrCreateAttestCA(dir string) (crypto.Signer, *x509.Certificate, error) {
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("attestation CA: %w", err)
	}
	defer unlock()
	keyPath, certPath := filepath.Join(dir, "ca.key"), filepath.Join(dir, "ca.pem")
	kb, kerr := os.ReadFile(keyPath)
	cb, cerr := os.ReadFile(certPath)
	if errors.Is(kerr, os.ErrNotExist) && errors.Is(cerr, os.ErrNotExist) {
		signer, cert, err := attestca.NewRoot("Edgeward Attestation CA", 10*365*24*time.Hour)
		if err != nil {
			return nil, nil, err
		}
		der, err := x509.MarshalPKCS8PrivateKey(signer)
		if err != nil {
			return nil, nil, err
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, nil, err
		}
		if err := durable.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			return nil, nil, err
		}
		if err := durable.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644); err != nil {
			return nil, nil, err
		}
		return signer, cert, nil
	}
	if kerr != nil || cerr != nil {
		return nil, nil, fmt.Errorf("attestation CA in %s: %v %v", dir, kerr, cerr)
	}
	kblk, _ := pem.Decode(kb)
	cblk, _ := pem.Decode(cb)
	if kblk == nil || cblk == nil {
		return nil, nil, fmt.Errorf("attestation CA in %s: not PEM", dir)
	}
	k, err := x509.ParsePKCS8PrivateKey(kblk.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("%s: not a signing key", keyPath)
	}
	cert, err := x509.ParseCertificate(cblk.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certPath, err)
	}
	return signer, cert, nil
}

// loadPool reads every certificate of a PEM file.
func loadPool(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	n := 0
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("%s: no PEM certificates", path)
	}
	return pool, nil
}

// starterPolicy is written into a new default policy directory: no rollouts yet
// ('edgeward rollout create' adds them), attestation required.
const starterPolicy = `# Edgeward fleet policy. Every *.yaml file of this directory is read in name order;
# 'edgeward rollout create' adds files named created-*.yaml. Format: policy/README.md.
version: 1
`

// ensurePolicyDir creates the default policy directory with a starter policy on first
// start, so that rollouts can be created through the operator API.
//
// The directory appears whole or not at all (made beside it, then renamed into place):
// a replica starting at the same moment never sees it empty, and only one starter
// policy is put in place.
func ensurePolicyDir(dir string) error {
	if _, err := os.Stat(dir); err == nil || !errors.Is(err, os.ErrNotExist) {
		return nil
	}
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+"-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp) // gone once renamed
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	if err := durable.WriteFile(filepath.Join(tmp, "fleet.yaml"), []byte(starterPolicy), 0o644); err != nil {
		return fmt.Errorf("starter policy: %w", err)
	}
	if err := durable.Rename(tmp, dir); err != nil {
		if _, serr := os.Stat(dir); serr == nil {
			return nil // another replica made it first
		}
		return fmt.Errorf("starter policy: %w", err)
	}
	return nil
}

// loadOrCreateServerCert reads the server's TLS certificate from dir, creating a
// self-signed leaf (ECDSA P-256, ten years; CA:FALSE, serverAuth only, so the key that
// serves TLS can sign no other certificate) for names on first use. Devices and the CLI
// pin it (edgeward-agent device --server-ca DIR/tls/server.pem, $EDGEWARD_SERVER_CA):
// a pinned certificate is trusted as itself. warn is told when an older certificate on
// disk is a CA. Replicas starting together on one directory create it once (lockDir).
func loadOrCreateServerCert(dir string, names []string, warn func(msg string, args ...any)) (tls.Certificate, error) {
	unlock, err := lockDir(dir)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("server TLS certificate: %w", err)
	}
	defer unlock()
	keyPath, certPath := filepath.Join(dir, "server.key"), filepath.Join(dir, "server.pem")
	if c, err := tls.LoadX509KeyPair(certPath, keyPath); err == nil {
		if leaf, err := x509.ParseCertificate(c.Certificate[0]); err == nil && leaf.IsCA && warn != nil {
			warn("the server's TLS certificate is a CA (made by an older version): remove DIR/tls to get a leaf certificate, then re-pin devices and operators to the new server.pem", "cert", certPath)
		}
		return c, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return tls.Certificate{}, fmt.Errorf("server TLS certificate: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: "edgeward server"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: false}
	for _, n := range names {
		n = strings.TrimSpace(n)
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if n != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return tls.Certificate{}, err
	}
	if err := durable.MkdirAll(dir, 0o700); err != nil {
		return tls.Certificate{}, err
	}
	if err := durable.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return tls.Certificate{}, err
	}
	if err := durable.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return tls.Certificate{}, err
	}
	return tls.LoadX509KeyPair(certPath, keyPath)
}

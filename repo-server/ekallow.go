package reposerver

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/internal/protocol"
)

// ekAllowlist is the file of --ek-allowlist: the EKs that may enroll, so that a TPM
// the fleet did not buy, whose EK certificate chains to the same manufacturer root (any
// laptop's firmware TPM from that vendor), gets no identity (found from outside, 2 Dec:
// every such TPM enrolled, was trusted, and was offered the rollouts). Each line is an
// EK ID (urn:ek:sha256:…, the device ID), blank, or a # comment; PEM EK certificates
// may be in the file too, each standing for its key's EK ID. The file is read again when
// its modification time or size changes, so devices are added without a restart; one
// that cannot be read or parsed refuses every enrollment (fails closed) until fixed.
type ekAllowlist struct {
	path string

	mu      sync.Mutex
	modTime time.Time
	size    int64
	ids     map[string]bool
	err     error
}

// check refuses (attestca.ErrRefused) an EK not on the list.
func (l *ekAllowlist) check(ekID string) error {
	ids, err := l.load()
	if err != nil {
		return fmt.Errorf("%w: the EK allowlist %s cannot be read: %v", attestca.ErrRefused, l.path, err)
	}
	if !ids[ekID] {
		return fmt.Errorf("%w: EK %s is not on the allowlist (--ek-allowlist)", attestca.ErrRefused, ekID)
	}
	return nil
}

func (l *ekAllowlist) load() (map[string]bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fi, err := os.Stat(l.path)
	if err != nil {
		return nil, err
	}
	if l.ids != nil || l.err != nil {
		if fi.ModTime().Equal(l.modTime) && fi.Size() == l.size {
			return l.ids, l.err
		}
	}
	l.modTime, l.size = fi.ModTime(), fi.Size()
	b, err := os.ReadFile(l.path)
	if err == nil {
		l.ids, l.err = parseEKAllowlist(b)
	} else {
		l.ids, l.err = nil, err
	}
	return l.ids, l.err
}

// maxEKAllowlist bounds the allowlist file: 16 MiB, some 300,000 EK IDs.
const maxEKAllowlist = 16 << 20

// parseEKAllowlist reads EK IDs and PEM EK certificates.
func parseEKAllowlist(b []byte) (map[string]bool, error) {
	if len(b) > maxEKAllowlist {
		return nil, fmt.Errorf("larger than %d bytes", maxEKAllowlist)
	}
	ids := map[string]bool{}
	rest := b
	var text bytes.Buffer
	for {
		at := bytes.Index(rest, []byte("-----BEGIN"))
		if at < 0 {
			text.Write(rest)
			break
		}
		text.Write(rest[:at])
		blk, after := pem.Decode(rest[at:])
		if blk == nil {
			return nil, fmt.Errorf("a malformed PEM block at byte %d", len(b)-len(rest)+at)
		}
		rest = after
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("a PEM block of type %q; want CERTIFICATE", blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("EK certificate: %w", err)
		}
		id, err := protocol.EKID(c.PublicKey)
		if err != nil {
			return nil, err
		}
		ids[id] = true
	}
	for i, line := range strings.Split(text.String(), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if !strings.HasPrefix(line, "urn:ek:sha256:") || strings.ContainsAny(line, " \t") {
			return nil, fmt.Errorf("line %d: %q is not an EK ID (urn:ek:sha256:…)", i+1, line)
		}
		ids[line] = true
	}
	return ids, nil
}

// refuseEK is the attestation CA's Refuse: the allowlist (when set), then a
// decommissioned device (refuseDecommissionedEK).
func refuseEK(allow *ekAllowlist, decommissioned func(context.Context, string) error) func(context.Context, string) error {
	return func(ctx context.Context, ekID string) error {
		if allow != nil {
			if err := allow.check(ekID); err != nil {
				return err
			}
		}
		return decommissioned(ctx, ekID)
	}
}

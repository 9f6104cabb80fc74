package attest_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/simulator"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/internal/eventlog"
)

func openSim(t *testing.T) *attest.TPM {
	t.Helper()
	tpm, err := attest.Open(context.Background(), "sim")
	if err != nil {
		t.Fatalf("Open(sim) = %v", err)
	}
	t.Cleanup(func() { tpm.Close() })
	return tpm
}

func openSimB(b *testing.B) *attest.TPM {
	b.Helper()
	tpm, err := attest.Open(context.Background(), "sim")
	if err != nil {
		b.Fatalf("Open(sim) = %v", err)
	}
	b.Cleanup(func() { tpm.Close() })
	return tpm
}

func TestOpenBadURL(t *testing.T) {
	for _, u := range []string{"", "tpm", "swtpm://nohost", "swtpm://127.0.0.1:0", "http://x"} {
		if _, err := attest.Open(context.Background(), u); !errors.Is(err, attest.ErrBadURL) {
			t.Errorf("Open(%q) = %v; want ErrBadURL", u, err)
		}
	}
	if _, err := attest.Open(context.Background(), "/nonexistent/tpmrm0"); err == nil {
		t.Errorf("Open(/nonexistent/tpmrm0) = nil; want error")
	}
}

func TestEKCertProvisionedAndRead(t *testing.T) {
	ctx := context.Background()
	tpm := openSim(t)
	m, err := attesttest.NewManufacturer("Acme TPM")
	if err != nil {
		t.Fatal(err)
	}
	for _, alg := range []attest.KeyAlg{attest.RSA, attest.ECC} {
		ek, err := tpm.EK(ctx, alg)
		if err != nil {
			t.Fatalf("EK(%v) before provisioning = %v", alg, err)
		}
		if ek.Certificate != nil {
			t.Fatalf("EK(%v) has a certificate before provisioning", alg)
		}
		issued, err := m.Provision(ctx, tpm, alg)
		if err != nil {
			t.Fatalf("Provision(%v) = %v", alg, err)
		}
		ek, err = tpm.EK(ctx, alg)
		if err != nil {
			t.Fatalf("EK(%v) = %v", alg, err)
		}
		if ek.Certificate == nil || !bytes.Equal(ek.CertificateDER, issued.Raw) {
			t.Fatalf("EK(%v) certificate does not match the provisioned one", alg)
		}
		inter := x509.NewCertPool()
		inter.AddCert(m.Intermediate)
		c := *ek.Certificate
		c.UnhandledCriticalExtensions = nil // the TPM SAN; the CA handles it
		if _, err := c.Verify(x509.VerifyOptions{Roots: m.Roots(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Errorf("EK(%v) cert does not chain to the manufacturer: %v", alg, err)
		}
	}
}

func TestQuoteCertifySignMeasure(t *testing.T) {
	ctx := context.Background()
	tpm := openSim(t)
	ak, err := tpm.AK(ctx)
	if err != nil {
		t.Fatalf("AK() = %v", err)
	}
	ak2, _ := tpm.AK(ctx)
	if !attest.PublicKeyEqual(ak.Public, ak2.Public) {
		t.Errorf("AK() is not stable")
	}

	// Measure two artifacts and check the PCR equals the log replay.
	if err := tpm.ResetPCR(ctx, eventlog.PCRDevelopment); err != nil {
		t.Fatal(err)
	}
	var log eventlog.Log
	for _, e := range []eventlog.Event{
		{PCR: 16, Kind: "runtime", Name: "onnxruntime", Version: "1.24.0", SHA256: strings.Repeat("a", 64)},
		{PCR: 16, Kind: "model", Name: "vibration-anomaly", Version: "3.1.0", SHA256: strings.Repeat("b", 64)},
	} {
		got, err := tpm.Measure(ctx, e)
		if err != nil {
			t.Fatalf("Measure(%v) = %v", e, err)
		}
		log = append(log, got)
	}
	if _, err := tpm.Measure(ctx, eventlog.Event{PCR: 16, Kind: "a|b", Name: "x", Version: "1", SHA256: strings.Repeat("a", 64)}); err == nil {
		t.Errorf("Measure with a separator in kind = nil; want error")
	}
	pcrs, err := tpm.ReadPCRs(ctx, 16)
	if err != nil {
		t.Fatal(err)
	}
	want := log.Replay()[16]
	if !bytes.Equal(pcrs[16], want[:]) {
		t.Fatalf("PCR16 = %x; replay = %x", pcrs[16], want)
	}

	nonce := []byte("0123456789abcdef0123456789abcdef")
	q, err := tpm.Quote(ctx, nonce, []int{0, 16, 23})
	if err != nil {
		t.Fatalf("Quote() = %v", err)
	}
	if len(q.PCRs) != 3 || !bytes.Equal(q.PCRs[16], want[:]) {
		t.Errorf("Quote PCRs = %x", q.PCRs)
	}
	att, err := tpm2.Unmarshal[tpm2.TPMSAttest](q.Attest)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(att.ExtraData.Buffer, nonce) {
		t.Errorf("quote extraData = %x; want nonce", att.ExtraData.Buffer)
	}

	// A TPM-resident key: stable per label, signs, certified by the AK.
	k, err := tpm.CreateKey(ctx, []byte("device-tls"))
	if err != nil {
		t.Fatalf("CreateKey() = %v", err)
	}
	defer k.Close()
	k2, err := tpm.CreateKey(ctx, []byte("device-tls"))
	if err != nil {
		t.Fatal(err)
	}
	if !attest.PublicKeyEqual(k.Public(), k2.Public()) {
		t.Errorf("CreateKey(same label) gave another key")
	}
	k2.Close()
	k3, err := tpm.CreateKey(ctx, []byte("other"))
	if err != nil {
		t.Fatal(err)
	}
	if attest.PublicKeyEqual(k.Public(), k3.Public()) {
		t.Errorf("CreateKey(other label) gave the same key")
	}
	k3.Close()
	var signer crypto.Signer = k
	d := sha256.Sum256([]byte("hello"))
	sig, err := signer.Sign(rand.Reader, d[:], crypto.SHA256)
	if err != nil {
		t.Fatalf("Sign() = %v", err)
	}
	if !ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), d[:], sig) {
		t.Errorf("TPM signature does not verify")
	}
	if _, err := signer.Sign(rand.Reader, d[:20], crypto.SHA1); err == nil {
		t.Errorf("Sign(SHA1) = nil; want error")
	}
	qd := sha256.Sum256([]byte("key authorization"))
	cert, err := k.Certify(ctx, qd[:])
	if err != nil {
		t.Fatalf("Certify() = %v", err)
	}
	ci, err := tpm2.Unmarshal[tpm2.TPMSAttest](cert.CertifyInfo)
	if err != nil {
		t.Fatal(err)
	}
	if ci.Type != tpm2.TPMSTAttestCertify || !bytes.Equal(ci.ExtraData.Buffer, qd[:]) {
		t.Errorf("certifyInfo type %v extraData %x", ci.Type, ci.ExtraData.Buffer)
	}
}

func TestFloor(t *testing.T) {
	ctx := context.Background()
	tpm := openSim(t)
	model, runtime := tpm.Floor("model"), tpm.Floor("runtime")
	if model.Index() == runtime.Index() {
		t.Fatalf("model and runtime share NV index %#x", uint32(model.Index()))
	}
	steps := []struct {
		c    attest.Counter
		to   uint64
		want uint64
	}{
		{model, 0, 0},
		{model, 5, 5},
		{model, 3, 5},             // never lowers
		{model, 1 << 40, 1 << 40}, // arbitrary jump, one write
		{runtime, 7, 7},
		{model, 1<<40 + 1, 1<<40 + 1},
	}
	for i, s := range steps {
		got, err := s.c.RaiseTo(ctx, s.to)
		if err != nil || got != s.want {
			t.Fatalf("step %d: RaiseTo(%d) = %d, %v; want %d", i, s.to, got, err, s.want)
		}
		if r, err := s.c.Read(ctx); err != nil || r != s.want {
			t.Fatalf("step %d: Read() = %d, %v; want %d", i, r, err, s.want)
		}
	}
	if v, _ := tpm.Floor("never-raised").Read(ctx); v != 0 {
		t.Errorf("Read() of a new floor = %d; want 0", v)
	}
}

// TestFloorCollision: an NV index at a floor's number that is not that
// kind's floor is reported, never read as a floor or overwritten.
func TestFloorCollision(t *testing.T) {
	ctx := context.Background()
	tpm := openSim(t)
	f := tpm.Floor("model")
	if err := attesttest.WriteNV(ctx, tpm, f.Index(), []byte("someone else's data")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Read(ctx); !errors.Is(err, attest.ErrFloorCollision) {
		t.Errorf("Read() = %v; want ErrFloorCollision", err)
	}
	if _, err := f.RaiseTo(ctx, 1); !errors.Is(err, attest.ErrFloorCollision) {
		t.Errorf("RaiseTo() = %v; want ErrFloorCollision", err)
	}
}

// TestConcurrentUse: quotes, signatures and floor raises from several
// goroutines on one TPM are serialised correctly (run with -race).
func TestConcurrentUse(t *testing.T) {
	ctx := context.Background()
	tpm := openSim(t)
	k, err := tpm.CreateKey(ctx, []byte("tls"))
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	d := sha256.Sum256([]byte("x"))
	errs := make(chan error, 30)
	for i := range 10 {
		go func() {
			_, err := tpm.Quote(ctx, []byte{byte(i)}, []int{16})
			errs <- err
		}()
		go func() {
			sig, err := k.Sign(nil, d[:], crypto.SHA256)
			if err == nil && !ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), d[:], sig) {
				err = errors.New("bad signature")
			}
			errs <- err
		}()
		go func() {
			_, err := tpm.Floor("model").RaiseTo(ctx, uint64(i))
			errs <- err
		}()
	}
	for range 30 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if v, _ := tpm.Floor("model").Read(ctx); v != 9 {
		t.Errorf("floor after concurrent raises = %d; want 9", v)
	}
}

// extendAroundQuote is a TPM transport on which another user of the TPM (as the kernel
// extending PCR 10 for IMA) extends PCR 16 right before and right after each of the
// first n Quote commands: between the agent's PCR_Read and its Quote, and again before
// it can read the PCRs a second time.
type extendAroundQuote struct {
	transport.TPMCloser
	n, extends int
}

func (e *extendAroundQuote) extend() error {
	e.extends++
	_, err := tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(16), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: bytes.Repeat([]byte{byte(e.extends)}, 32)}}},
	}.Execute(e.TPMCloser)
	return err
}

func (e *extendAroundQuote) Send(cmd []byte) ([]byte, error) {
	if len(cmd) < 10 || binary.BigEndian.Uint32(cmd[6:10]) != uint32(tpm2.TPMCCQuote) || e.n == 0 {
		return e.TPMCloser.Send(cmd)
	}
	e.n--
	if err := e.extend(); err != nil {
		return nil, err
	}
	rsp, err := e.TPMCloser.Send(cmd)
	if err != nil {
		return nil, err
	}
	return rsp, e.extend()
}

// TestQuoteSendsTheValuesItQuoted: when a selected PCR is extended between the agent's
// PCR_Read and its Quote (and again after it), the quote is taken again and goes out
// with the values the TPM quoted, so the verifier does not see a digest mismatch. The
// values used to be those read before the extend: an untrusted verdict for a healthy
// device whenever IMA measured a file at the wrong moment. A PCR that never holds still
// still gets a quote (the last one, as is), for the verifier to name.
func TestQuoteSendsTheValuesItQuoted(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		busy    int  // quotes with extends around them
		matches bool // the values sent are the quoted ones
	}{{0, true}, {1, true}, {3, true}, {100, false}} {
		sim, err := simulator.OpenSimulator()
		if err != nil {
			t.Fatal(err)
		}
		tr := &extendAroundQuote{TPMCloser: sim, n: tc.busy}
		tpm := attest.New(tr, "sim with IMA")
		q, err := tpm.Quote(ctx, bytes.Repeat([]byte{7}, 32), []int{0, 16})
		if err != nil {
			t.Fatalf("%d busy quotes: %v", tc.busy, err)
		}
		att, err := tpm2.Unmarshal[tpm2.TPMSAttest](q.Attest)
		if err != nil {
			t.Fatal(err)
		}
		info, err := att.Attested.Quote()
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		h.Write(q.PCRs[0])
		h.Write(q.PCRs[16])
		if got := bytes.Equal(h.Sum(nil), info.PCRDigest.Buffer); got != tc.matches {
			t.Errorf("%d busy quotes: the values sent are the quoted ones = %v; want %v", tc.busy, got, tc.matches)
		}
		tpm.Close()
	}
}

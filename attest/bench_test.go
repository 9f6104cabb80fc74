package attest_test

import (
	"context"
	"crypto"
	"crypto/sha256"
	"testing"
)

// Figures on the in-process simulator: the cost of the TPM round trips the
// agent makes per check-in (quote) and per TLS handshake (sign).
func BenchmarkQuote(b *testing.B) {
	ctx := context.Background()
	tpm := openSimB(b)
	nonce := make([]byte, 32)
	if _, err := tpm.Quote(ctx, nonce, []int{16}); err != nil { // create the AK
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := tpm.Quote(ctx, nonce, []int{0, 16, 23}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkKeySign(b *testing.B) {
	ctx := context.Background()
	tpm := openSimB(b)
	k, err := tpm.CreateKey(ctx, []byte("bench"))
	if err != nil {
		b.Fatal(err)
	}
	defer k.Close()
	d := sha256.Sum256([]byte("x"))
	for b.Loop() {
		if _, err := k.Sign(nil, d[:], crypto.SHA256); err != nil {
			b.Fatal(err)
		}
	}
}

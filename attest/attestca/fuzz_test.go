package attestca_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/internal/protocol"
)

// FuzzEnrollRequest: decoding and then challenging any request body never
// panics and fails only with ErrBadRequest or ErrRejected.
func FuzzEnrollRequest(f *testing.F) {
	signer, root, err := attestca.NewRoot("fuzz", time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	ca, err := attestca.New(attestca.Config{Signer: signer, Certificate: root})
	if err != nil {
		f.Fatal(err)
	}
	seed, _ := json.Marshal(protocol.EnrollRequest{EKAlg: "rsa", EKPublic: []byte{0, 1}, AKPublic: []byte{0, 1}})
	f.Add(seed)
	f.Add([]byte(`{"ek_alg":"ecc","ek_cert":"MAA="}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var req protocol.EnrollRequest
		if err := attestca.DecodeRequest(b, &req); err != nil {
			if !errors.Is(err, attestca.ErrBadRequest) {
				t.Fatalf("DecodeRequest() = %v; want ErrBadRequest", err)
			}
			return
		}
		if _, err := ca.Challenge(context.Background(), &req); err != nil &&
			!errors.Is(err, attestca.ErrBadRequest) && !errors.Is(err, attestca.ErrRejected) {
			t.Fatalf("Challenge() = %v; want ErrBadRequest or ErrRejected", err)
		}
	})
}

package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
)

// TestCheckInTemplate: the load generator's check-in bytes are json.Marshal's for
// the whole request (facts, nonce, AK certificate, quote, log), and its quote's
// qualifying data is wire.QuoteData of that request, for devices with and without
// labels, and nonces and quotes of other lengths.
func TestCheckInTemplate(t *testing.T) {
	key, cert, err := attestca.NewRoot("Test Attestation CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for i, facts := range []wire.CheckInRequest{
		{Labels: map[string]string{"line": "press"}, Hardware: "x86_64", AgentVersion: "0.1.0", Slots: map[artifact.Kind]wire.Slot{}},
		{Slots: map[artifact.Kind]wire.Slot{artifact.KindModel: {Name: "vib", Version: "3.0.0"}}, AuditCheckpoint: "note\n+/+/"},
		{},
	} {
		soft, err := attesttest.NewSoftDevice(key, cert, fmt.Sprintf("tmpl-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			soft.Measure("model", "vib", "3.0.0", string(bytes.Repeat([]byte("3"), 64)))
		}
		facts.DeviceID = soft.ID
		d, err := newBenchDevice(soft, facts)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []int{0, 1, 2, 3, 32, 47} {
			nonce := bytes.Repeat([]byte{byte(n)}, n)
			sum := sha256.Sum256(nonce)
			q, log, err := soft.Quote(sum[:])
			if err != nil {
				t.Fatal(err)
			}
			attest := append(q.Attest, bytes.Repeat([]byte{0xfb}, n)...)
			req := facts
			req.Nonce = nonce
			req.Evidence = wire.Evidence{AKCert: soft.AKCert, Quote: q, Log: log}
			req.Evidence.Quote.Attest = attest
			want, err := json.Marshal(&req)
			if err != nil {
				t.Fatal(err)
			}
			if got := d.tmpl.appendRequest([]byte("kept"), nonce, attest, q.Signature); !bytes.Equal(got, append([]byte("kept"), want...)) {
				t.Errorf("device %d, nonce of %d bytes: appendRequest =\n%s\nwant (json.Marshal)\n%s", i, n, got, want)
			}
			qd, err := wire.QuoteData(nonce, &req)
			if err != nil {
				t.Fatal(err)
			}
			if got := wire.QuoteDigest(nonce, d.tmpl.fields); !bytes.Equal(got, qd) {
				t.Errorf("device %d, nonce of %d bytes: QuoteDigest(nonce, template fields) = %x; want QuoteData %x", i, n, got, qd)
			}
		}
	}
}

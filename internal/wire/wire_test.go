package wire

import (
	"bytes"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/protocol"
)

func base() *CheckInRequest {
	return &CheckInRequest{
		DeviceID: "urn:ek:sha256:abc", Labels: map[string]string{"line": "press", "site": "berlin"}, Hardware: "x86_64",
		AgentVersion: "0.1.0", Slots: map[artifact.Kind]Slot{artifact.KindModel: {Name: "m", Version: "1.0.0"}},
		Reports: []Report{{ID: "r1", Kind: artifact.KindModel, Name: "m", Version: "1.0.0", Outcome: "committed", At: time.Unix(1, 0).UTC()}},
	}
}

// TestQuoteDataCoversTheRequest: every field but the evidence changes the quoted data,
// the evidence does not, and map order does not.
func TestQuoteDataCoversTheRequest(t *testing.T) {
	nonce := []byte("nonce-0123456789")
	ref, err := QuoteData(nonce, base())
	if err != nil {
		t.Fatal(err)
	}
	changes := map[string]func(r *CheckInRequest){
		"device":   func(r *CheckInRequest) { r.DeviceID = "urn:ek:sha256:abd" },
		"label":    func(r *CheckInRequest) { r.Labels["site"] = "paris" },
		"hardware": func(r *CheckInRequest) { r.Hardware = "aarch64" },
		"slot":     func(r *CheckInRequest) { r.Slots[artifact.KindModel] = Slot{Name: "m", Version: "1.0.1"} },
		"report":   func(r *CheckInRequest) { r.Reports[0].Outcome = "probe_failed" },
		"attrs":    func(r *CheckInRequest) { r.Attrs = map[string]any{"ram_mb": 512} },
	}
	for name, change := range changes {
		r := base()
		change(r)
		got, _ := QuoteData(nonce, r)
		if bytes.Equal(got, ref) {
			t.Errorf("QuoteData ignores a change of %s", name)
		}
	}
	if got, _ := QuoteData([]byte("nonce-other"), base()); bytes.Equal(got, ref) {
		t.Error("QuoteData ignores the nonce")
	}
	r := base()
	r.Nonce = []byte("whatever")
	r.Evidence = Evidence{AKCert: []byte{1, 2}, Quote: protocol.Quote{Attest: []byte{3}}}
	if got, _ := QuoteData(nonce, r); !bytes.Equal(got, ref) {
		t.Error("QuoteData depends on the evidence or the request's own nonce field")
	}
	for range 20 {
		if got, _ := QuoteData(nonce, base()); !bytes.Equal(got, ref) {
			t.Fatal("QuoteData is not deterministic")
		}
	}
}

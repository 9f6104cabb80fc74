package reposerver

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/eventlog"
	"github.com/edgeward/edgeward/internal/jsonstrict"
	"github.com/edgeward/edgeward/internal/protocol"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/repo-server/fleet"
)

// FuzzDecodeCheckIn: any body a client sends to the check-in endpoint is decoded and
// bounded without panicking. What is accepted is exactly one JSON value with a
// well-formed device ID and at most maxReports reports, and it survives the trip the
// quote relies on: encoded again and decoded, it binds the same quote data. It is
// accepted by jsonstrict.Decode too, as a request binding the same quote data.
func FuzzDecodeCheckIn(f *testing.F) {
	seed := wire.CheckInRequest{
		DeviceID: "dev-1", Labels: map[string]string{"site": "berlin"}, Hardware: "aarch64", AgentVersion: "0.5.0",
		Slots: map[artifact.Kind]wire.Slot{artifact.KindModel: {Name: "vib", Version: "3.1.0"}},
		Attrs: map[string]any{"ram_mb": 512.0, "gpu": false, "tags": []any{"a"}},
		Reports: []wire.Report{{ID: "r1", Kind: artifact.KindModel, Name: "vib", Version: "3.1.0", Outcome: wire.OutcomeCommitted,
			At: time.Date(2026, 11, 25, 12, 0, 0, 0, time.FixedZone("", 3600)), Bytes: 10, Probe: wire.Probe{Accuracy: 0.97, P99Ms: 4.5}}},
		Nonce: bytes.Repeat([]byte{7}, 32),
		Evidence: wire.Evidence{AKCert: []byte{0x30, 0}, AKChain: [][]byte{{0x30, 0}},
			Quote: protocol.Quote{Attest: []byte{0xff, 'T', 'C', 'G'}, Signature: []byte{1}, PCRs: map[int][]byte{16: make([]byte, 32)}},
			Log:   eventlog.Log{{PCR: 16, Kind: "model", Name: "vib", Version: "3.1.0", SHA256: "00"}}},
	}
	b, err := json.Marshal(seed)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte(`{"device_id":"dev-1","nonce":"AAAA","evidence":{"ak_cert":null,"quote":{"attest":null,"signature":null,"pcrs":null},"log":null}}`))
	f.Add([]byte(`{"device_id":"dev-1"}}`))
	f.Add([]byte(`{"device_id":"-x","extra":1}`))
	decode := func(body []byte) (wire.CheckInRequest, bool) {
		r := httptest.NewRequest(http.MethodPost, wire.PathCheckIn, bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		return decodeCheckIn(httptest.NewRecorder(), r)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, ok := decode(body)
		if !ok {
			return
		}
		if !json.Valid(body) {
			t.Fatalf("accepted %q, which is not one JSON value", body)
		}
		if !fleet.IsDeviceID(req.DeviceID) || len(req.Reports) > maxReports {
			t.Fatalf("accepted device %q with %d reports", req.DeviceID, len(req.Reports))
		}
		want, err := wire.QuoteData(req.Nonce, &req)
		if err != nil {
			t.Fatalf("QuoteData of an accepted request: %v", err)
		}
		// unmarshalStrict loosens nothing: what it accepts, jsonstrict (encoding/json)
		// accepts too, as the same request.
		var v1 wire.CheckInRequest
		if err := jsonstrict.Decode(bytes.NewReader(body), &v1); err != nil {
			t.Fatalf("accepted %q, which jsonstrict.Decode refuses: %v", body, err)
		}
		if got, err := wire.QuoteData(v1.Nonce, &v1); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%q decodes to other quote data with jsonstrict.Decode (%v)", body, err)
		}
		again, err := json.Marshal(req)
		if err != nil {
			t.Fatalf("re-encoding an accepted request: %v", err)
		}
		if len(again) > wire.MaxRequestBytes {
			return
		}
		req2, ok := decode(again)
		if !ok {
			t.Fatalf("%s re-encoded as %s is refused", body, again)
		}
		got, err := wire.QuoteData(req2.Nonce, &req2)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s re-encoded as %s binds other quote data (%v)", body, again, err)
		}
	})
}

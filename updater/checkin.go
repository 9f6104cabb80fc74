package updater

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/deviceapi"
)

// Attester produces the TPM evidence of a check-in: a quote by the device's AK whose
// qualifying data is qualifyingData, the AK certificate and the measurement log. It is
// implemented with attest/ (TPM.Quote, the enrolled AK certificate, the agent's log).
type Attester interface {
	Evidence(ctx context.Context, qualifyingData []byte) (deviceapi.Evidence, error)
}

// DeviceDirector checks in with the repo-server's device API: it asks for a nonce, sends
// the slots and the waiting reports with evidence quoting deviceapi.QuoteData over the
// whole request, and returns the targets the server wants installed. Reports go with the
// check-in (the server stores them idempotently by ID), so an Agent using it needs no
// separate Sender.
type DeviceDirector struct {
	Client       *deviceapi.Client
	DeviceID     string
	Hardware     string
	AgentVersion string
	Labels       map[string]string
	Attester     Attester
	// Outbox holds the reports to send; nil sends none.
	Outbox *Outbox
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// maxReportsPerCheckIn stays well below the server's limit of 1000.
const maxReportsPerCheckIn = 100

// CheckIn implements Director.
func (d *DeviceDirector) CheckIn(ctx context.Context, status map[artifact.Kind]SlotStatus) (map[artifact.Kind]string, error) {
	if d.Client == nil || d.Attester == nil {
		return nil, fmt.Errorf("check-in: DeviceDirector needs a Client and an Attester")
	}
	now := time.Now
	if d.Now != nil {
		now = d.Now
	}
	nonce, err := d.Client.Nonce(ctx, d.DeviceID)
	if err != nil {
		return nil, err
	}
	req := &deviceapi.CheckInRequest{DeviceID: d.DeviceID, Labels: d.Labels, Hardware: d.Hardware,
		AgentVersion: d.AgentVersion, Slots: map[artifact.Kind]deviceapi.Slot{}, Nonce: nonce}
	for k, st := range status {
		s := deviceapi.Slot{Version: st.Version}
		if st.Path != "" {
			s.Name = path.Base(path.Dir(st.Path))
		}
		req.Slots[k] = s
	}
	var ids []string
	if d.Outbox != nil {
		msgs, err := d.Outbox.Due(ctx, now(), maxReportsPerCheckIn)
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			var rep InstallReport
			if m.Kind != "install" || json.Unmarshal(m.Body, &rep) != nil {
				continue
			}
			req.Reports = append(req.Reports, deviceapi.Report{ID: m.ID, Kind: rep.Kind, Name: rep.Name, Version: rep.Version,
				Outcome: rep.Outcome, Cause: rep.Cause, At: rep.At, Bytes: rep.Bytes})
			ids = append(ids, m.ID)
		}
	}
	qd, err := deviceapi.QuoteData(nonce, req)
	if err != nil {
		return nil, err
	}
	if req.Evidence, err = d.Attester.Evidence(ctx, qd); err != nil {
		return nil, fmt.Errorf("check-in evidence: %w", err)
	}
	resp, err := d.Client.CheckIn(ctx, req)
	if err != nil {
		return nil, err
	}
	if d.Outbox != nil && len(ids) > 0 && resp.ReportsAccepted >= len(ids) {
		if err := d.Outbox.Ack(ctx, ids); err != nil {
			return nil, err
		}
	}
	desired := map[artifact.Kind]string{}
	if resp.Quarantined {
		return desired, nil
	}
	for _, dec := range resp.Slots {
		if dec.Action == "install" && dec.Target != "" {
			desired[dec.Kind] = dec.Target
		}
	}
	return desired, nil
}

package reposerver

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/fleet"

	"github.com/edgeward/edgeward/repo-server/operatorapi"
)

// TestOperatorActionsReachADevice: a device with a simulated TPM checks in through the
// device API while operators quarantine, release and abort through the operator API; each action shows in the next check-in's answer, in the device's history and in
// the audit log under the operator's name.
func TestOperatorActionsReachADevice(t *testing.T) {
	f, d := newDeviceFixture(t)
	ctx := context.Background()
	pol, err := policy.Parse(policy.File{Name: "fleet.yaml", Data: []byte(testPolicy)})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.srv.EnableOperatorAPI(OperatorConfig{Fleet: f.store, Policy: func() *policy.Policy { return pol }}); err != nil {
		t.Fatal(err)
	}
	tok := map[fleet.Role]string{}
	for _, r := range []fleet.Role{fleet.RoleSecurityAdmin, fleet.RoleReleaseManager, fleet.RoleAuditor} {
		tok[r], _, err = f.store.CreateToken(ctx, "op-"+string(r), r, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
	}
	call := func(method, path string, role fleet.Role, body string, v any) {
		t.Helper()
		req, _ := http.NewRequest(method, f.http.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tok[role])
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("%s %s as %s = %d %s", method, path, role, resp.StatusCode, b)
		}
		if v != nil {
			if err := json.Unmarshal(b, v); err != nil {
				t.Fatal(err)
			}
		}
	}
	checkIn := func(wantAction, wantReason string) *wire.CheckInResponse {
		t.Helper()
		resp, err := d.checkIn(d.request())
		if err != nil {
			t.Fatalf("check-in: %v", err)
		}
		if len(resp.Slots) == 0 || resp.Slots[0].Action != wantAction || resp.Slots[0].Reason != wantReason {
			t.Fatalf("check-in = %+v; want the model slot %s (%s)", resp.Slots, wantAction, wantReason)
		}
		return resp
	}
	if _, err := f.publish(artifact.KindModel, "vibration", "1.0.0", ".onnx", []byte("model v1"), nil); err != nil {
		t.Fatal(err)
	}
	checkIn("install", "in_wave")
	dev := url.PathEscape(d.id) // an EK-derived ID: urn:ek:sha256:<base64>, may hold '/'

	call("POST", "/v1/devices/"+dev+"/quarantine", fleet.RoleSecurityAdmin, `{"reason":"reported stolen"}`, nil)
	if resp := checkIn("hold", "quarantined"); !resp.Quarantined {
		t.Fatalf("quarantined device's check-in = %+v", resp)
	}
	call("POST", "/v1/devices/"+dev+"/release", fleet.RoleSecurityAdmin, "", nil)
	checkIn("install", "in_wave")

	// The rollout (one wave, no soak) completed at its first plan; aborting it means
	// devices that do not run its target are no longer offered it.
	var ch operatorapi.RolloutChanged
	call("POST", "/v1/rollouts/vib-1.0.0/abort", fleet.RoleReleaseManager, `{"reason":"wrong calibration"}`, &ch)
	if ch.State.Status != policy.StatusAborted {
		t.Fatalf("abort = %+v", ch)
	}
	checkIn("hold", "not_selected")

	var det operatorapi.DeviceDetail
	call("GET", "/v1/devices/"+dev, fleet.RoleAuditor, "", &det)
	if det.Device.ID != d.id || len(det.Verdicts) != 4 || det.Verdicts[0].Verdict != policy.VerdictTrusted || len(det.Decisions) != 4 {
		t.Fatalf("device detail: %d verdicts, %d decisions (%+v)", len(det.Verdicts), len(det.Decisions), det.Device)
	}
	reasons := []string{}
	for _, dec := range det.Decisions {
		reasons = append(reasons, string(dec.Slots[0].Reason))
	}
	if got := strings.Join(reasons, ","); got != "not_selected,in_wave,quarantined,in_wave" {
		t.Fatalf("decisions, newest first: %s", got)
	}
	kinds := strings.Join(auditKinds(t, f.fixture, d.id), ",")
	if !strings.Contains(kinds, "device.quarantine") || !strings.Contains(kinds, "device.release") {
		t.Fatalf("audit records of the device: %s", kinds)
	}
}

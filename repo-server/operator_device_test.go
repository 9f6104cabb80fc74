package reposerver

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/deviceapi"
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
	call := operatorAPIFor(t, f)
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

	call("POST", "/v1/devices/"+dev+"/quarantine", fleet.RoleSecurityAdmin, `{"reason":"reported stolen"}`, 200, nil)
	if resp := checkIn("hold", "quarantined"); !resp.Quarantined {
		t.Fatalf("quarantined device's check-in = %+v", resp)
	}
	call("POST", "/v1/devices/"+dev+"/release", fleet.RoleSecurityAdmin, "", 200, nil)
	checkIn("install", "in_wave")

	// The rollout (one wave, no soak) completed at its first plan; aborting it means
	// devices that do not run its target are no longer offered it.
	var ch operatorapi.RolloutChanged
	call("POST", "/v1/rollouts/vib-1.0.0/abort", fleet.RoleReleaseManager, `{"reason":"wrong calibration"}`, 200, &ch)
	if ch.State.Status != policy.StatusAborted {
		t.Fatalf("abort = %+v", ch)
	}
	checkIn("hold", "not_selected")

	var det operatorapi.DeviceDetail
	call("GET", "/v1/devices/"+dev, fleet.RoleAuditor, "", 200, &det)
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

// TestDecommissionedDeviceIsRefused: a security admin decommissions a device (a release
// manager may not); from then on its check-ins, though its TPM still attests, are
// refused with 403 before anything is stored (no verdict, no decision, so no version
// and no key), a second decommission is a conflict, the rollout no longer counts the
// device, and the audit log holds the decommission and the refusal.
func TestDecommissionedDeviceIsRefused(t *testing.T) {
	f, d := newDeviceFixture(t)
	call := operatorAPIFor(t, f)
	if _, err := f.publish(artifact.KindModel, "vibration", "1.0.0", ".onnx", []byte("model v1"), nil); err != nil {
		t.Fatal(err)
	}
	if resp, err := d.checkIn(d.request()); err != nil || !resp.Trusted || resp.Slots[0].Action != "install" {
		t.Fatalf("check-in before = %+v, %v", resp, err)
	}
	var st fleet.RolloutStatus
	call("GET", "/v1/rollouts/vib-1.0.0", fleet.RoleReleaseManager, "", 200, &st)
	if st.Selected != 1 {
		t.Fatalf("rollout before: %d selected, want 1", st.Selected)
	}
	dev := url.PathEscape(d.id)
	call("POST", "/v1/devices/"+dev+"/decommission", fleet.RoleReleaseManager, `{}`, 403, nil)
	call("POST", "/v1/devices/nope/decommission", fleet.RoleSecurityAdmin, `{}`, 404, nil)
	var v operatorapi.DeviceView
	call("POST", "/v1/devices/"+dev+"/decommission", fleet.RoleSecurityAdmin, `{"reason":"scrapped after flood damage"}`, 200, &v)
	if v.DecommissionedAt.IsZero() || v.DecommissionReason != "scrapped after flood damage" {
		t.Fatalf("decommission answered %+v", v)
	}
	call("POST", "/v1/devices/"+dev+"/decommission", fleet.RoleSecurityAdmin, `{}`, 409, nil)

	_, err := d.checkIn(d.request())
	var apiErr *deviceapi.Error
	if !errors.As(err, &apiErr) || apiErr.Status != http.StatusForbidden || !strings.Contains(apiErr.Message, "decommissioned") {
		t.Fatalf("check-in of the decommissioned device: %v; want 403 device decommissioned", err)
	}
	var det operatorapi.DeviceDetail
	call("GET", "/v1/devices/"+dev, fleet.RoleReleaseManager, "", 200, &det)
	if len(det.Verdicts) != 1 || len(det.Decisions) != 1 || det.Device.DecommissionedAt.IsZero() {
		t.Fatalf("after the refused check-in: %d verdicts, %d decisions, device %+v; want 1, 1 (nothing stored)", len(det.Verdicts), len(det.Decisions), det.Device)
	}
	call("GET", "/v1/rollouts/vib-1.0.0", fleet.RoleReleaseManager, "", 200, &st)
	if st.Selected != 0 {
		t.Fatalf("rollout after: %d selected, want 0 (the device is out of service)", st.Selected)
	}
	kinds := strings.Join(auditKinds(t, f.fixture, d.id), ",")
	if !strings.Contains(kinds, "device.decommission") || !strings.Contains(kinds, "attestation.rejected") {
		t.Fatalf("audit records of the device: %s", kinds)
	}
	// Its TPM signed the refused check-in over a fresh nonce: the device is the actor.
	if actors := auditActors(t, f.fixture, d.id, "attestation.rejected"); len(actors) != 1 || actors[0] != "device:"+d.id {
		t.Fatalf("refusal of the decommissioned device recorded with actors %v; want [device:%s]", actors, d.id)
	}
}

// operatorAPIFor enables f's operator API and returns a caller of it with a token of
// each role: it checks the status and decodes the answer into v (unless nil).
func operatorAPIFor(t *testing.T, f *deviceFixture) func(method, path string, role fleet.Role, body string, wantCode int, v any) {
	t.Helper()
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
	return func(method, path string, role fleet.Role, body string, wantCode int, v any) {
		t.Helper()
		req, _ := http.NewRequest(method, f.http.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tok[role])
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != wantCode {
			t.Fatalf("%s %s as %s = %d %s; want %d", method, path, role, resp.StatusCode, b, wantCode)
		}
		if v != nil {
			if err := json.Unmarshal(b, v); err != nil {
				t.Fatal(err)
			}
		}
	}
}

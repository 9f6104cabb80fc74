package reposerver

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repo-server/operatorapi"
)

// TestRolloutCreateWarnsWhenItCannotFinish: a rollout that can never finish is created
// (the fleet or the waves may change), but the answer says why it cannot finish: a
// selector that matches no enrolled device, one naming devices that are not enrolled, a
// last wave below 100 %. They were accepted silently (found from outside).
func TestRolloutCreateWarnsWhenItCannotFinish(t *testing.T) {
	o := newOpFixture(t)
	o.seed("dev-1", "dev-2")
	target := `"target":{"kind":"model","name":"vibration","version":"3.0.0"}`
	unpublished := "the repository holds no model vibration 3.0.0 yet"
	tests := []struct {
		id, rest string
		want     []string
	}{
		{"typo", `"selector":{"labels":{"line":"prss"}}`,
			[]string{unpublished, "no enrolled device matches the selector (labels line=prss): the rollout waits until one does"}},
		{"nosuch", `"selector":{"devices":["urn:ek:sha256:nosuch"]}`,
			[]string{unpublished, "no enrolled device matches the selector (devices urn:ek:sha256:nosuch)"}},
		{"one-unknown", `"selector":{"devices":["dev-1","urn:ek:sha256:nosuch"]}`,
			[]string{unpublished, "the selector lists devices that are not enrolled (or are decommissioned): urn:ek:sha256:nosuch"}},
		{"half", `"waves":[{"percent":10},{"percent":50}]`,
			[]string{unpublished, "the last wave is 50%: the other 50% of the selected devices are never offered the target and the rollout never reaches them; end the waves with 100 (e.g. --waves 10,50,100)"}},
		{"fine", `"selector":{"labels":{"line":"press"}},"waves":[{"percent":10},{"percent":100}]`,
			[]string{unpublished}},
	}
	for _, tt := range tests {
		var created operatorapi.RolloutCreated
		o.must("POST", "/v1/rollouts", fleet.RoleReleaseManager, `{"id":"`+tt.id+`",`+target+`,`+tt.rest+`}`, 201, &created)
		if len(created.Warnings) != len(tt.want) {
			b, _ := json.Marshal(created.Warnings)
			t.Errorf("create %s: warnings %s; want %d", tt.id, b, len(tt.want))
			continue
		}
		for i, w := range tt.want {
			if !strings.HasPrefix(created.Warnings[i], w) {
				t.Errorf("create %s: warning %d = %q; want %q", tt.id, i, created.Warnings[i], w)
			}
		}
		if created.Warning != strings.Join(created.Warnings, "; ") {
			t.Errorf("create %s: warning = %q; want the warnings in one line", tt.id, created.Warning)
		}
	}
}

// TestPolicyRejectionIsShownWithRollouts: when the policy directory holds a file the
// watcher rejects, the rollout list and each rollout's status say so, with the file
// and its error (only /v1/policy and the dashboard did), and creating an unrelated
// rollout is refused 409 naming that file and what to do (it failed with that file's
// error, 400, as if the new rollout were wrong).
func TestPolicyRejectionIsShownWithRollouts(t *testing.T) {
	o := newOpFixture(t)
	o.seed("dev-1")
	var list operatorapi.RolloutList
	o.must("GET", "/v1/rollouts", fleet.RoleAuditor, "", 200, &list)
	if list.PolicyRejected != nil {
		t.Fatalf("rollout list with a valid policy: policy_rejected = %+v", list.PolicyRejected)
	}
	typo := filepath.Join(o.dir, "20-typo.yaml")
	if err := os.WriteFile(typo, []byte("rollouts:\n  - id: t\n    target: {kind: model, name: m, version: 1.0.0}\n    waves: [{percent: 100, soak: 10}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := o.watcher.Reload(); err == nil {
		t.Fatal("Reload with a typo = nil; want the error")
	}
	o.must("GET", "/v1/rollouts", fleet.RoleAuditor, "", 200, &list)
	if pr := list.PolicyRejected; pr == nil || !slices.Equal(pr.Files, []string{"20-typo.yaml"}) || !strings.Contains(pr.Error, `20-typo.yaml:4: rollout "t": wave 0: soak "10"`) || pr.Digest != o.watcher.Policy().Digest {
		t.Errorf("rollout list: policy_rejected = %+v; want 20-typo.yaml and its error", pr)
	}
	if len(list.Rollouts) != 1 || list.Rollouts[0].ID != "vib-2" {
		t.Errorf("rollout list = %+v; want the last good policy's vib-2", list.Rollouts)
	}
	var st operatorapi.RolloutDetail
	o.must("GET", "/v1/rollouts/vib-2", fleet.RoleAuditor, "", 200, &st)
	if st.ID != "vib-2" || st.PolicyRejected == nil || !slices.Equal(st.PolicyRejected.Files, []string{"20-typo.yaml"}) {
		t.Errorf("rollout status = %+v; want vib-2 with the rejection of 20-typo.yaml", st)
	}
	code, body := o.do("POST", "/v1/rollouts", o.tok[fleet.RoleReleaseManager], `{"id":"other","target":{"kind":"model","name":"vibration","version":"3.0.0"}}`)
	if code != 409 || !strings.Contains(body, `rollout \"other\" not created: the policy directory holds a file the server rejects: 20-typo.yaml:4:`) || !strings.Contains(body, "correct or remove 20-typo.yaml") {
		t.Errorf("create an unrelated rollout = %d %s; want 409 naming 20-typo.yaml", code, body)
	}
}

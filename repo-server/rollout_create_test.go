package reposerver

import (
	"encoding/json"
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

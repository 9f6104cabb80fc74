package agent

import (
	"context"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/rollback"
	"github.com/edgeward/edgeward/updater"
)

func TestCommandJudge(t *testing.T) {
	trial := updater.Trial{Kind: artifact.KindModel, Payload: "/slots/model/b/payload",
		Target: rollback.Target{Path: "models/iris/2.0.0.onnx", Version: "2.0.0"}}
	for _, tc := range []struct {
		cmd    string
		pass   bool
		reason string
	}{
		{`test "$EDGEWARD_KIND $EDGEWARD_TARGET $EDGEWARD_VERSION $EDGEWARD_PAYLOAD" = "model models/iris/2.0.0.onnx 2.0.0 /slots/model/b/payload"`, true, ""},
		{`echo accuracy too low; exit 3`, false, "exit status 3: accuracy too low"},
	} {
		v := CommandJudge(tc.cmd).Judge(context.Background(), trial)
		if v.Pass != tc.pass || !strings.Contains(v.Reason, tc.reason) {
			t.Errorf("CommandJudge(%q) = %+v; want pass %v, reason containing %q", tc.cmd, v, tc.pass, tc.reason)
		}
	}
}

func TestStatic(t *testing.T) {
	d, err := Static{artifact.KindModel: "models/iris/1.0.0.onnx"}.CheckIn(context.Background(), nil)
	if err != nil || len(d) != 1 || d[artifact.KindModel].Target != "models/iris/1.0.0.onnx" || d[artifact.KindModel].Action != "install" {
		t.Fatalf("Static.CheckIn = %+v, %v; want an install of models/iris/1.0.0.onnx", d, err)
	}
}

package artifact

import "testing"

func TestStricter(t *testing.T) {
	tests := []struct {
		a, b, want Gates
	}{
		{Gates{}, Gates{}, Gates{}},
		{Gates{MinAccuracy: 0.9}, Gates{MinAccuracy: 0.95}, Gates{MinAccuracy: 0.95}},
		{Gates{MaxP99Ms: 5}, Gates{}, Gates{MaxP99Ms: 5}},
		{Gates{}, Gates{MaxRSSMB: 256}, Gates{MaxRSSMB: 256}},
		{Gates{MaxP99Ms: 5, MaxAbsError: 0.1}, Gates{MaxP99Ms: 4, MaxAbsError: 0.2}, Gates{MaxP99Ms: 4, MaxAbsError: 0.1}},
		{Gates{MinAccuracy: 0.97, MaxRSSMB: 128}, Gates{MinAccuracy: 0.9, MaxRSSMB: 512, MaxP99Ms: 3}, Gates{MinAccuracy: 0.97, MaxRSSMB: 128, MaxP99Ms: 3}},
	}
	for _, tt := range tests {
		if got := Stricter(tt.a, tt.b); got != tt.want {
			t.Errorf("Stricter(%+v, %+v) = %+v; want %+v", tt.a, tt.b, got, tt.want)
		}
		if got := Stricter(tt.b, tt.a); got != tt.want {
			t.Errorf("Stricter(%+v, %+v) = %+v; want %+v (symmetric)", tt.b, tt.a, got, tt.want)
		}
	}
}

func TestCommitGates(t *testing.T) {
	signed, rollout := &Gates{MinAccuracy: 0.9, MaxP99Ms: 5}, &Gates{MinAccuracy: 0.99}
	tests := []struct {
		name            string
		signed, rollout *Gates
		want            *Gates
	}{
		{"neither", nil, nil, nil},
		{"a rollout without gates", nil, &Gates{}, nil},
		{"signed, rollout without gates", signed, &Gates{}, signed},
		{"signed only", signed, nil, signed},
		{"rollout only", nil, rollout, rollout},
		{"both", signed, rollout, &Gates{MinAccuracy: 0.99, MaxP99Ms: 5}},
	}
	for _, tt := range tests {
		got := CommitGates(tt.signed, tt.rollout)
		if (got == nil) != (tt.want == nil) || got != nil && *got != *tt.want {
			t.Errorf("%s: CommitGates(%v, %v) = %v; want %v", tt.name, tt.signed, tt.rollout, got, tt.want)
		}
		if got != nil && (got == tt.signed || got == tt.rollout) {
			t.Errorf("%s: CommitGates returned an argument, not a copy", tt.name)
		}
	}
}

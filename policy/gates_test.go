package policy

import (
	"testing"

	"github.com/edgeward/edgeward/internal/artifact"
)

func TestStricter(t *testing.T) {
	tests := []struct {
		a, b, want artifact.Gates
	}{
		{artifact.Gates{}, artifact.Gates{}, artifact.Gates{}},
		{artifact.Gates{MinAccuracy: 0.9}, artifact.Gates{MinAccuracy: 0.95}, artifact.Gates{MinAccuracy: 0.95}},
		{artifact.Gates{MaxP99Ms: 5}, artifact.Gates{}, artifact.Gates{MaxP99Ms: 5}},
		{artifact.Gates{}, artifact.Gates{MaxRSSMB: 256}, artifact.Gates{MaxRSSMB: 256}},
		{artifact.Gates{MaxP99Ms: 5, MaxAbsError: 0.1}, artifact.Gates{MaxP99Ms: 4, MaxAbsError: 0.2}, artifact.Gates{MaxP99Ms: 4, MaxAbsError: 0.1}},
		{artifact.Gates{MinAccuracy: 0.97, MaxRSSMB: 128}, artifact.Gates{MinAccuracy: 0.9, MaxRSSMB: 512, MaxP99Ms: 3}, artifact.Gates{MinAccuracy: 0.97, MaxRSSMB: 128, MaxP99Ms: 3}},
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

package lab

import (
	"fmt"
	"testing"

	"github.com/edgeward/edgeward/policy"
)

// TestPercentFor checks that the computed first-wave percentage holds exactly the first
// k devices by bucket, as the policy evaluates waves (Rollout.WaveOf).
func TestPercentFor(t *testing.T) {
	var devs []*Device
	for i := range 8 {
		devs = append(devs, &Device{Name: fmt.Sprint("d", i), ID: fmt.Sprintf("urn:ek:sha256:device-%d", i)})
	}
	for _, id := range []string{"vib-1.0.0", "vib-2.0.0", "ort-1.24.3"} {
		ordered := ByBucket(id, devs)
		for k := 1; k < len(devs); k++ {
			r := &policy.Rollout{ID: id, Waves: []policy.Wave{{Percent: PercentFor(id, ordered, k)}, {Percent: 100}}}
			for i, d := range ordered {
				want := 1
				if i < k {
					want = 0
				}
				if got := r.WaveOf(d.ID); got != want {
					t.Errorf("%s, first wave %g%% (k=%d): WaveOf(%s) = %d; want %d", id, r.Waves[0].Percent, k, d.ID, got, want)
				}
			}
		}
	}
}

package policy

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestWaveToApprove: approve --wave numbers the waves from 0, as rollout status does,
// and a refusal says what was asked, which waves there are and which is next (it said
// "wave 2 (2 waves): no such wave" after a second approval, or for --wave -1).
func TestWaveToApprove(t *testing.T) {
	t0 := time.Date(2024, 12, 2, 10, 0, 0, 0, time.UTC)
	r := &Rollout{ID: "vib-3", Waves: []Wave{{Percent: 10}, {Percent: 50, Approval: true}, {Percent: 100}}}
	two := &Rollout{ID: "vib-3", Waves: []Wave{{Percent: 10}, {Percent: 100, Approval: true}}}
	atWave := func(w int, approved ...int) RolloutState {
		return RolloutState{ID: "vib-3", Started: t0, WaveStarted: t0, Wave: w, Approved: approved}
	}
	wave := func(n int) *int { return &n }
	tests := []struct {
		name    string
		r       *Rollout
		s       RolloutState
		asked   *int
		want    int
		wantErr error
		msg     []string
	}{
		{"the next by default", r, atWave(0), nil, 1, nil, nil},
		{"wave 1 as asked", r, atWave(0), wave(1), 1, nil, nil},
		{"wave 2 as asked (Approve refuses it: needs none)", r, atWave(0), wave(2), 2, nil, nil},
		{"approved twice: the last wave is current", two, atWave(1, 1), nil, 0, ErrNoSuchWave,
			[]string{"wave 2 (no wave given", "its waves are 0-1", "wave 1, the last, is current: no wave is left to approve"}},
		{"wave -1", r, atWave(0), wave(-1), 0, ErrNoSuchWave,
			[]string{"wave -1 (as asked)", "its waves are 0-2", "wave 0 is current and wave 1 is next (it needs approval: edgeward rollout approve vib-3 --wave 1)"}},
		{"wave 7", r, atWave(1), wave(7), 0, ErrNoSuchWave,
			[]string{"wave 7 (as asked)", "its waves are 0-2", "wave 1 is current and wave 2 is next (it needs no approval: it starts once wave 1 has soaked)"}},
		{"wave 0", r, atWave(0, 1), wave(0), 0, ErrNoApprovalNeeded,
			[]string{"wave 0", "the first wave starts as soon as the rollout is created", "wave 1 is next (approved already)"}},
		{"not started", r, RolloutState{ID: "vib-3"}, wave(5), 0, ErrNoSuchWave,
			[]string{"it has not started (wave 0 starts first)"}},
		{"one wave", &Rollout{ID: "vib-3", Waves: []Wave{{Percent: 100}}}, atWave(0), nil, 0, ErrNoSuchWave,
			[]string{"it has one wave, wave 0", "no wave is left to approve"}},
	}
	for _, tt := range tests {
		got, err := WaveToApprove(tt.r, tt.s, tt.asked)
		if tt.wantErr == nil {
			if err != nil || got != tt.want {
				t.Errorf("%s: WaveToApprove = %d, %v; want %d", tt.name, got, err, tt.want)
			}
			continue
		}
		if !errors.Is(err, tt.wantErr) {
			t.Errorf("%s: WaveToApprove = %d, %v; want %v", tt.name, got, err, tt.wantErr)
			continue
		}
		for _, m := range tt.msg {
			if !strings.Contains(err.Error(), m) {
				t.Errorf("%s: WaveToApprove error %q; want it to say %q", tt.name, err, m)
			}
		}
	}
}

package rollback

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
)

// TestDowngradeErrorNamesBothFloors: the refusal an operator reads names the target's
// floor and the device's floor as versions, every part of them.
func TestDowngradeErrorNamesBothFloors(t *testing.T) {
	e := &DowngradeError{Kind: artifact.KindModel, Version: "1.2.3", Floor: floorOf(t, "1.2.3"), Current: floorOf(t, "4.5.6")}
	want := "refusing model version 1.2.3: its anti-rollback floor 1.2.3 is below the device's floor 4.5.6"
	if !strings.Contains(e.Error(), want) {
		t.Errorf("DowngradeError = %q; want it to say %q", e.Error(), want)
	}
}

// TestStepEdges covers the boundaries of Step's checks: a trial needs a positive
// timeout; an empty target (length 0) is a target, a negative length is not; the
// committed version itself, republished with other bytes, is not a downgrade.
func TestStepEdges(t *testing.T) {
	v1 := target(t, "1.0.0")
	committed := State{Kind: artifact.KindModel, Phase: Committed, Active: SlotA, Current: &v1}
	staged := State{Kind: artifact.KindModel, Phase: Staged, Active: SlotA, Current: &v1, Pending: &v1}

	if _, _, err := Step(staged, EvBeginTrial{Timeout: 0}, t0); err == nil {
		t.Error("Step(staged, begin-trial with timeout 0) = nil error; want a refusal")
	}
	if s, _, err := Step(staged, EvBeginTrial{Timeout: time.Nanosecond}, t0); err != nil || s.Phase != Trial {
		t.Errorf("Step(staged, begin-trial 1ns) = %v, %v; want trial", s, err)
	}

	empty := sha256.Sum256(nil)
	v2 := target(t, "2.0.0")
	v2.Length, v2.SHA256 = 0, hex.EncodeToString(empty[:])
	if s, _, err := Step(committed, EvInstall{Target: v2, Floor: v1.Floor}, t0); err != nil || s.Phase != Downloading {
		t.Errorf("Step(install of an empty target) = %v, %v; want downloading", s, err)
	}
	v2.Length = -1
	if _, _, err := Step(committed, EvInstall{Target: v2, Floor: v1.Floor}, t0); err == nil {
		t.Error("Step(install of a target with length -1) = nil error; want a refusal")
	}

	again := v1
	again.SHA256 = strings.Repeat("ab", 32)
	s, _, err := Step(committed, EvInstall{Target: again, Floor: v1.Floor}, t0)
	if errors.Is(err, ErrDowngrade) || s.Phase != Downloading {
		t.Errorf("Step(install of 1.0.0 republished over committed 1.0.0) = %v, %v; want downloading, not a downgrade", s, err)
	}
}

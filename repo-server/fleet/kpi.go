package fleet

import (
	"maps"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/edgeward/edgeward/internal/printable"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
)

// RolloutKPI is what a release manager judges a rollout by. Computed by ComputeRollout
// from the rollout's reports; pure.
type RolloutKPI struct {
	Rollout string `json:"rollout"`
	// Attempts is the number of install reports; Devices the number of devices that
	// reported; Committed the devices whose latest report is a commit.
	Attempts  int `json:"attempts"`
	Devices   int `json:"devices"`
	Committed int `json:"committed"`
	// Retried counts the attempts that failed for a cause outside the version
	// (wire.OutcomeInfrastructure: no space, the network, the runtime down); the device
	// retries them. They are in Attempts, Failures and Causes, but not in SuccessRate.
	Retried int `json:"retried"`
	// SuccessRate is committed attempts / the attempts that had a result, i.e. not
	// Retried (0 when there are none): a full disk or a runtime crash on a device says
	// nothing about the version.
	SuccessRate float64 `json:"success_rate"`
	// Failures counts failed attempts by outcome (probe_failed, rolled_back,
	// install_error, attestation_untrusted, infrastructure); Causes counts them by
	// outcome and cause, "rolled_back: p99 9ms > 5ms", the cause cut at 80 characters.
	Failures map[wire.Outcome]int `json:"failures"`
	Causes   map[string]int       `json:"causes"`
	// BytesDownloaded sums the reports' bytes.
	BytesDownloaded int64 `json:"bytes_downloaded"`
	// BytesSaved sums what deltas saved (the full targets' lengths minus the bytes
	// fetched; a delta that failed and fell back counts as a loss); DeltaInstalls counts
	// the attempts built from a delta, DeltaFallbacks those that tried one and fell
	// back to the full target (wire.Report.DeltaFallback).
	BytesSaved     int64 `json:"bytes_saved"`
	DeltaInstalls  int   `json:"delta_installs"`
	DeltaFallbacks int   `json:"delta_fallbacks"`
	// CommitP50 and CommitP95 are quantiles of the time from the rollout's start to each
	// device's first commit.
	CommitP50 time.Duration `json:"commit_p50"`
	CommitP95 time.Duration `json:"commit_p95"`
	// MeanAccuracy, MeanP99Ms and MeanPeakRSSMB average the probe measurements of
	// committed attempts that carry them (0 if none).
	MeanAccuracy  float64 `json:"mean_accuracy"`
	MeanP99Ms     float64 `json:"mean_p99_ms"`
	MeanPeakRSSMB float64 `json:"mean_peak_rss_mb"`
}

// ComputeRollout computes a rollout's KPIs from its reports (reports of other rollouts
// are ignored). started is the rollout's start (policy.RolloutState.Started), the
// publish time as far as the fleet is concerned.
func ComputeRollout(rolloutID string, started time.Time, reports []wire.Report) RolloutKPI {
	k := RolloutKPI{Rollout: rolloutID, Failures: map[wire.Outcome]int{}, Causes: map[string]int{}}
	latest := map[string]wire.Report{}
	firstCommit := map[string]time.Time{}
	var acc, p99, rss []float64
	committedAttempts := 0
	for _, r := range reports {
		if r.RolloutID != rolloutID {
			continue
		}
		k.Attempts++
		k.BytesDownloaded += r.Bytes
		k.BytesSaved += r.BytesSaved
		if r.Delta != "" {
			k.DeltaInstalls++
		}
		if r.DeltaFallback != "" {
			k.DeltaFallbacks++
		}
		if prev, ok := latest[r.DeviceID]; !ok || !r.At.Before(prev.At) {
			latest[r.DeviceID] = r
		}
		if r.Outcome.Failed() {
			k.Failures[r.Outcome]++
			k.Causes[causeKey(r)]++
			if !r.Outcome.Final() {
				k.Retried++
			}
			continue
		}
		committedAttempts++
		if t, ok := firstCommit[r.DeviceID]; !ok || r.At.Before(t) {
			firstCommit[r.DeviceID] = r.At
		}
		if r.Accuracy > 0 {
			acc = append(acc, r.Accuracy)
		}
		if r.P99Ms > 0 {
			p99 = append(p99, r.P99Ms)
		}
		if r.PeakRSSMB > 0 {
			rss = append(rss, r.PeakRSSMB)
		}
	}
	k.Devices = len(latest)
	for _, r := range latest {
		if !r.Outcome.Failed() {
			k.Committed++
		}
	}
	k.SuccessRate = rate(committedAttempts, k.Attempts-k.Retried)
	lat := make([]time.Duration, 0, len(firstCommit))
	for _, t := range firstCommit {
		lat = append(lat, max(0, t.Sub(started)))
	}
	slices.Sort(lat)
	k.CommitP50, k.CommitP95 = quantile(lat, 0.50), quantile(lat, 0.95)
	k.MeanAccuracy, k.MeanP99Ms, k.MeanPeakRSSMB = mean(acc), mean(p99), mean(rss)
	return k
}

// rate is n / of, 0 when of is 0.
func rate(n, of int) float64 {
	if of <= 0 {
		return 0
	}
	return float64(n) / float64(of)
}

// maxCauseKey is the most bytes of a failure's cause that group it.
const maxCauseKey = 200

func causeKey(r wire.Report) string {
	// Causes are grouped by their text, cut at a word (and never within a character,
	// which made invalid UTF-8) once longer than maxCauseKey: cut at 80 bytes, a probe's
	// cause lost its figures mid-number, "(accuracy 0.32" (found from outside, 2 Dec).
	c := strings.TrimSpace(r.Cause)
	if len(c) > maxCauseKey {
		c = printable.Cut(c, maxCauseKey)
		if i := strings.LastIndexByte(c, ' '); i > maxCauseKey/2 {
			c = c[:i]
		}
		c += " …"
	}
	if c == "" {
		return string(r.Outcome)
	}
	return string(r.Outcome) + ": " + c
}

// quantile returns the nearest-rank q-quantile of sorted values (0 if empty).
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func mean(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := 0.0
	for _, x := range v {
		s += x
	}
	return s / float64(len(v))
}

// TimeToPercent returns how long after started the rollout's target was first
// committed on percent of fleetSize devices (the devices the rollout selects), and false
// if it has not happened yet.
func TimeToPercent(rolloutID string, started time.Time, fleetSize int, reports []wire.Report, percent float64) (time.Duration, bool) {
	if fleetSize <= 0 || percent <= 0 {
		return 0, false
	}
	need := int(math.Ceil(percent / 100 * float64(fleetSize)))
	first := map[string]time.Time{}
	for _, r := range reports {
		if r.RolloutID != rolloutID || r.Outcome.Failed() {
			continue
		}
		if t, ok := first[r.DeviceID]; !ok || r.At.Before(t) {
			first[r.DeviceID] = r.At
		}
	}
	if len(first) < need {
		return 0, false
	}
	times := slices.SortedFunc(maps.Values(first), func(a, b time.Time) int { return a.Compare(b) })
	return max(0, times[need-1].Sub(started)), true
}

// FleetKPI summarises every rollout and the attestation of the fleet over a period.
type FleetKPI struct {
	Attempts int `json:"attempts"`
	// Retried and SuccessRate are as in RolloutKPI: infrastructure failures are retried
	// by the device and are not counted in the success rate.
	Retried     int                  `json:"retried"`
	SuccessRate float64              `json:"success_rate"`
	Failures    map[wire.Outcome]int `json:"failures"`
	Causes      map[string]int       `json:"causes"`
	// Verdicts counts attestation verdicts; AttestationPassRate is the fraction that
	// were trusted (0 when there are none).
	Verdicts            int     `json:"verdicts"`
	AttestationPassRate float64 `json:"attestation_pass_rate"`
	// Rollouts are the per-rollout KPIs, by rollout ID.
	Rollouts []RolloutKPI `json:"rollouts"`
}

// SetVerdicts sets the attestation figures from verdict counts of the period (as
// Store.VerdictCounts gives them).
func (f *FleetKPI) SetVerdicts(counts map[policy.Verdict]int) {
	f.Verdicts = 0
	for _, n := range counts {
		f.Verdicts += n
	}
	f.AttestationPassRate = 0
	if f.Verdicts > 0 {
		f.AttestationPassRate = float64(counts[policy.VerdictTrusted]) / float64(f.Verdicts)
	}
}

// ComputeFleet computes fleet-wide KPIs from reports and verdicts of a period (the
// caller chooses it, e.g. the store's Reports and Verdicts since a time). starts gives
// each rollout's start time, for the commit latency; a missing one counts from zero
// latency (the first report).
func ComputeFleet(reports []wire.Report, verdicts []VerdictRecord, starts map[string]time.Time) FleetKPI {
	f := FleetKPI{Failures: map[wire.Outcome]int{}, Causes: map[string]int{}}
	ids := map[string]time.Time{}
	ok := 0
	for _, r := range reports {
		f.Attempts++
		if r.Outcome.Failed() {
			f.Failures[r.Outcome]++
			f.Causes[causeKey(r)]++
			if !r.Outcome.Final() {
				f.Retried++
			}
		} else {
			ok++
		}
		if r.RolloutID != "" {
			if t, seen := ids[r.RolloutID]; !seen || r.At.Before(t) {
				ids[r.RolloutID] = r.At
			}
		}
	}
	f.SuccessRate = rate(ok, f.Attempts-f.Retried)
	counts := map[policy.Verdict]int{}
	for _, v := range verdicts {
		counts[v.Verdict]++
	}
	f.SetVerdicts(counts)
	keys := slices.Collect(maps.Keys(ids))
	sort.Strings(keys)
	for _, id := range keys {
		start, known := starts[id]
		if !known {
			start = ids[id]
		}
		f.Rollouts = append(f.Rollouts, ComputeRollout(id, start, reports))
	}
	return f
}

package reposerver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/jsonstrict"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgeward/edgeward/repo-server/operatorapi"
)

// Fleet endpoints of the operator API: rollouts, devices, tokens, KPIs. Every write is
// appended to the audit log with actor "operator:<name>" after it took effect.

func (o *operatorAPI) policy() *policy.Policy {
	if o.cfg.Policy != nil {
		if p := o.cfg.Policy(); p != nil {
			return p
		}
	}
	return &policy.Policy{}
}

func actorOf(r *http.Request) string { return principal(r).Actor() }

// decodeBody decodes an optional JSON body into v: an empty body leaves v as it is.
func decodeBody(w http.ResponseWriter, r *http.Request, max int64, v any) bool {
	if !jsonContentType(r.Header.Get("Content-Type")) {
		writeError(w, http.StatusUnsupportedMediaType, "want application/json")
		return false
	}
	if err := jsonstrict.DecodeUnique(http.MaxBytesReader(w, r.Body, max), v); err != nil && err != io.EOF {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request larger than %d bytes", max))
		} else {
			writeError(w, http.StatusBadRequest, "malformed request: "+err.Error())
		}
		return false
	}
	return true
}

// fail answers an error from the store or the policy package with the status a caller
// can act on; anything unexpected is logged and answered 500.
func (o *operatorAPI) fail(w http.ResponseWriter, r *http.Request, what string, err error) {
	var el policy.ErrorList
	switch {
	case errors.Is(err, fleet.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, fleet.ErrInvalid), errors.Is(err, policy.ErrNoSuchWave), errors.As(err, &el):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, fleet.ErrExists), errors.Is(err, policy.ErrRejectedFiles), errors.Is(err, policy.ErrBadTransition), errors.Is(err, policy.ErrNoApprovalNeeded), errors.Is(err, fleet.ErrDecommissioned):
		writeError(w, http.StatusConflict, err.Error())
	case errors.Is(err, context.Canceled):
		writeError(w, http.StatusServiceUnavailable, err.Error())
	case fleet.NoSpace(err):
		o.s.log.Warn("operator API: the fleet database's disk is full", "what", what, "err", err)
		writeError(w, http.StatusServiceUnavailable, what+": the fleet database cannot take writes (its disk is full): try again later")
	case fleet.Unavailable(err):
		o.s.log.Warn("operator API: the fleet database is not answering", "what", what, "err", err)
		writeError(w, http.StatusServiceUnavailable, what+": the fleet database is not answering: try again later")
	default:
		o.s.log.Error("operator API", "what", what, "operator", principal(r).Name, "err", err)
		writeError(w, http.StatusInternalServerError, what+" failed")
	}
}

// parseSince reads a look-back period ("24h") from the query; def when absent.
func parseSince(r *http.Request, key string, now time.Time, def time.Duration) (time.Time, error) {
	d := def
	if v := r.URL.Query().Get(key); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil || d <= 0 {
			return time.Time{}, fmt.Errorf("%s: want a positive duration such as 24h", key)
		}
	}
	return now.Add(-d), nil
}

// GET /v1/policy: the policy in force and its last reload.
func (o *operatorAPI) policyStatus(w http.ResponseWriter, r *http.Request) {
	p := o.policy()
	out := map[string]any{"digest": p.Digest, "files": p.Files, "rollouts": len(p.Rollouts), "writable": o.cfg.PolicyDir != ""}
	if o.cfg.PolicyStatus != nil {
		st := o.cfg.PolicyStatus()
		if st.Err != nil {
			st.Error = st.Err.Error()
		}
		out["reload"] = st
	}
	writeJSON(w, http.StatusOK, out)
}

// GET /v1/kpis?since=24h&verdicts_since=1h: fleet-wide KPIs of the period (the
// attestation pass rate of the shorter verdict period) and device counts.
func (o *operatorAPI) kpis(w http.ResponseWriter, r *http.Request) {
	now := o.s.cfg.Repo.Now()
	since, err := parseSince(r, "since", now, 24*time.Hour)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	vsince, err := parseSince(r, "verdicts_since", now, o.cfg.VerdictWindow)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	sum, err := operatorapi.LoadFleetSummary(r.Context(), o.cfg.Fleet, since, vsince)
	if err != nil {
		o.fail(w, r, "fleet KPIs", err)
		return
	}
	writeJSON(w, http.StatusOK, sum)
}

// GET /v1/rollouts
func (o *operatorAPI) rolloutList(w http.ResponseWriter, r *http.Request) {
	list, err := operatorapi.ListRollouts(r.Context(), o.cfg.Fleet, o.policy())
	if err != nil {
		o.fail(w, r, "list rollouts", err)
		return
	}
	writeJSON(w, http.StatusOK, operatorapi.RolloutList{Rollouts: list, PolicyRejected: o.policyRejected()})
}

// policyRejected describes the policy directory's rejected change, if it holds one.
func (o *operatorAPI) policyRejected() *operatorapi.PolicyRejected {
	if o.cfg.PolicyStatus == nil {
		return nil
	}
	return operatorapi.NewPolicyRejected(o.cfg.PolicyStatus())
}

// GET /v1/rollouts/{id}: fleet.Status, with the waves' progress and the rollout's KPIs.
func (o *operatorAPI) rolloutStatus(w http.ResponseWriter, r *http.Request) {
	st, err := o.cfg.Fleet.Status(r.Context(), o.policy(), r.PathValue("id"))
	if err != nil {
		o.fail(w, r, "rollout status", err)
		return
	}
	if strings.HasPrefix(st.Progress, "waiting for devices") && o.published(r.Context(), st.Target) == errNotPublished {
		// The devices wait for the target, not the other way round (it read "waiting
		// for devices": found by an outside operator journey).
		st.Progress = fmt.Sprintf("waiting for the target: the repository holds no %s %s %s (publish it; %s)", st.Target.Kind, st.Target.Name, st.Target.Version, strings.TrimPrefix(st.Progress, "waiting for devices "))
	}
	writeJSON(w, http.StatusOK, operatorapi.RolloutDetail{RolloutStatus: st, PolicyRejected: o.policyRejected()})
}

var errNotPublished = errors.New("not published")

// published says whether the repository lists target: nil if it does,
// errNotPublished if not, another error if the repository cannot be read.
func (o *operatorAPI) published(ctx context.Context, target policy.Target) error {
	if d := o.s.devices; d != nil {
		// The device API's catalog, loaded once per timestamp: a dashboard polling a
		// rollout's status must not parse the repository's metadata each time.
		cat, _, err := d.catalog(ctx)
		if err != nil {
			return err
		}
		if _, ok := cat[target]; ok {
			return nil
		}
		return errNotPublished
	}
	st, err := o.s.cfg.Repo.Load(ctx)
	if err != nil {
		return err
	}
	for _, ti := range st.List() {
		if ti.Meta != nil && ti.Meta.Kind == target.Kind && ti.Meta.Name == target.Name && ti.Meta.Version == target.Version {
			return nil
		}
	}
	return errNotPublished
}

// POST /v1/rollouts, body policy.RolloutSpec: writes the rollout into the policy
// directory, then waits (LoadWait at most) for the watcher to load it.
func (o *operatorAPI) rolloutCreate(w http.ResponseWriter, r *http.Request) {
	if o.cfg.PolicyDir == "" {
		writeError(w, http.StatusServiceUnavailable, "this server has no policy directory to create rollouts in")
		return
	}
	var spec policy.RolloutSpec
	if !decodeJSON(w, r, 64<<10, &spec) {
		return
	}
	ctx := r.Context()
	// policy.CreateRollout checks the new file against the whole policy, so creations
	// in one directory must not overlap: createMu within this replica, and the publish
	// lease across replicas sharing the directory (two rollouts created at once at two
	// replicas could each pass the check alone and conflict together).
	var out operatorapi.RolloutCreated
	var created *policy.Rollout
	path, err := func() (string, error) {
		o.createMu.Lock()
		defer o.createMu.Unlock()
		unlock, err := o.s.lockPublish(ctx)
		if err != nil {
			return "", err
		}
		defer unlock()
		if err := o.rolloutFree(ctx, spec.ID); err != nil {
			return "", err
		}
		// Staged under a name the watcher does not load, audited, then renamed into
		// place: no audit record, no change, and no moment in which the rollout is in
		// force without its record.
		st, err := policy.StageRollout(o.cfg.PolicyDir, spec, o.s.cfg.Repo.Now())
		if err != nil {
			return "", err
		}
		created = st.Rollout
		out = operatorapi.RolloutCreated{ID: spec.ID, File: filepath.Base(st.Path)}
		if err := o.s.auditLog(ctx, actorOf(r), "rollout.create", spec.ID, map[string]any{"spec": spec, "file": out.File}); err != nil {
			if derr := st.Discard(); derr != nil {
				o.s.log.Error("remove unaudited rollout file", "file", st.Path, "err", derr)
			}
			return "", err
		}
		if err := st.Commit(); err != nil {
			// Recorded but not in force (the rename failed): say so in the log too.
			st.Discard()
			if aerr := o.s.auditLog(ctx, actorOf(r), "rollout.create.failed", spec.ID, map[string]any{"file": out.File, "error": err.Error()}); aerr != nil {
				err = errors.Join(err, aerr)
			}
			return "", err
		}
		return st.Path, nil
	}()
	if err != nil {
		o.fail(w, r, "create rollout", err)
		return
	}
	if o.published(ctx, policy.Target{Kind: spec.Target.Kind, Name: spec.Target.Name, Version: spec.Target.Version}) == errNotPublished {
		out.Warnings = append(out.Warnings, fmt.Sprintf("the repository holds no %s %s %s yet: publish it before devices can get it", spec.Target.Kind, spec.Target.Name, spec.Target.Version))
	}
	// Warnings, not refusals: a rollout that can never finish was accepted silently
	// (no device matching a mistyped label, a last wave of 50 %: found from outside).
	if created != nil {
		ws, err := o.selectorWarnings(ctx, created, spec.Selector)
		if err != nil {
			o.s.log.Warn("create rollout: the selector was not checked against the fleet", "rollout", spec.ID, "err", err)
		}
		out.Warnings = append(out.Warnings, ws...)
		if last := created.Waves[len(created.Waves)-1].Percent; last < 100 {
			out.Warnings = append(out.Warnings, fmt.Sprintf("the last wave is %g%%: the other %g%% of the selected devices are never offered the target and the rollout never reaches them; end the waves with 100 (e.g. --waves %s,100)", last, 100-last, wavesFlag(created.Waves)))
		}
	}
	out.Warning = strings.Join(out.Warnings, "; ")
	out.Loaded = o.waitLoaded(ctx, spec.ID, path)
	writeJSON(w, http.StatusCreated, out)
}

// selectorWarnings says when r's selector matches no enrolled device in service, only
// quarantined ones, or lists device IDs that are not enrolled: the rollout would wait
// for them for good. sel is the selector as the operator wrote it, for the message.
func (o *operatorAPI) selectorWarnings(ctx context.Context, r *policy.Rollout, sel *policy.SelectorSpec) ([]string, error) {
	matched, quarantined := 0, 0
	known := map[string]bool{}
	for after := ""; ; {
		devs, err := o.cfg.Fleet.Devices(ctx, fleet.ListOptions{After: after, Limit: fleet.MaxListLimit})
		if err != nil {
			return nil, err
		}
		for i := range devs {
			d := &devs[i]
			if d.Decommissioned() {
				continue
			}
			known[d.ID] = true
			if ok, _ := r.Selected(&d.Device); ok {
				if d.Quarantined {
					quarantined++
				} else {
					matched++
				}
			}
		}
		if len(devs) < fleet.MaxListLimit {
			break
		}
		after = devs[len(devs)-1].ID
	}
	var out []string
	switch {
	case matched == 0 && quarantined == 0:
		out = append(out, fmt.Sprintf("no enrolled device matches the selector (%s): the rollout waits until one does; check it against 'edgeward devices list'", describeSelector(sel)))
	case matched == 0:
		out = append(out, fmt.Sprintf("only quarantined devices (%d) match the selector (%s): they get nothing until released", quarantined, describeSelector(sel)))
	}
	if r.Selector != nil && (matched > 0 || quarantined > 0) {
		var unknown []string
		for _, id := range r.Selector.Devices {
			if !known[id] {
				unknown = append(unknown, id)
			}
		}
		if len(unknown) > 0 {
			out = append(out, fmt.Sprintf("the selector lists devices that are not enrolled (or are decommissioned): %s; the rollout waits for them until they enroll", strings.Join(unknown, ", ")))
		}
	}
	return out, nil
}

// describeSelector writes a selector as the operator gave it, for a message.
func describeSelector(s *policy.SelectorSpec) string {
	if s == nil {
		return "every device"
	}
	var parts []string
	if len(s.Labels) > 0 {
		kv := make([]string, 0, len(s.Labels))
		for k, v := range s.Labels {
			kv = append(kv, k+"="+v)
		}
		slices.Sort(kv)
		parts = append(parts, "labels "+strings.Join(kv, ","))
	}
	if len(s.Devices) > 0 {
		parts = append(parts, "devices "+strings.Join(s.Devices, ","))
	}
	if len(s.Hardware) > 0 {
		parts = append(parts, "hardware "+strings.Join(s.Hardware, ","))
	}
	if s.AgentVersion != "" {
		parts = append(parts, "agent_version "+s.AgentVersion)
	}
	if s.RuntimeVersion != "" {
		parts = append(parts, "runtime_version "+s.RuntimeVersion)
	}
	if s.Expr != "" {
		parts = append(parts, "expr "+strconv.Quote(s.Expr))
	}
	if len(parts) == 0 {
		return "every device"
	}
	return strings.Join(parts, "; ")
}

// wavesFlag writes waves' percentages as --waves takes them.
func wavesFlag(ws []policy.Wave) string {
	s := make([]string, len(ws))
	for i, w := range ws {
		s[i] = strconv.FormatFloat(w.Percent, 'g', -1, 64)
	}
	return strings.Join(s, ",")
}

// rolloutExistsError refuses creating a rollout whose ID a policy file already
// defines. It is a fleet.ErrExists (409): the request conflicts with the policy's
// state, it is not malformed.
type rolloutExistsError struct {
	id  string
	pos policy.Pos
}

func (e *rolloutExistsError) Error() string {
	return fmt.Sprintf("rollout %q already exists (defined at %s:%d): rollout IDs are unique; choose another ID, or pause, resume or abort that rollout", e.id, filepath.Base(e.pos.File), e.pos.Line)
}

func (e *rolloutExistsError) Is(target error) bool { return target == fleet.ErrExists }

// rolloutFree returns a *rolloutExistsError if the policy directory, or when it does
// not load the policy in force, defines rollout id. Called with createMu and the
// publish lease held, so that no other creation adds the ID before this one's file
// is in place.
//
// An ID the fleet keeps a state for is not free either, though no file defines it any
// more (a rollout file removed by hand): the planner would take the new rollout for
// the old one, in the old one's wave and status, with its devices' reports (found from
// outside, 2 Dec: a new rollout was born completed at its last wave, past an approval).
func (o *operatorAPI) rolloutFree(ctx context.Context, id string) error {
	p, err := policy.Load(o.cfg.PolicyDir)
	if err != nil {
		// Not loadable (StageRollout reports why): the policy in force is what
		// devices get, and what the new file would conflict with.
		p = o.policy()
	}
	if ro := p.Rollout(id); ro != nil {
		return &rolloutExistsError{id: id, pos: ro.Pos}
	}
	st, err := o.cfg.Fleet.RolloutState(ctx, id)
	switch {
	case err == nil:
		return &rolloutUsedError{id: id, state: st}
	case !errors.Is(err, fleet.ErrNotFound):
		return err
	}
	return nil
}

// rolloutUsedError refuses creating a rollout under the ID of one the fleet ran before
// (its file since removed). A fleet.ErrExists (409).
type rolloutUsedError struct {
	id    string
	state policy.RolloutState
}

func (e *rolloutUsedError) Error() string {
	status := e.state.Status
	if status == "" {
		status = policy.StatusActive
	}
	return fmt.Sprintf("rollout ID %q was used before (started %s, %s at wave %d; its state, events and reports are kept): rollout IDs are never reused; choose another ID",
		e.id, e.state.Started.UTC().Format(time.RFC3339), status, e.state.Wave)
}

func (e *rolloutUsedError) Is(target error) bool { return target == fleet.ErrExists }

// waitLoaded polls the policy in force until it defines rollout id in file, for at most
// LoadWait.
func (o *operatorAPI) waitLoaded(ctx context.Context, id, file string) bool {
	if o.cfg.Policy == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, o.cfg.LoadWait)
	defer cancel()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if ro := o.policy().Rollout(id); ro != nil && ro.Pos.File == file {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}

// rolloutRequest is the optional body of pause, resume, abort and approve.
type rolloutRequest struct {
	Reason string `json:"reason,omitempty"`
	// Wave is approve's wave index, from 0 as rollout status numbers the waves (wave 0
	// starts with the rollout and needs no approval); absent: the wave awaiting
	// approval, else the next one. (It was an int, so an explicit 0 approved the next
	// wave.)
	Wave *int `json:"wave,omitempty"`
}

type rolloutAct func(r *policy.Rollout, s policy.RolloutState, req rolloutRequest, actor string, now time.Time) (policy.RolloutState, policy.Event, error)

func pauseRollout(_ *policy.Rollout, s policy.RolloutState, req rolloutRequest, actor string, now time.Time) (policy.RolloutState, policy.Event, error) {
	reason := req.Reason
	if reason == "" {
		reason = "paused by " + actor
	}
	return policy.Pause(s, actor, reason, now)
}

func resumeRollout(_ *policy.Rollout, s policy.RolloutState, _ rolloutRequest, actor string, now time.Time) (policy.RolloutState, policy.Event, error) {
	return policy.Resume(s, actor, now)
}

func abortRollout(_ *policy.Rollout, s policy.RolloutState, req rolloutRequest, actor string, now time.Time) (policy.RolloutState, policy.Event, error) {
	reason := req.Reason
	if reason == "" {
		reason = "aborted by " + actor
	}
	return policy.Abort(s, actor, reason, now)
}

func approveRollout(r *policy.Rollout, s policy.RolloutState, req rolloutRequest, actor string, now time.Time) (policy.RolloutState, policy.Event, error) {
	// The wave asked for, else the one waiting for approval, else the next one; a
	// wave the rollout does not have is refused naming the waves it has and the next.
	wave, err := policy.WaveToApprove(r, s, req.Wave)
	if err != nil {
		return s, policy.Event{}, err
	}
	return policy.Approve(r, s, wave, actor, now)
}

// rolloutAction applies a pure operator action (policy.Pause, Resume, Abort, Approve) to
// the rollout's stored state and saves the result with its events. A rollout the
// planner has not started yet (or whose target changed) is planned first, so the action
// applies to the state the planner would otherwise write over it; the result is planned
// again, so an approved wave whose predecessor has soaked starts at once.
func (o *operatorAPI) rolloutAction(act rolloutAct) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req rolloutRequest
		if !decodeBody(w, r, 16<<10, &req) {
			return
		}
		if len(req.Reason) > fleet.MaxCause {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("reason: at most %d bytes", fleet.MaxCause))
			return
		}
		ctx, id, actor := r.Context(), r.PathValue("id"), actorOf(r)
		ro := o.policy().Rollout(id)
		if ro == nil {
			writeError(w, http.StatusNotFound, fmt.Sprintf("rollout %s: not in the policy in force", id))
			return
		}
		now := o.s.cfg.Repo.Now()
		next, evs, err := o.cfg.Fleet.ActOnRollout(ctx, ro, actor, func(st policy.RolloutState) (policy.RolloutState, policy.Event, error) {
			return act(ro, st, req, actor, now)
		}, now)
		if err != nil {
			o.fail(w, r, "rollout action", err)
			return
		}
		writeJSON(w, http.StatusOK, operatorapi.RolloutChanged{State: next, Events: evs})
	}
}

// GET /v1/devices?after=ID&limit=N
func (o *operatorAPI) deviceList(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	opt := fleet.ListOptions{After: q.Get("after")}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			writeError(w, http.StatusBadRequest, "limit: want a positive number")
			return
		}
		opt.Limit = min(n, fleet.MaxListLimit)
	}
	devs, err := o.cfg.Fleet.Devices(r.Context(), opt)
	if err != nil {
		o.fail(w, r, "list devices", err)
		return
	}
	out := operatorapi.DeviceList{Devices: []operatorapi.DeviceView{}}
	for _, d := range devs {
		out.Devices = append(out.Devices, operatorapi.NewDeviceView(d))
	}
	limit := opt.Limit
	if limit == 0 {
		limit = fleet.DefaultLimit
	}
	if len(devs) == limit {
		out.Next = devs[len(devs)-1].ID
	}
	writeJSON(w, http.StatusOK, out)
}

// GET /v1/devices/{id}?since=1h: the device, its attestation history (verdicts of the
// period), its last decisions and its install history. A device ID holding '/' is
// sent percent-encoded (%2F).
func (o *operatorAPI) deviceShow(w http.ResponseWriter, r *http.Request) {
	since, err := parseSince(r, "since", o.s.cfg.Repo.Now(), o.cfg.VerdictWindow)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	d, err := operatorapi.LoadDeviceDetail(r.Context(), o.cfg.Fleet, r.PathValue("id"), since)
	if err != nil {
		o.fail(w, r, "show device", err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

// decodeReason reads a device action's body, {"reason": "…"}; an empty reason becomes
// "<done> by <operator>". false: the body was refused (answered).
func decodeReason(w http.ResponseWriter, r *http.Request, done string) (string, bool) {
	var req struct {
		Reason string `json:"reason"`
	}
	if !decodeBody(w, r, 16<<10, &req) {
		return "", false
	}
	if req.Reason == "" {
		req.Reason = done + " by " + actorOf(r)
	}
	return req.Reason, true
}

// POST /v1/devices/{id}/quarantine {"reason": "…"}
func (o *operatorAPI) deviceQuarantine(w http.ResponseWriter, r *http.Request) {
	reason, ok := decodeReason(w, r, "quarantined")
	if !ok {
		return
	}
	id := r.PathValue("id")
	if err := o.cfg.Fleet.SetQuarantine(r.Context(), id, true, reason,
		fleet.AuditRecord{Actor: actorOf(r), Kind: "device.quarantine", Subject: id, Data: map[string]any{"reason": reason}}); err != nil {
		o.fail(w, r, "quarantine", err)
		return
	}
	o.writeDevice(w, r, id)
}

// POST /v1/devices/{id}/decommission {"reason": "…"} takes the device out of service for
// good (fleet.Store.Decommission): its check-ins are refused from then on. 409 if it
// already was.
func (o *operatorAPI) deviceDecommission(w http.ResponseWriter, r *http.Request) {
	reason, ok := decodeReason(w, r, "decommissioned")
	if !ok {
		return
	}
	id := r.PathValue("id")
	if err := o.cfg.Fleet.Decommission(r.Context(), id, reason, o.s.cfg.Repo.Now(),
		fleet.AuditRecord{Actor: actorOf(r), Kind: "device.decommission", Subject: id, Data: map[string]any{"reason": reason}}); err != nil {
		o.fail(w, r, "decommission", err)
		return
	}
	o.writeDevice(w, r, id)
}

// POST /v1/devices/{id}/release
func (o *operatorAPI) deviceRelease(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Reason string `json:"reason"`
	}
	if !decodeBody(w, r, 16<<10, &req) {
		return
	}
	id := r.PathValue("id")
	if err := o.cfg.Fleet.SetQuarantine(r.Context(), id, false, "",
		fleet.AuditRecord{Actor: actorOf(r), Kind: "device.release", Subject: id, Data: map[string]any{"reason": req.Reason}}); err != nil {
		o.fail(w, r, "release", err)
		return
	}
	o.writeDevice(w, r, id)
}

// PUT /v1/devices/{id}/labels {"labels": {"k": "v"}}: replaces the labels. The
// labels are required: {"labels": {}} clears them, while a body without them ({} or
// {"labels": null}, a client's mistake) is refused, 400, and changes nothing.
func (o *operatorAPI) deviceLabels(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Labels map[string]string `json:"labels"`
	}
	if !decodeJSON(w, r, 64<<10, &req) {
		return
	}
	if req.Labels == nil { // absent or null; {} decodes to an empty map
		writeError(w, http.StatusBadRequest, `labels missing: want {"labels": {"key": "value", …}}, or {"labels": {}} to clear them`)
		return
	}
	id := r.PathValue("id")
	if err := o.cfg.Fleet.SetLabels(r.Context(), id, req.Labels,
		fleet.AuditRecord{Actor: actorOf(r), Kind: "device.labels", Subject: id, Data: map[string]any{"labels": req.Labels}}); err != nil {
		o.fail(w, r, "set labels", err)
		return
	}
	o.writeDevice(w, r, id)
}

// POST /v1/devices/{id}/clear-failed {"kind": "model"}: the device is offered a version
// that failed on it again.
func (o *operatorAPI) deviceClearFailed(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Kind string `json:"kind"`
	}
	if !decodeJSON(w, r, 4<<10, &req) {
		return
	}
	kind, err := artifact.ParseKind(req.Kind)
	if err != nil || (kind != artifact.KindModel && kind != artifact.KindRuntime) {
		writeError(w, http.StatusBadRequest, "kind: want model or runtime")
		return
	}
	id := r.PathValue("id")
	if err := o.cfg.Fleet.ClearFailed(r.Context(), id, kind,
		fleet.AuditRecord{Actor: actorOf(r), Kind: "device.clear_failed", Subject: id, Data: map[string]any{"kind": kind}}); err != nil {
		o.fail(w, r, "clear failed", err)
		return
	}
	o.writeDevice(w, r, id)
}

func (o *operatorAPI) writeDevice(w http.ResponseWriter, r *http.Request, id string) {
	d, err := o.cfg.Fleet.Device(r.Context(), id)
	if err != nil {
		o.fail(w, r, "read device", err)
		return
	}
	writeJSON(w, http.StatusOK, operatorapi.NewDeviceView(d))
}

// POST /v1/tokens {"operator": "rita", "role": "release-manager", "ttl": "720h"}
func (o *operatorAPI) tokenCreate(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Operator string `json:"operator"`
		Role     string `json:"role"`
		TTL      string `json:"ttl"`
	}
	if !decodeJSON(w, r, 4<<10, &req) {
		return
	}
	role, err := fleet.ParseRole(req.Role)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	ttl := 30 * 24 * time.Hour
	if req.TTL != "" {
		if ttl, err = time.ParseDuration(req.TTL); err != nil {
			writeError(w, http.StatusBadRequest, "ttl: "+err.Error())
			return
		}
	}
	now := o.s.cfg.Repo.Now()
	tok, info, err := o.cfg.Fleet.CreateToken(r.Context(), req.Operator, role, ttl, now,
		fleet.AuditRecord{Actor: actorOf(r), Kind: "token.create", Data: map[string]any{"operator": req.Operator, "role": role, "expires_at": now.Add(ttl).UTC()}})
	if err != nil {
		o.fail(w, r, "create token", err)
		return
	}
	writeJSON(w, http.StatusCreated, operatorapi.TokenCreated{Token: tok, Info: info})
}

// GET /v1/tokens: every token, without secrets.
func (o *operatorAPI) tokenList(w http.ResponseWriter, r *http.Request) {
	ts, err := o.cfg.Fleet.Tokens(r.Context())
	if err != nil {
		o.fail(w, r, "list tokens", err)
		return
	}
	if ts == nil {
		ts = []fleet.TokenInfo{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"tokens": ts})
}

// DELETE /v1/tokens/{id}: revokes a token at once.
func (o *operatorAPI) tokenRevoke(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := o.cfg.Fleet.RevokeToken(r.Context(), id, o.s.cfg.Repo.Now(), fleet.AuditRecord{Actor: actorOf(r), Kind: "token.revoke", Subject: id}); err != nil {
		o.fail(w, r, "revoke token", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"revoked": id})
}

// fleetMetrics wraps the fleet collector for the server's registry. The device API
// already exports edgeward_attestation_verdicts_total (counted as check-ins happen),
// under the same name as the collector's SQL count; a registry refuses two collectors
// of one name, so the collector's is left out here.
func fleetMetrics(c prometheus.Collector) prometheus.Collector {
	return &filteredCollector{c: c, drop: `"edgeward_attestation_verdicts_total"`}
}

type filteredCollector struct {
	c    prometheus.Collector
	drop string // a quoted fully-qualified metric name
}

func (f *filteredCollector) keep(d *prometheus.Desc) bool {
	return !strings.Contains(d.String(), "fqName: "+f.drop)
}

func (f *filteredCollector) Describe(ch chan<- *prometheus.Desc) {
	in := make(chan *prometheus.Desc)
	go func() { f.c.Describe(in); close(in) }()
	for d := range in {
		if f.keep(d) {
			ch <- d
		}
	}
}

func (f *filteredCollector) Collect(ch chan<- prometheus.Metric) {
	in := make(chan prometheus.Metric)
	go func() { f.c.Collect(in); close(in) }()
	for m := range in {
		if f.keep(m.Desc()) {
			ch <- m
		}
	}
}

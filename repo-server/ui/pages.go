package ui

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/audit"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repo-server/operatorapi"
)

// The pages read through the operator API's read models (operatorapi.LoadFleetSummary,
// LoadDeviceDetail, ListRollouts, fleet.Store.Status), so they show the API's numbers.

func (u *UI) policy() *policy.Policy {
	if u.cfg.Policy != nil {
		if p := u.cfg.Policy(); p != nil {
			return p
		}
	}
	return &policy.Policy{}
}

type policyInfo struct {
	Digest   string
	Rollouts int
	Reload   *policy.ReloadStatus
	Error    string
}

func (u *UI) policyInfo() policyInfo {
	p := u.policy()
	pi := policyInfo{Digest: p.Digest, Rollouts: len(p.Rollouts)}
	if len(pi.Digest) > 12 {
		pi.Digest = pi.Digest[:12]
	}
	if u.cfg.PolicyStatus != nil {
		st := u.cfg.PolicyStatus()
		pi.Reload = &st
		if st.Err != nil {
			pi.Error = st.Err.Error()
		}
	}
	return pi
}

const devicesPerPage = 100

type fleetData struct {
	Summary operatorapi.FleetSummary
	Devices []operatorapi.DeviceView
	Next    string
	Policy  policyInfo
}

func (u *UI) fleetPage(w http.ResponseWriter, r *http.Request, v view) {
	ctx := r.Context()
	sum, err := operatorapi.LoadFleetSummary(ctx, u.cfg.Fleet, v.Now.Add(-24*time.Hour), v.Now.Add(-u.cfg.VerdictWindow))
	if err != nil {
		u.fail(w, r, v, "fleet summary", err)
		return
	}
	devs, err := u.cfg.Fleet.Devices(ctx, fleet.ListOptions{After: r.URL.Query().Get("after"), Limit: devicesPerPage})
	if err != nil {
		u.fail(w, r, v, "device list", err)
		return
	}
	d := fleetData{Summary: sum, Policy: u.policyInfo()}
	for _, dev := range devs {
		d.Devices = append(d.Devices, operatorapi.NewDeviceView(dev))
	}
	if len(devs) == devicesPerPage {
		d.Next = devs[len(devs)-1].ID
	}
	v.Title = "Fleet"
	u.render(w, r, http.StatusOK, "fleet", v, d)
}

func (u *UI) devicePage(w http.ResponseWriter, r *http.Request, v view) {
	id := r.PathValue("id")
	window := u.cfg.VerdictWindow
	if s := r.URL.Query().Get("since"); s != "" {
		if w, err := time.ParseDuration(s); err == nil && w > 0 && w <= 31*24*time.Hour {
			window = w
		}
	}
	d, err := operatorapi.LoadDeviceDetail(r.Context(), u.cfg.Fleet, id, v.Now.Add(-window))
	if err != nil {
		u.fail(w, r, v, "device "+id, err)
		return
	}
	v.Title = "Device " + id
	u.render(w, r, http.StatusOK, "device", v, d)
}

// rolloutView is a rollout's status with the bars' numbers.
type rolloutView struct {
	fleet.RolloutStatus
	Summary operatorapi.RolloutSummary
	Waves   []waveView
}

type waveView struct {
	fleet.WaveStatus
	Index   int
	Current bool
	Started bool
	// Done is the devices of the wave that reported (committed or failed), as shown by
	// the bar; its maximum is the wave's device count (at least 1).
	Done, Max int
	Failing   bool // failure ratio above zero
}

func (u *UI) rolloutView(ctx context.Context, p *policy.Policy, s operatorapi.RolloutSummary) (rolloutView, error) {
	st, err := u.cfg.Fleet.Status(ctx, p, s.ID)
	if err != nil {
		return rolloutView{}, err
	}
	rv := rolloutView{RolloutStatus: st, Summary: s}
	started := !st.State.Started.IsZero()
	for i, w := range st.Waves {
		wv := waveView{WaveStatus: w, Index: i, Current: started && i == st.State.Wave, Started: started && i <= st.State.Wave,
			Done: w.Reported, Max: max(w.Devices, w.Reported, 1), Failing: w.Failed > 0}
		rv.Waves = append(rv.Waves, wv)
	}
	return rv, nil
}

func (u *UI) rolloutsPage(w http.ResponseWriter, r *http.Request, v view) {
	ctx := r.Context()
	p := u.policy()
	list, err := operatorapi.ListRollouts(ctx, u.cfg.Fleet, p)
	if err != nil {
		u.fail(w, r, v, "rollouts", err)
		return
	}
	var out []rolloutView
	for _, s := range list {
		rv, err := u.rolloutView(ctx, p, s)
		if err != nil {
			u.fail(w, r, v, "rollout "+s.ID, err)
			return
		}
		out = append(out, rv)
	}
	v.Title = "Rollouts"
	u.render(w, r, http.StatusOK, "rollouts", v, map[string]any{"Rollouts": out, "Policy": u.policyInfo()})
}

func (u *UI) rolloutPage(w http.ResponseWriter, r *http.Request, v view) {
	ctx := r.Context()
	p := u.policy()
	id := r.PathValue("id")
	list, err := operatorapi.ListRollouts(ctx, u.cfg.Fleet, p)
	if err != nil {
		u.fail(w, r, v, "rollouts", err)
		return
	}
	for _, s := range list {
		if s.ID != id {
			continue
		}
		rv, err := u.rolloutView(ctx, p, s)
		if err != nil {
			u.fail(w, r, v, "rollout "+id, err)
			return
		}
		v.Title = "Rollout " + id
		u.render(w, r, http.StatusOK, "rollout", v, rv)
		return
	}
	u.fail(w, r, v, "rollout "+id, fleet.ErrNotFound)
}

const auditPerPage = 100

// auditData is the audit page: a page of records, newest first, and the result of a
// verification when one was asked for.
type auditData struct {
	Records       []audit.Record
	Kind, Subject string
	Head          int64
	Older, Newer  int64 // after= of the neighbouring pages; -1: none
	Verified      bool  // a verification ran
	Report        *audit.Report
	VerifyErr     string
	KeyID         string
	Unavailable   string
}

func (u *UI) auditPage(w http.ResponseWriter, r *http.Request, v view) {
	v.Title = "Audit log"
	if u.cfg.Audit == nil {
		u.render(w, r, http.StatusOK, "audit", v, auditData{Unavailable: "This server has no audit log."})
		return
	}
	ctx := r.Context()
	l, closer, err := u.cfg.Audit(ctx)
	if err != nil {
		u.fail(w, r, v, "audit log", err)
		return
	}
	defer closer.Close()
	q := r.URL.Query()
	d := auditData{Kind: q.Get("kind"), Subject: q.Get("subject"), KeyID: audit.KeyID(l.PublicKey()), Older: -1, Newer: -1}
	if d.Head, err = l.Size(ctx); err != nil {
		u.fail(w, r, v, "audit log", err)
		return
	}
	after := max(0, d.Head-auditPerPage)
	if s := q.Get("after"); s != "" {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil && n >= 0 {
			after = n
		}
	}
	if d.Kind != "" || d.Subject != "" {
		if q.Get("after") == "" {
			after = 0
		}
	}
	recs, err := l.Records(ctx, audit.Query{Kind: d.Kind, Subject: d.Subject, After: after, Limit: auditPerPage})
	if err != nil {
		u.fail(w, r, v, "audit records", err)
		return
	}
	if d.Kind == "" && d.Subject == "" {
		if after > 0 {
			d.Older = max(0, after-auditPerPage)
		}
		if after+auditPerPage < d.Head {
			d.Newer = after + auditPerPage
		}
	} else if len(recs) == auditPerPage {
		d.Newer = recs[len(recs)-1].Seq
	}
	for i := len(recs) - 1; i >= 0; i-- {
		d.Records = append(d.Records, recs[i])
	}
	if q.Get("verify") != "" {
		d.Verified = true
		if d.Head == 0 {
			d.VerifyErr = "the log holds no record yet"
		} else if d.Report, err = verify(ctx, l); err != nil {
			d.VerifyErr = err.Error()
		}
	}
	u.render(w, r, http.StatusOK, "audit", v, d)
}

// verify exports the log and checks the export as an auditor would offline, with only
// the checkpoint public key, streaming through a pipe. The export signs a checkpoint
// over the records so far, so an intact log verifies completely.
func verify(ctx context.Context, l *audit.Log) (*audit.Report, error) {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(l.Export(ctx, pw)) }()
	rep, err := audit.Verify(pr, audit.VerifyOptions{LogKey: l.Verifier()})
	pr.CloseWithError(errors.New("verification finished"))
	return rep, err
}

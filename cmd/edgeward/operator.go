package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"gopkg.in/yaml.v3"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/units"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repo-server/operatorapi"
)

// The commands that talk to a server's operator API: rollout, devices, remote token
// management and audit export --server. Each takes --server and --token, defaulting to
// $EDGEWARD_SERVER and $EDGEWARD_TOKEN.

// opClient calls the operator API.
type opClient struct {
	server, token string
	asJSON        bool
	env           *cliEnv
}

func (c *opClient) register(fs *flag.FlagSet, env *cliEnv) {
	c.env = env
	fs.StringVar(&c.server, "server", env.getenv("EDGEWARD_SERVER"), "server URL ($EDGEWARD_SERVER)")
	secretVar(fs, &c.token, "token", env.getenv("EDGEWARD_TOKEN"), "operator API token ($EDGEWARD_TOKEN)")
	fs.BoolVar(&c.asJSON, "json", false, "print the server's JSON answer")
}

// APIError is an error answer of the operator API.
type APIError = operatorapi.APIError

// api is the operator-API client for the server and token given.
func (c *opClient) api() (*operatorapi.Client, error) {
	hc, err := operatorHTTP(c.env)
	if err != nil {
		return nil, err
	}
	cert := c.env.getenv("EDGEWARD_CLIENT_CERT") != ""
	return &operatorapi.Client{Server: c.server, Token: c.token, HTTP: hc, Certificate: cert}, nil
}

// show prints the raw JSON when --json was given and reports whether it did.
func (c *opClient) show(raw []byte) bool {
	if !c.asJSON {
		return false
	}
	var buf bytes.Buffer
	if json.Indent(&buf, raw, "", "  ") != nil {
		buf.Reset()
		buf.Write(raw)
	}
	buf.WriteByte('\n')
	c.env.stdout.Write(buf.Bytes())
	return true
}

func newTab(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0) }

func ago(t, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t).Round(time.Second)
	if d < 0 {
		return "in " + (-d).String()
	}
	return d.String() + " ago"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// shown is free text that reached the fleet from a device or an operator (reasons,
// error messages, causes) as the terminal may print it: every control character (C0,
// DEL, C1), bidirectional override and other non-printing rune is written
// as a Go escape (\x1b, \n, \u202e), so a compromised device or a release manager
// cannot clear the screen, recolour or overwrite lines, or start a line of its own in
// what a security admin reads. Printable text is returned as it is.
func shown(s string) string {
	clean := true
	for _, r := range s {
		if !unicode.IsPrint(r) && r != ' ' || unicode.Is(unicode.Bidi_Control, r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if (unicode.IsPrint(r) || r == ' ') && !unicode.Is(unicode.Bidi_Control, r) {
			b.WriteRune(r)
			continue
		}
		q := strconv.QuoteRune(r) // '\x1b', '\n', '\u202e'
		b.WriteString(q[1 : len(q)-1])
	}
	return b.String()
}

// ---- rollout ----

func cmdRolloutCreate(ctx context.Context, env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("rollout create", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var c opClient
	c.register(fs, env)
	file := fs.String("file", "", "rollout spec (YAML or JSON, the fields of a rollout in a policy file); flags below override it")
	id := fs.String("id", "", "rollout ID (lower-case letters, digits, '.', '_', '-')")
	kind := fs.String("kind", "", "target kind: model or runtime (default model)")
	name := fs.String("name", "", "target name")
	version := fs.String("version", "", "target version")
	waves := fs.String("waves", "", `waves as PERCENT[:SOAK][:approve],… e.g. "1:30m,10:1h,50:1h:approve,100"`)
	labels := fs.String("labels", "", "selector: device labels k=v,k=v (all must match)")
	hardware := fs.String("hardware", "", "selector: hardware classes a,b (any of)")
	devices := fs.String("devices", "", "selector: device IDs a,b")
	expr := fs.String("expr", "", "selector: CEL expression over device attributes")
	window := fs.String("window", "", "maintenance window name (overrides the devices' windows)")
	maxFail := fs.Float64("max-failure-ratio", 0.1, "auto-pause when more than this fraction of a wave failed")
	minReports := fs.Int("min-reports", 3, "… once at least this many devices of the wave reported")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	given := map[string]bool{} // flags on the command line override the spec file
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var spec policy.RolloutSpec
	if *file != "" {
		data, err := os.ReadFile(*file)
		if err != nil {
			return err
		}
		dec := yaml.NewDecoder(bytes.NewReader(data)) // YAML is a superset of JSON
		dec.KnownFields(true)
		if err := dec.Decode(&spec); err != nil {
			return fmt.Errorf("%s: %w", *file, err)
		}
	}
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&spec.ID, *id)
	set((*string)(&spec.Target.Kind), *kind)
	set(&spec.Target.Name, *name)
	set(&spec.Target.Version, *version)
	set(&spec.Window, *window)
	if spec.Target.Kind == "" {
		spec.Target.Kind = artifact.KindModel
	}
	if *waves != "" {
		ws, err := parseWaves(*waves)
		if err != nil {
			return err
		}
		spec.Waves = ws
	}
	if *labels != "" || *hardware != "" || *devices != "" || *expr != "" {
		if spec.Selector == nil {
			spec.Selector = &policy.SelectorSpec{}
		}
		if *labels != "" {
			spec.Selector.Labels = map[string]string{}
			for _, kv := range strings.Split(*labels, ",") {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return fmt.Errorf("--labels: %q: want key=value", kv)
				}
				spec.Selector.Labels[strings.TrimSpace(k)] = strings.TrimSpace(v)
			}
		}
		if *hardware != "" {
			spec.Selector.Hardware = strings.Split(*hardware, ",")
		}
		if *devices != "" {
			spec.Selector.Devices = strings.Split(*devices, ",")
		}
		set(&spec.Selector.Expr, *expr)
	}
	if given["max-failure-ratio"] || given["min-reports"] {
		if spec.Pause == nil {
			spec.Pause = &policy.PauseSpec{}
		}
		if given["max-failure-ratio"] {
			spec.Pause.MaxFailureRatio = maxFail
		}
		if given["min-reports"] {
			spec.Pause.MinReports = minReports
		}
	}
	if spec.ID == "" || spec.Target.Name == "" || spec.Target.Version == "" {
		return errors.New("usage: edgeward rollout create --id ID --name NAME --version V [--kind model|runtime] [--waves 1:30m,10:1h,100] [--labels k=v] … (or --file SPEC)")
	}
	api, err := c.api()
	if err != nil {
		return err
	}
	res, raw, err := api.CreateRollout(ctx, spec)
	if err != nil {
		return err
	}
	if c.show(raw) {
		return nil
	}
	fmt.Fprintf(env.stdout, "created rollout %s (%s %s %s) in %s\n", res.ID, spec.Target.Kind, spec.Target.Name, spec.Target.Version, res.File)
	if !res.Loaded {
		fmt.Fprintln(env.stdout, "the server has not loaded it yet: check 'edgeward rollout status' in a moment")
	}
	warnings := res.Warnings
	if len(warnings) == 0 && res.Warning != "" { // an older server
		warnings = []string{res.Warning}
	}
	for _, w := range warnings {
		fmt.Fprintln(env.stdout, "warning: "+shown(w))
	}
	return nil
}

// parseWaves parses "1:30m,10:1h,50:1h:approve,100".
func parseWaves(s string) ([]policy.WaveSpec, error) {
	var out []policy.WaveSpec
	for _, item := range strings.Split(s, ",") {
		parts := strings.Split(strings.TrimSpace(item), ":")
		pct, err := strconv.ParseFloat(strings.TrimSuffix(parts[0], "%"), 64)
		if err != nil {
			return nil, fmt.Errorf("--waves: %q: want PERCENT[:SOAK][:approve]", item)
		}
		w := policy.WaveSpec{Percent: pct}
		if len(parts) > 3 {
			return nil, fmt.Errorf("--waves: %q: want PERCENT[:SOAK][:approve]", item)
		}
		for i, p := range parts[1:] {
			switch {
			case p == "approve" || p == "approval":
				w.Approval = true
			case i == 1:
				// The soak comes second: a third part is only "approve" (a typo there was
				// blamed on the soak: 'soak "aprove": invalid duration').
				return nil, fmt.Errorf("--waves: %q: %q: want approve (PERCENT[:SOAK][:approve])", item, p)
			case p != "":
				if _, err := time.ParseDuration(p); err != nil {
					return nil, fmt.Errorf("--waves: %q: soak %q: want a duration such as 30m or 2h (units ms, s, m, h; a day is 24h), or approve", item, p)
				}
				w.Soak = p
			}
		}
		out = append(out, w)
	}
	return out, nil
}

func cmdRolloutStatus(ctx context.Context, env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("rollout status", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var c opClient
	c.register(fs, env)
	events := fs.Int("events", 10, "number of recent events to print")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return errors.New("usage: edgeward rollout status [ID]")
	}
	now := time.Now()
	api, err := c.api()
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		list, raw, err := api.Rollouts(ctx)
		if err != nil {
			return err
		}
		if c.show(raw) {
			return nil
		}
		rollouts := list.Rollouts
		printPolicyRejected(env.stdout, list.PolicyRejected)
		fleetSum, _, err := api.KPIs(ctx)
		if err != nil {
			return err
		}
		tw := newTab(env.stdout)
		fmt.Fprintln(tw, "ROLLOUT\tTARGET\tSTATUS\tWAVES STARTED\tUPDATED\tREASON")
		for _, r := range rollouts {
			status := r.Progress
			if status == "" { // an older server
				status = string(r.Status)
			}
			if r.AwaitingApproval {
				status += " (awaiting approval)"
			}
			started := "0/" + strconv.Itoa(len(r.Waves))
			if !r.Started.IsZero() && len(r.Waves) > 0 {
				started = fmt.Sprintf("%d/%d (up to %g%%)", r.Wave+1, len(r.Waves), r.Waves[min(r.Wave, len(r.Waves)-1)])
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Target, status, started, ago(r.Updated, now), orDash(shown(r.Reason)))
		}
		tw.Flush()
		printFleetKPI(env.stdout, fleetSum)
		return nil
	}
	st, raw, err := api.Rollout(ctx, pos[0])
	if err != nil {
		return err
	}
	if c.show(raw) {
		return nil
	}
	printPolicyRejected(env.stdout, st.PolicyRejected)
	printRolloutStatus(env.stdout, st.RolloutStatus, *events, now)
	return nil
}

// printPolicyRejected warns, first, that the policy directory holds a change the server
// rejected: the policy in force is the last good one, and no change takes effect.
func printPolicyRejected(w io.Writer, pr *operatorapi.PolicyRejected) {
	if pr == nil {
		return
	}
	what := "a change"
	if len(pr.Files) > 0 {
		what = strings.Join(pr.Files, ", ")
	}
	fmt.Fprintf(w, "warning: the policy directory has a rejected file (%s) since %s: the server keeps the last good policy (%.12s) in force and loads no change, a created rollout included, until it is fixed:\n",
		shown(what), pr.At.Local().Format(time.DateTime), pr.Digest)
	for _, line := range strings.Split(pr.Error, "\n") {
		fmt.Fprintf(w, "  %s\n", shown(line))
	}
}

func printRolloutStatus(w io.Writer, st fleet.RolloutStatus, events int, now time.Time) {
	status := st.Progress
	if status == "" { // an older server
		status = string(st.State.Status)
	}
	fmt.Fprintf(w, "rollout %s: %s %s %s — %s\n", st.ID, st.Target.Kind, st.Target.Name, st.Target.Version, status)
	if st.State.Reason != "" {
		fmt.Fprintf(w, "reason: %s\n", shown(st.State.Reason))
	}
	if st.State.AwaitingApproval {
		fmt.Fprintf(w, "wave %d awaits approval: edgeward rollout approve %s\n", st.State.Wave+1, st.ID)
	}
	fmt.Fprintf(w, "selected devices: %d; started %s; current wave %d (waves 0-%d)", st.Selected, ago(st.State.Started, now), st.State.Wave, len(st.Waves)-1)
	if !st.NextWaveAt.IsZero() {
		fmt.Fprintf(w, "; next wave %s", ago(st.NextWaveAt, now))
	}
	fmt.Fprintln(w)
	tw := newTab(w)
	fmt.Fprintln(tw, "WAVE\tPERCENT\tDEVICES\tREPORTED\tOK\tFAILED\tFAILURE RATIO\tPAUSES AT\tSOAK\tAPPROVAL")
	for i, wv := range st.Waves {
		mark := ""
		if i == st.State.Wave && !st.State.Started.IsZero() {
			mark = "*"
		}
		approval := "-"
		switch {
		case wv.Approval && slices.Contains(st.State.Approved, i):
			approval = "approved" // (it showed "needed" after the approval: found from outside)
		case wv.Approval:
			approval = "needed"
		}
		// The auto-pause thresholds, which the status did not show (found from outside).
		pauses := fmt.Sprintf(">%g%% of >=%d", wv.MaxFailureRatio*100, wv.MinReports)
		fmt.Fprintf(tw, "%d%s\t%g%%\t%d\t%d\t%d\t%d\t%.0f%%\t%s\t%s\t%s\n", i, mark, wv.Percent, wv.Devices, wv.Reported, wv.Succeeded, wv.Failed, wv.Ratio*100, pauses, wv.Soak, approval)
	}
	tw.Flush()
	if !st.State.CountSince.IsZero() {
		// Resumed: the waves count (and are judged on) the reports since, successes too;
		// the KPIs below count them all.
		fmt.Fprintf(w, "waves count the reports since the resume %s (the KPIs count all)\n", ago(st.State.CountSince, now))
	}
	k := st.KPI
	fmt.Fprintf(w, "KPIs: %d attempts by %d devices, success rate %.1f%%%s, %d devices committed, %s downloaded\n",
		k.Attempts, k.Devices, k.SuccessRate*100, retried(k.Retried), k.Committed, units.Bytes(k.BytesDownloaded))
	if k.DeltaInstalls > 0 || k.DeltaFallbacks > 0 || k.BytesSaved != 0 {
		fmt.Fprintf(w, "      %d installs from deltas, %d fell back to the full target, %s saved\n", k.DeltaInstalls, k.DeltaFallbacks, units.Bytes(k.BytesSaved))
	}
	if k.Committed > 0 {
		fmt.Fprintf(w, "      time to commit p50 %s, p95 %s\n", k.CommitP50.Round(time.Second), k.CommitP95.Round(time.Second))
		fmt.Fprintf(w, "      probes of the committed installs: %s\n", probeFigures(k))
	}
	for _, pct := range []string{"50%", "90%", "100%"} {
		if d, ok := st.TimeTo[pct]; ok {
			fmt.Fprintf(w, "      %s of the selected devices committed %s after the start\n", pct, d.Round(time.Second))
		}
	}
	printCounts(w, "failures by cause", k.Causes)
	if events > 0 && len(st.Events) > 0 {
		fmt.Fprintln(w, "events:")
		evs := st.Events[max(0, len(st.Events)-events):]
		for _, e := range evs {
			who := e.Actor
			if who == "" {
				who = "planner"
			}
			fmt.Fprintf(w, "  %s  %-17s wave %d  %s %s\n", e.At.Local().Format(time.DateTime), e.Type, e.Wave, who, shown(e.Reason))
		}
	}
}

func printFleetKPI(w io.Writer, s operatorapi.FleetSummary) {
	k := s.KPI
	fmt.Fprintf(w, "fleet: %d devices (%d quarantined); since %s: %d installs, success rate %.1f%%%s; since %s: attestation pass rate %.1f%% of %d verdicts\n",
		s.Devices, s.Quarantined, s.Since.Local().Format(time.DateTime), k.Attempts, k.SuccessRate*100, retried(k.Retried), s.VerdictsSince.Local().Format(time.DateTime), k.AttestationPassRate*100, k.Verdicts)
	printCounts(w, "failures by cause", k.Causes)
}

// retried says how many attempts the success rate leaves out: infrastructure failures
// (no space, network, runtime down), which the devices retry.
func retried(n int) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf(" (%d infrastructure failures retried, not counted)", n)
}

func printCounts(w io.Writer, title string, m map[string]int) {
	if len(m) == 0 {
		return
	}
	fmt.Fprintf(w, "%s:\n", title)
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "  %4d  %s\n", m[k], shown(k))
	}
}

// rolloutActionCmd builds pause, resume, abort and approve.
func rolloutActionCmd(action string) func(ctx context.Context, env *cliEnv, args []string) error {
	return func(ctx context.Context, env *cliEnv, args []string) error {
		fs := flag.NewFlagSet("rollout "+action, flag.ContinueOnError)
		fs.SetOutput(env.stderr)
		var c opClient
		c.register(fs, env)
		var reason *string
		var wave *int
		switch action {
		case "pause", "abort":
			reason = fs.String("reason", "", "why (shown in status and the audit log)")
		case "approve":
			wave = fs.Int("wave", 0, "index of the wave to approve, as 'rollout status' numbers them from 0 (default: the next one)")
		}
		pos, err := parse(fs, args)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return fmt.Errorf("usage: edgeward rollout %s ID", action)
		}
		body := map[string]any{}
		if reason != nil && *reason != "" {
			body["reason"] = *reason
		}
		// --wave as typed, 0 and negative numbers included: the server says which
		// waves there are (a --wave 0 or -1 was dropped, and the next wave approved).
		fs.Visit(func(f *flag.Flag) {
			if f.Name == "wave" {
				body["wave"] = *wave
			}
		})
		api, err := c.api()
		if err != nil {
			return err
		}
		res, raw, err := api.RolloutAction(ctx, pos[0], action, body)
		if err != nil {
			return err
		}
		if c.show(raw) {
			return nil
		}
		for _, e := range res.Events {
			line := fmt.Sprintf("rollout %s: %s (wave %d)", e.Rollout, e.Type, e.Wave)
			if e.Reason != "" {
				line += ": " + shown(e.Reason)
			}
			fmt.Fprintln(env.stdout, line)
		}
		if action == "abort" {
			// Devices that committed the target keep it: say so, with the way out (the
			// command said they went back; they cannot, found from outside, 2 Dec).
			if st, _, err := api.Rollout(ctx, pos[0]); err == nil && st.Committed-st.AlreadyRunning > 0 {
				fmt.Fprintf(env.stdout, "%d of %d selected devices committed %s and keep it: a device never installs a version older than the one it committed (anti-rollback). To replace it, publish the content you want under a higher version and roll that out.\n",
					st.Committed-st.AlreadyRunning, st.Selected, st.Target)
			}
		}
		return nil
	}
}

// ---- devices ----

func cmdDevicesList(ctx context.Context, env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("devices list", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var c opClient
	c.register(fs, env)
	limit := fs.Int("limit", 0, "at most this many devices (default: all)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	api, err := c.api()
	if err != nil {
		return err
	}
	var all []operatorapi.DeviceView
	for after := ""; ; {
		q := url.Values{"limit": {strconv.Itoa(fleet.MaxListLimit)}}
		if after != "" {
			q.Set("after", after)
		}
		page, _, err := api.Devices(ctx, q)
		if err != nil {
			return err
		}
		all = append(all, page.Devices...)
		if page.Next == "" || (*limit > 0 && len(all) >= *limit) {
			break
		}
		after = page.Next
	}
	if *limit > 0 && len(all) > *limit {
		all = all[:*limit]
	}
	if c.asJSON {
		b, _ := json.Marshal(operatorapi.DeviceList{Devices: all})
		c.show(b)
		return nil
	}
	now := time.Now()
	tw := newTab(env.stdout)
	fmt.Fprintln(tw, "DEVICE\tMODEL\tRUNTIME\tVERDICT\tQUARANTINED\tLAST CHECK-IN\tLABELS")
	for _, d := range all {
		q := "-"
		switch {
		case !d.DecommissionedAt.IsZero():
			q = "decommissioned: " + shown(d.DecommissionReason)
		case d.Quarantined:
			q = "yes: " + shown(d.QuarantineReason)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, slotText(d.Slots[artifact.KindModel]), slotText(d.Slots[artifact.KindRuntime]),
			orDash(string(d.Verdict)), q, ago(d.LastCheckIn, now), labelText(d.Labels))
	}
	tw.Flush()
	fmt.Fprintf(env.stdout, "%d devices\n", len(all))
	return nil
}

func slotText(s policy.Slot) string {
	if s.Name == "" && s.Version == "" {
		return "-"
	}
	t := s.Name + " " + orDash(s.Version)
	if s.Failed != "" {
		t += " (failed " + s.Failed + ")"
	}
	return t
}

func labelText(l map[string]string) string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k + "=" + l[k])
	}
	return orDash(b.String())
}

func cmdDevicesShow(ctx context.Context, env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("devices show", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var c opClient
	c.register(fs, env)
	since := fs.Duration("since", time.Hour, "attestation history of this period (the server reads the whole fleet's verdicts of it)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: edgeward devices show ID")
	}
	api, err := c.api()
	if err != nil {
		return err
	}
	d, raw, err := api.Device(ctx, pos[0], *since)
	if err != nil {
		return err
	}
	if c.show(raw) {
		return nil
	}
	now := time.Now()
	w := env.stdout
	v := d.Device
	fmt.Fprintf(w, "device %s\n", v.ID)
	tw := newTab(w)
	fmt.Fprintf(tw, "  labels\t%s\n", labelText(v.Labels))
	fmt.Fprintf(tw, "  hardware\t%s\n", orDash(v.Hardware))
	fmt.Fprintf(tw, "  agent\t%s\n", orDash(v.AgentVersion))
	for _, k := range policy.SlotKinds() {
		sl := v.Slots[k]
		prev := ""
		if sl.Previous != "" {
			prev = " (previous " + sl.Previous + ")"
		}
		fmt.Fprintf(tw, "  %s slot\t%s%s\n", k, slotText(sl), prev)
	}
	fmt.Fprintf(tw, "  verdict\t%s (%s)\n", orDash(string(v.Verdict)), ago(v.VerdictAt, now))
	if v.Quarantined {
		fmt.Fprintf(tw, "  quarantined\tyes: %s\n", shown(v.QuarantineReason))
	} else {
		fmt.Fprintf(tw, "  quarantined\tno\n")
	}
	if !v.DecommissionedAt.IsZero() {
		fmt.Fprintf(tw, "  decommissioned\t%s (%s): %s\n", v.DecommissionedAt.Format(time.RFC3339), ago(v.DecommissionedAt, now), shown(v.DecommissionReason))
	}
	fmt.Fprintf(tw, "  enrolled\t%s\n", ago(v.EnrolledAt, now))
	fmt.Fprintf(tw, "  last check-in\t%s\n", ago(v.LastCheckIn, now))
	if e := v.LastError; e != nil {
		fmt.Fprintf(tw, "  last update error\t%s: %s (%s)\n", shown(string(e.Kind)), shown(e.Message), ago(e.At, now))
	} else {
		fmt.Fprintf(tw, "  last update error\tnone\n")
	}
	tw.Flush()
	fmt.Fprintf(w, "attestation history (since %s):\n", d.Since.Local().Format(time.DateTime))
	for _, vr := range d.Verdicts {
		fmt.Fprintf(w, "  %s  %-9s %s\n", vr.At.Local().Format(time.DateTime), vr.Verdict, shown(vr.Detail))
	}
	fmt.Fprintln(w, "install history:")
	for _, r := range d.Reports {
		line := fmt.Sprintf("  %s  %s %s %s  %s", r.At.Local().Format(time.DateTime), r.Kind, shown(r.Name), shown(r.Version), r.Outcome)
		if r.RolloutID != "" {
			line += "  rollout " + r.RolloutID
		}
		if r.Probe.Measured() {
			line += fmt.Sprintf("  accuracy %.3f p99 %.2fms peak RSS %.1fMB", r.Accuracy, r.P99Ms, r.PeakRSSMB)
		}
		if r.Cause != "" {
			line += "  " + shown(r.Cause)
		}
		fmt.Fprintln(w, line)
	}
	if len(d.Decisions) > 0 {
		dec := d.Decisions[0]
		fmt.Fprintf(w, "last decision (%s):\n", dec.At.Local().Format(time.DateTime))
		for _, s := range dec.Slots {
			target := "-"
			if s.Target != nil {
				target = s.Target.Name + " " + s.Target.Version
			}
			fmt.Fprintf(w, "  %-8s %-8s %-22s %s %s\n", s.Kind, s.Action, shown(string(s.Reason)), shown(target), shown(s.Detail))
		}
	}
	return nil
}

// deviceActionCmd builds quarantine, release and decommission.
func deviceActionCmd(action string) func(ctx context.Context, env *cliEnv, args []string) error {
	return func(ctx context.Context, env *cliEnv, args []string) error {
		fs := flag.NewFlagSet("devices "+action, flag.ContinueOnError)
		fs.SetOutput(env.stderr)
		var c opClient
		c.register(fs, env)
		reason := fs.String("reason", "", "why (kept with the device and in the audit log)")
		pos, err := parse(fs, args)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return fmt.Errorf("usage: edgeward devices %s ID [--reason TEXT]", action)
		}
		var body any
		if *reason != "" {
			body = map[string]string{"reason": *reason}
		}
		api, err := c.api()
		if err != nil {
			return err
		}
		d, raw, err := api.DeviceAction(ctx, pos[0], action, body)
		if err != nil {
			return err
		}
		if c.show(raw) {
			return nil
		}
		switch {
		case action == "decommission":
			fmt.Fprintf(env.stdout, "device %s decommissioned at %s: %s (its check-ins are refused from now on)\n", d.ID, d.DecommissionedAt.Format(time.RFC3339), shown(d.DecommissionReason))
		case d.Quarantined:
			fmt.Fprintf(env.stdout, "device %s quarantined: %s\n", d.ID, shown(d.QuarantineReason))
		default:
			fmt.Fprintf(env.stdout, "device %s released\n", d.ID)
		}
		return nil
	}
}

// cmdDevicesClearFailed clears a device's Failed marks (POST /v1/devices/{id}/clear-failed,
// audited by the server as device.clear_failed), so that a version that failed on it is
// offered again, e.g. after the cause was fixed on the device.
func cmdDevicesClearFailed(ctx context.Context, env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("devices clear-failed", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var c opClient
	c.register(fs, env)
	kind := fs.String("kind", "", "slot kind: model or runtime (default: both)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: edgeward devices clear-failed ID [--kind model|runtime]")
	}
	kinds := []artifact.Kind{artifact.KindModel, artifact.KindRuntime}
	if *kind != "" {
		k, err := artifact.ParseKind(*kind)
		if err != nil || (k != artifact.KindModel && k != artifact.KindRuntime) {
			return fmt.Errorf("--kind %q: want model or runtime", *kind)
		}
		kinds = []artifact.Kind{k}
	}
	api, err := c.api()
	if err != nil {
		return err
	}
	var d operatorapi.DeviceView
	var raw []byte
	for _, k := range kinds {
		if d, raw, err = api.ClearFailed(ctx, pos[0], k); err != nil {
			return fmt.Errorf("clear failed %s of %s: %w", k, pos[0], err)
		}
	}
	if c.show(raw) {
		return nil
	}
	for _, k := range kinds {
		// The store keeps a cleared version as Retry until the device's next result for it.
		if sl := d.Slots[k]; sl.Retry != "" {
			fmt.Fprintf(env.stdout, "device %s: cleared the failure of %s %s %s (running %s): a rollout that selects the device may offer it again\n", d.ID, k, sl.Name, sl.Retry, orDash(sl.Version))
		} else {
			fmt.Fprintf(env.stdout, "device %s: %s %s, no failed version to clear\n", d.ID, k, slotText(sl))
		}
	}
	return nil
}

func cmdDevicesLabel(ctx context.Context, env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("devices label", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var c opClient
	c.register(fs, env)
	replace := fs.Bool("replace", false, "replace all labels instead of merging (key= removes a key when merging)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) < 2 {
		return errors.New("usage: edgeward devices label ID key=value… [--replace]")
	}
	api, err := c.api()
	if err != nil {
		return err
	}
	labels := map[string]string{}
	if !*replace {
		d, _, err := api.Device(ctx, pos[0], 0)
		if err != nil {
			return err
		}
		for k, v := range d.Device.Labels {
			labels[k] = v
		}
	}
	for _, kv := range pos[1:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("%q: want key=value", kv)
		}
		if v == "" && !*replace {
			delete(labels, k)
			continue
		}
		labels[k] = v
	}
	d, raw, err := api.SetLabels(ctx, pos[0], labels)
	if err != nil {
		return err
	}
	if c.show(raw) {
		return nil
	}
	fmt.Fprintf(env.stdout, "device %s labels: %s\n", d.ID, labelText(d.Labels))
	return nil
}

// ---- tokens through the server ----

func cmdTokenList(ctx context.Context, env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("token list", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var c opClient
	c.register(fs, env)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	api, err := c.api()
	if err != nil {
		return err
	}
	tokens, raw, err := api.Tokens(ctx)
	if err != nil {
		return err
	}
	if c.show(raw) {
		return nil
	}
	now := time.Now()
	tw := newTab(env.stdout)
	fmt.Fprintln(tw, "ID\tOPERATOR\tROLE\tCREATED\tEXPIRES\tSTATE")
	for _, t := range tokens {
		state := "valid"
		switch {
		case !t.RevokedAt.IsZero():
			state = "revoked " + ago(t.RevokedAt, now)
		case !now.Before(t.ExpiresAt):
			state = "expired"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Operator, t.Role, t.CreatedAt.Local().Format(time.DateTime), t.ExpiresAt.Local().Format(time.DateTime), state)
	}
	return tw.Flush()
}

func cmdTokenRevoke(ctx context.Context, env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("token revoke", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var c opClient
	c.register(fs, env)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: edgeward token revoke ID --server URL")
	}
	api, err := c.api()
	if err != nil {
		return err
	}
	if err := api.RevokeToken(ctx, pos[0]); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "token %s revoked\n", pos[0])
	return nil
}

// createTokenRemote issues a token through the server (security-admin).
func createTokenRemote(ctx context.Context, c *opClient, name string, role fleet.Role, ttl time.Duration) (operatorapi.TokenCreated, error) {
	api, err := c.api()
	if err != nil {
		return operatorapi.TokenCreated{}, err
	}
	return api.CreateToken(ctx, name, role, ttl)
}

// auditExportRemote streams GET /v1/audit/export into w.
func auditExportRemote(ctx context.Context, env *cliEnv, server, token string, cosigned bool, w io.Writer) error {
	api, err := (&opClient{server: server, token: token, env: env}).api()
	if err != nil {
		return err
	}
	if cosigned {
		return api.AuditExportCosigned(ctx, w)
	}
	return api.AuditExport(ctx, w)
}

// operatorHTTP is the client for a server's operator API: it trusts the PEM
// certificates in $EDGEWARD_SERVER_CA (an https server with its own certificate, e.g.
// DIR/tls/server.pem of 'edgeward server --tls-listen'), else the system roots, and
// presents the operator client certificate in $EDGEWARD_CLIENT_CERT (with its key in
// $EDGEWARD_CLIENT_KEY; 'edgeward token create --cert'). It follows no redirect to
// plain HTTP elsewhere.
func operatorHTTP(env *cliEnv) (*http.Client, error) {
	ca, certFile, keyFile := "", "", ""
	if env != nil {
		ca, certFile, keyFile = env.getenv("EDGEWARD_SERVER_CA"), env.getenv("EDGEWARD_CLIENT_CERT"), env.getenv("EDGEWARD_CLIENT_KEY")
	}
	// A clone of the default transport keeps its dial and TLS handshake timeouts, its
	// proxy and its ExpectContinueTimeout (a publish asks before sending its body).
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if ca == "" && certFile == "" {
		return &http.Client{Transport: tr, CheckRedirect: operatorapi.RefuseInsecureRedirects}, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if ca != "" {
		pemBytes, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("EDGEWARD_SERVER_CA: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pemBytes) {
			return nil, fmt.Errorf("EDGEWARD_SERVER_CA %s: no PEM certificates", ca)
		}
	}
	if certFile != "" {
		if keyFile == "" {
			return nil, errors.New("EDGEWARD_CLIENT_CERT needs EDGEWARD_CLIENT_KEY")
		}
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("operator certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	tr.TLSClientConfig = cfg
	return &http.Client{Transport: tr, CheckRedirect: operatorapi.RefuseInsecureRedirects}, nil
}

// probeFigures says what the probes of a rollout's committed installs measured on
// average, "not measured" where no report carried a figure.
func probeFigures(k fleet.RolloutKPI) string {
	fig := func(name string, v float64, format string) string {
		if v == 0 {
			return name + " not measured"
		}
		return name + " " + fmt.Sprintf(format, v)
	}
	return fig("mean accuracy", k.MeanAccuracy, "%.3f") + ", " + fig("mean p99", k.MeanP99Ms, "%.2f ms") + ", " +
		fig("mean peak RSS", k.MeanPeakRSSMB, "%.1f MB")
}

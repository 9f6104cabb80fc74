package e2e

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/agent"
	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/nginxtest"
	"github.com/edgeward/edgeward/internal/pgtest"
	"github.com/edgeward/edgeward/lab"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/runtime/modelgen"
	"github.com/edgeward/edgeward/updater"
)

// TestReplicasBehindNginx (issue 12): three `edgeward server` replicas on one
// PostgreSQL database and one repository directory, behind Debian's nginx that
// round-robins devices and operators over them. Five swtpm devices enroll and check in
// through nginx; an operator publishes a model and drives a two-wave rollout (the second
// wave needs approval) through nginx with the CLI. Mid-wave the replica holding the
// leader lease is SIGKILLed (another takes the lease over and the rollout goes on);
// in the second wave another replica is restarted (SIGTERM, start) and the killed one
// comes back. Afterwards: every device committed once, each device's reports are
// stored exactly as many times as its agent made them (none lost, none doubled by a
// retry), one device row per device, and the audit log, exported through nginx,
// verifies and holds a record for every state change in the fleet tables (enrollments,
// verdicts, reports, rollout events, tokens).
func TestReplicasBehindNginx(t *testing.T) {
	start := time.Now()
	rl := startReplicas(t, 3, lab.ServerConfig{Args: []string{"--sign-delegated", "--checkpoint-interval", "2s", "--log-format", "text"}})
	lb, repo, sqldb, replicas := rl.lab, rl.repo, rl.sqldb, rl.replicas
	ctx := context.Background()
	anyReplica := replicas[0] // opens the shared database; need not be running

	// nginx: round robin, passive failover. The device API may pass even a request it
	// already sent on to the next replica (non_idempotent): a check-in is idempotent (a
	// report is stored once per report ID, and the quote's nonce is single use, so a
	// check-in that committed at a replica that died before answering is refused at the
	// next one and the device sends its reports again, deduplicated). Operator POSTs
	// (token creation, rollout creation) are not retried once sent: nginx's default.
	// Two groups of the same replicas, as docs/OPERATORS.md says: the device API's
	// answers never mark a replica failed (a 503 of a database away would have marked
	// them all, and nginx answered 502 to everything).
	var upstream, devices strings.Builder
	for _, r := range replicas {
		fmt.Fprintf(&upstream, "    server %s max_fails=1 fail_timeout=2s;\n", r.Addr)
		fmt.Fprintf(&devices, "    server %s max_fails=0;\n", r.Addr)
	}
	ng := nginxtest.Start(t, func(port int) string {
		return fmt.Sprintf(`upstream edgeward {
%s    keepalive 16;
}
upstream edgeward_devices {
%s    keepalive 16;
}
server {
    listen 127.0.0.1:%d;
    client_max_body_size 64m;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_connect_timeout 2s;
    location /v1/devices/ {
        proxy_pass http://edgeward_devices;
        proxy_next_upstream error timeout http_502 http_503 non_idempotent;
        proxy_read_timeout 30s;
    }
    location /v1/attest/ {
        proxy_pass http://edgeward_devices;
        proxy_next_upstream error timeout http_502 http_503 non_idempotent;
        proxy_read_timeout 30s;
    }
    location / {
        proxy_pass http://edgeward;
        proxy_next_upstream error timeout;
    }
}`, upstream.String(), devices.String(), port)
	})
	front := &lab.Server{URL: ng.URL} // what devices and operators are given

	// Operators: tokens made on the repository's directory (audited in the database).
	cliEnv := rl.cliEnv
	token := func(name, role string) string {
		t.Helper()
		out, err := lb.Run(ctx, cliEnv, bins.Edgeward, "token", "create", "--name", name, "--role", role)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		return lines[len(lines)-1]
	}
	rita := []string{"EDGEWARD_SERVER=" + ng.URL, "EDGEWARD_TOKEN=" + token("rita", "release-manager")}
	audrey := []string{"EDGEWARD_SERVER=" + ng.URL, "EDGEWARD_TOKEN=" + token("audrey", "auditor")}
	cli := func(env []string, args ...string) string {
		t.Helper()
		out, err := lb.Run(ctx, env, bins.Edgeward, args...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}

	const n = 5
	var devs []*lab.Device
	for i := range n {
		d, err := lb.NewDevice(ctx, fmt.Sprintf("device-%d", i+1), nil, front, repo.RootJSON())
		if err != nil {
			t.Fatal(err)
		}
		devs = append(devs, d)
	}
	errs := make(chan error, n)
	for _, d := range devs {
		go func() { errs <- d.StartAgent(ctx) }()
	}
	for range devs {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if err := anyReplica.WaitTrusted(ctx, wait, devs, start); err != nil {
		t.Fatal(err)
	}

	// The release manager publishes through nginx (a replica signs with the delegated
	// key under the publish lock) and creates a two-wave rollout.
	const rollout, version = "vib-1.0.0", "1.0.0"
	probe, err := modelgen.ProbeSet(version)
	if err != nil {
		t.Fatal(err)
	}
	model, err := modelgen.Model(version)
	if err != nil {
		t.Fatal(err)
	}
	probeFile, modelFile := filepath.Join(lb.Dir, "probe.json"), filepath.Join(lb.Dir, "model.onnx")
	// Many measured runs make a trial last a few seconds: the replicas are killed and
	// restarted while devices of the wave are in theirs.
	var ps map[string]any
	if err := json.Unmarshal(probe, &ps); err != nil {
		t.Fatal(err)
	}
	ps["runs"] = 50000
	if probe, err = json.Marshal(ps); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(probeFile, probe, 0o644)
	os.WriteFile(modelFile, model, 0o644)
	cli(rita, "publish", "--kind", "probe", "--name", lab.Model, "--version", version, probeFile)
	cli(rita, "publish", "--kind", "model", "--name", lab.Model, "--version", version, "--gates", "min_accuracy=0.85", modelFile)
	ordered := lab.ByBucket(rollout, devs)
	wave1, wave2 := ordered[:2], ordered[2:]
	cli(rita, "rollout", "create", "--id", rollout, "--name", lab.Model, "--version", version,
		"--waves", fmt.Sprintf("%g,100:approve", lab.PercentFor(rollout, ordered, len(wave1))))

	// Mid-wave: once a device of the first wave is in its trial, SIGKILL the leader.
	inTrial(t, wave1)
	before := leaderLease(t, sqldb)
	killed := replicaOf(t, replicas, before)
	committed := countCommitted(t, anyReplica, wave1)
	replicas[killed].Kill()
	killedAt := time.Now()
	t.Logf("SIGKILLed replica-%d, the leader (token %d), with %d of %d first-wave devices committed", killed+1, before.Token, committed, len(wave1))
	var after fleet.Lease
	err = lab.WaitFor(ctx, wait, "another replica to take the leader lease", func(ctx context.Context) (bool, string, error) {
		after = leaderLease(t, sqldb)
		return after.Holder != before.Holder && after.Token > before.Token, after.Holder, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	takenOver := replicaOf(t, replicas, after)
	t.Logf("replica-%d took the leader lease over %.1f s after the kill (token %d)", takenOver+1, time.Since(killedAt).Seconds(), after.Token)
	if takenOver == killed {
		t.Fatalf("the killed replica holds the lease again")
	}
	if err := anyReplica.WaitCommitted(ctx, 2*wait, wave1, artifact.KindModel, version); err != nil {
		t.Fatal(err)
	}

	// The second wave, approved through nginx (one replica down), and another replica
	// restarted while it runs; then the killed one comes back.
	cli(rita, "rollout", "approve", rollout)
	inTrial(t, wave2)
	restarted := takenOver // the leader again: a clean stop hands the lease on at once
	lead := leaderLease(t, sqldb)
	replicas[restarted].Stop()
	t.Logf("stopped replica-%d (SIGTERM) with %d of %d second-wave devices committed", restarted+1, countCommitted(t, anyReplica, wave2), len(wave2))
	err = lab.WaitFor(ctx, wait, "the leader lease to move on from the stopped replica", func(ctx context.Context) (bool, string, error) {
		l := leaderLease(t, sqldb)
		return l.Token > lead.Token && l.Holder != lead.Holder, l.Holder, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := replicas[restarted].Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := replicas[killed].Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := anyReplica.WaitCommitted(ctx, 2*wait, devs, artifact.KindModel, version); err != nil {
		t.Fatal(err)
	}
	err = lab.WaitFor(ctx, wait, "rollout status (through nginx) to say completed", func(ctx context.Context) (bool, string, error) {
		out, err := lb.Run(ctx, rita, bins.Edgeward, "rollout", "status", rollout, "--json")
		if err != nil {
			return false, "", err
		}
		var st fleet.RolloutStatus
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return false, "", err
		}
		return strings.HasPrefix(st.Progress, "completed"), st.Progress, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		if err := d.StopAgent(ctx); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("rollout completed %.0f s after the start", time.Since(start).Seconds())

	// Every report the agents made is stored once; every device once.
	ids := map[string]string{} // device ID → name
	for _, d := range devs {
		ids[d.ID] = d.Name
	}
	rows := queryCounts(t, sqldb, `SELECT id, 1 FROM devices`)
	if len(rows) != n {
		t.Errorf("%d device rows; want %d: %v", len(rows), n, rows)
	}
	for id := range rows {
		if ids[id] == "" {
			t.Errorf("device row %s is none of the devices started", id)
		}
	}
	stored := queryCounts(t, sqldb, `SELECT device_id, count(*) FROM reports WHERE outcome <> 'attestation_untrusted' GROUP BY device_id`)
	seen := queryCounts(t, sqldb, `SELECT device_id, count(*) FROM device_reports_seen GROUP BY device_id`)
	commits := queryCounts(t, sqldb, `SELECT device_id, count(*) FROM reports WHERE rollout_id = '`+rollout+`' AND outcome = 'committed' GROUP BY device_id`)
	total := 0
	for _, d := range devs {
		made := agentReports(t, d)
		pending := outboxPending(t, d)
		total += made
		if want := made - pending; stored[d.ID] != want || seen[d.ID] != want {
			t.Errorf("%s made %d reports, %d still in its outbox; the server stored %d and marked %d seen; want %d",
				d.Name, made, pending, stored[d.ID], seen[d.ID], want)
		}
		if commits[d.ID] != 1 {
			t.Errorf("%s: %d committed reports for %s; want 1", d.Name, commits[d.ID], rollout)
		}
	}

	// The audit log, exported through nginx, verifies, and holds a record for every
	// state change in the fleet tables.
	dir := t.TempDir()
	export, pub := filepath.Join(dir, "audit.jsonl"), filepath.Join(dir, "audit.vkey")
	cli(audrey, "audit", "export", "-o", export)
	os.WriteFile(pub, []byte(cli(cliEnv, "audit", "pubkey")), 0o644)
	if out := cli(nil, "audit", "verify", export, "--key", pub, "--state", filepath.Join(dir, "last-seen")); !strings.Contains(out, "ok: ") {
		t.Fatalf("audit verify: %s", out)
	}
	recs := readExport(t, export)
	auditCount := func(kind string) map[string]int {
		m := map[string]int{}
		for _, r := range recs {
			if r.Kind == kind {
				m[r.Subject]++
			}
		}
		return m
	}
	same := func(what string, table, log map[string]int) {
		t.Helper()
		for k, v := range table {
			if log[k] != v {
				t.Errorf("%s %s: %d in the fleet tables, %d audit records", what, k, v, log[k])
			}
		}
		for k, v := range log {
			if _, ok := table[k]; !ok {
				t.Errorf("%s %s: %d audit records, none in the fleet tables", what, k, v)
			}
		}
	}
	same("device (enrollment)", rows, auditCount("device.enroll"))
	same("verdicts of device", queryCounts(t, sqldb, `SELECT device_id, count(*) FROM verdicts GROUP BY device_id`), auditCount("attestation.verdict"))
	same("reports of device", stored, auditCount("install.report"))
	same("quarantines of device", queryCounts(t, sqldb, `SELECT id, 1 FROM devices WHERE quarantined <> 0`), auditCount("device.quarantine"))
	events := queryCounts(t, sqldb, `SELECT rollout_id || ' ' || type || ' ' || wave, count(*) FROM rollout_events GROUP BY 1`)
	logged := map[string]int{}
	for _, r := range recs {
		if kind, ok := strings.CutPrefix(r.Kind, "rollout."); ok && kind != "create" { // create: a policy file, not a table row
			var e policy.Event
			if err := json.Unmarshal(r.Data, &e); err != nil {
				t.Fatalf("audit record %d: %v", r.Seq, err)
			}
			logged[fmt.Sprintf("%s %s %d", r.Subject, kind, e.Wave)]++
		}
	}
	same("rollout event", events, logged)
	same("token", queryCounts(t, sqldb, `SELECT id, 1 FROM tokens`), auditCount("token.create"))
	reportIDs := map[string]int{}
	for _, r := range recs {
		if r.Kind == "install.report" {
			var rep struct{ ID string }
			json.Unmarshal(r.Data, &rep)
			reportIDs[r.Subject+" "+rep.ID]++
		}
	}
	same("report ID", queryCounts(t, sqldb, `SELECT device_id || ' ' || id, count(*) FROM device_reports_seen GROUP BY 1`), reportIDs)
	if !slices.ContainsFunc(recs, func(r auditRecord) bool {
		return r.Kind == "rollout.create" && r.Subject == rollout && strings.Contains(r.Actor, "operator:rita@")
	}) {
		t.Errorf("no audit record of rita creating rollout %s", rollout)
	}
	for _, want := range []string{"models/" + lab.Model + "/" + version + ".onnx", "probes/" + lab.Model + "/" + version + ".json"} {
		if !slices.ContainsFunc(recs, func(r auditRecord) bool { return r.Subject == want && strings.Contains(r.Actor, "operator:rita@") }) {
			t.Errorf("no audit record of rita publishing %s", want)
		}
	}

	// nginx spread the traffic over the three replicas and passed requests on when one
	// was down.
	entries, err := ng.Entries()
	if err != nil {
		t.Fatal(err)
	}
	per, passed, failed := map[string]int{}, 0, 0
	for _, e := range entries {
		if len(e.Upstreams) > 0 {
			per[e.Upstreams[len(e.Upstreams)-1]]++
		}
		if len(e.Upstreams) > 1 {
			passed++
			t.Logf("passed on: %s %s %d, upstreams %v answered %v", e.Method, e.Path, e.Status, e.Upstreams, e.UpstreamStatus)
		}
		if e.Status >= 500 {
			failed++
		}
	}
	if len(per) != 3 {
		t.Errorf("requests answered by %v; want all three replicas", per)
	}
	if passed == 0 {
		t.Error("no request was passed on to another replica, though one was killed and one stopped")
	}
	t.Logf("%d requests through nginx (%v by replica), %d passed on to another replica, %d answered 5xx; %d reports from %d devices, %d audit records; %.0f s in all",
		len(entries), per, passed, failed, total, n, len(recs), time.Since(start).Seconds())
}

// replicaLab is `edgeward server` replicas on one PostgreSQL database (a cluster of
// this test's own, internal/pgtest) and one repository directory.
type replicaLab struct {
	lab  *lab.Lab
	repo *lab.Repo
	// db is the database's URL (the replicas' --db), sqldb a connection to it.
	db       string
	sqldb    *sql.DB
	replicas []*lab.Server
	// cliEnv lets the CLI work on the repository and the database directly (tokens,
	// audit pubkey), as an operator on the servers' machine would.
	cliEnv []string
}

const replicaPassphrase = "e2e-passphrase"

// startReplicas starts n replicas (named replica-1 …) together on a fresh repository
// and database, each with cfg (its Repo, DB, Name and Env are set here): one creates
// the attestation CA (and with cfg.TLS the server certificate and the device CA), the
// others read it, so a device enrolled at one is known at the others. Everything is
// stopped when t ends.
func startReplicas(t *testing.T, n int, cfg lab.ServerConfig) *replicaLab {
	t.Helper()
	need(t)
	pg := pgtest.New()
	t.Cleanup(func() {
		if err := pg.Stop(); err != nil {
			t.Errorf("PostgreSQL: %v", err)
		}
	})
	rl := &replicaLab{db: pg.Database(t)}
	ctx := context.Background()
	var err error
	if rl.lab, err = lab.New(t.TempDir(), bins); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeLab(t, rl.lab) })
	if rl.repo, err = lab.InitRepoOn(ctx, filepath.Join(rl.lab.Dir, "repo"), rl.db, replicaPassphrase, attestationPolicy); err != nil {
		t.Fatal(err)
	}
	if rl.sqldb, err = sql.Open("pgx", rl.db); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rl.sqldb.Close() })
	rl.cliEnv = []string{"EDGEWARD_REPO=" + rl.repo.Dir, "EDGEWARD_DB=" + rl.db, "EDGEWARD_PASSPHRASE=" + replicaPassphrase}
	rl.replicas = make([]*lab.Server, n)
	startErrs := make(chan error, n)
	for i := range rl.replicas {
		c := cfg
		c.Repo, c.DB, c.Name = rl.repo.Dir, rl.db, fmt.Sprintf("replica-%d", i+1)
		c.Args = slices.Clone(cfg.Args)
		c.Env = append(slices.Clone(cfg.Env), "EDGEWARD_PASSPHRASE="+replicaPassphrase)
		go func() {
			var err error
			rl.replicas[i], err = rl.lab.StartServer(ctx, c)
			if err != nil {
				err = fmt.Errorf("%s: %w", c.Name, err)
			}
			startErrs <- err
		}()
	}
	for range rl.replicas {
		if err := <-startErrs; err != nil {
			t.Fatal(err)
		}
	}
	return rl
}

// closeLab stops the lab's processes and prints their logs' tails when t failed.
func closeLab(t *testing.T, lb *lab.Lab) {
	lb.Close()
	if t.Failed() {
		entries, _ := os.ReadDir(filepath.Join(lb.Dir, "logs"))
		for _, e := range entries {
			t.Logf("--- %s (tail)\n%s", e.Name(), lab.Tail(filepath.Join(lb.Dir, "logs", e.Name()), 25))
		}
	}
}

// inTrial waits until one of devs has begun a model trial.
func inTrial(t *testing.T, devs []*lab.Device) {
	t.Helper()
	err := lab.WaitFor(context.Background(), wait, lab.Names(devs)+" to begin a trial", func(context.Context) (bool, string, error) {
		for _, d := range devs {
			b, _ := os.ReadFile(d.Agent.LogPath)
			if strings.Contains(string(b), "kind=model event=begin-trial") {
				return true, "", nil
			}
		}
		return false, "", nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// leaderLease reads the leader lease from the database.
func leaderLease(t *testing.T, db *sql.DB) fleet.Lease {
	t.Helper()
	l := fleet.Lease{Name: "leader"}
	var exp int64
	if err := db.QueryRow(`SELECT holder, token, expires_at FROM leases WHERE name = 'leader'`).Scan(&l.Holder, &l.Token, &exp); err != nil {
		t.Fatalf("leader lease: %v", err)
	}
	l.Expires = time.Unix(0, exp)
	return l
}

// replicaOf is the index of the replica holding l: a holder is named host:pid:suffix.
func replicaOf(t *testing.T, replicas []*lab.Server, l fleet.Lease) int {
	t.Helper()
	parts := strings.Split(l.Holder, ":")
	if len(parts) == 3 {
		pid, _ := strconv.Atoi(parts[1])
		for i, r := range replicas {
			if r.Proc != nil && !r.Proc.Exited() && r.Proc.Pid() == pid {
				return i
			}
		}
	}
	t.Fatalf("lease holder %q is none of the running replicas", l.Holder)
	return -1
}

// countCommitted is how many of devs the fleet sees running the rollout's model.
func countCommitted(t *testing.T, s *lab.Server, devs []*lab.Device) int {
	t.Helper()
	fds, err := s.Devices(context.Background(), devs)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, d := range devs {
		if fds[d.Name].Slots[artifact.KindModel].Version != "" {
			n++
		}
	}
	return n
}

// queryCounts runs a query of (key, count) rows into a map.
func queryCounts(t *testing.T, db *sql.DB, q string) map[string]int {
	t.Helper()
	rows, err := db.Query(q)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer rows.Close()
	m := map[string]int{}
	for rows.Next() {
		var k string
		var v int
		if err := rows.Scan(&k, &v); err != nil {
			t.Fatal(err)
		}
		m[k] = v
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return m
}

var installReportRE = regexp.MustCompile(`msg="install report"`)

// agentReports counts the install reports the device's agent made (its log says each).
func agentReports(t *testing.T, d *lab.Device) int {
	t.Helper()
	b, err := os.ReadFile(d.Agent.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	return len(installReportRE.FindAll(b, -1))
}

// outboxPending is how many reports wait in the stopped agent's outbox.
func outboxPending(t *testing.T, d *lab.Device) int {
	t.Helper()
	o, err := updater.OpenOutbox(context.Background(), agent.StateDir(d.StateDir).Outbox())
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	n, err := o.Len(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

type auditRecord struct {
	Type    string          `json:"type"`
	Seq     int64           `json:"seq"`
	Actor   string          `json:"actor"`
	Kind    string          `json:"kind"`
	Subject string          `json:"subject"`
	Data    json.RawMessage `json:"data"`
}

// readExport reads the records of an audit export.
func readExport(t *testing.T, path string) []auditRecord {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []auditRecord
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var r auditRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if r.Type == "record" {
			out = append(out, r)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

package reposerver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/durable"
	"github.com/edgeward/edgeward/internal/testport"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/audit"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repository"
)

// TestRunComposesServer starts the whole server from a zero-valued Config (but Dir and
// a free port) and checks what Run owns: the starter policy, the attestation CA, the
// server's TLS certificate, and the repository recording into the server's audit log.
func TestRunComposesServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole server with an embedded step-ca")
	}
	ctx, cancel := context.WithCancel(context.Background())
	dir := t.TempDir()
	if _, err := repository.Init(ctx, repository.Config{Dir: dir, KDF: repository.KDFParams{N: 1 << 10}, Recorder: AuditRecorder{Dir: dir}},
		repository.InitOptions{Passphrase: []byte(testPass)}); err != nil {
		t.Fatal(err)
	}
	keys := &repository.KeyRing{Passphrase: func() ([]byte, error) { return []byte(testPass), nil }}
	ready := make(chan [2]net.Addr, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{Dir: dir, Listen: "127.0.0.1:0", TLSListen: "127.0.0.1:0", Signing: keys,
			Ready: func(h, t net.Addr) { ready <- [2]net.Addr{h, t} }})
	}()
	var addrs [2]net.Addr
	select {
	case addrs = <-ready:
	case err := <-done:
		t.Fatalf("Run = %v before serving", err)
	case <-time.After(60 * time.Second):
		t.Fatal("Run did not start serving in 60 s")
	}
	defer func() {
		cancel()
		if err := <-done; err != nil && err != context.Canceled {
			t.Errorf("Run after cancel = %v", err)
		}
	}()
	if addrs[1] == nil {
		t.Error("Ready got no TLS address although TLSListen was set")
	}
	base := "http://" + addrs[0].String()
	if resp, err := http.Get(base + "/healthz"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /healthz = %v, %v", resp, err)
	}

	if b, err := os.ReadFile(filepath.Join(dir, "policy", "fleet.yaml")); err != nil || string(b) != starterPolicy {
		t.Errorf("starter policy = %q, %v", b, err)
	}
	for _, f := range []struct {
		path string
		mode os.FileMode
	}{{"attest/ca.key", 0o600}, {"attest/ca.pem", 0o644}, {"tls/server.key", 0o600}, {"tls/server.pem", 0o644}} {
		fi, err := os.Stat(filepath.Join(dir, f.path))
		if err != nil || fi.Mode().Perm() != f.mode {
			t.Errorf("%s: %v (mode %v); want mode %o", f.path, err, fi.Mode().Perm(), f.mode)
		}
	}

	// A publish through the operator API is recorded in the server's audit log, as the
	// operator who asked.
	store, err := fleet.Open(ctx, DBPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	tok, _, err := store.CreateToken(ctx, "rm", fleet.RoleReleaseManager, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// With a TLS listener the operator API is not served over plain HTTP; over TLS it is.
	publish := func(hc *http.Client, base string) (*http.Response, error) {
		req, _ := http.NewRequest("POST", base+"/v1/publish?kind=model&name=iris&version=1.0.0&ext=.onnx", strings.NewReader("model"))
		req.Header.Set("Authorization", "Bearer "+tok)
		return hc.Do(req)
	}
	if resp, err := publish(http.DefaultClient, base); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("POST /v1/publish over plain HTTP = %v, %v; want 403", resp, err)
	}
	pemBytes, err := os.ReadFile(filepath.Join(dir, "tls", "server.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pemBytes)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	resp, err := publish(hc, "https://"+addrs[1].String())
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /v1/publish over TLS = %v, %v", resp, err)
	}
	repo, err := repository.Open(repository.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	l, db, err := OpenAudit(ctx, repo)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	recs, err := l.Records(ctx, audit.Query{Kind: "repo.publish"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range recs {
		got = append(got, fmt.Sprintf("%s %s", r.Actor, r.Subject))
	}
	if len(got) != 1 || !strings.HasPrefix(got[0], "operator:rm@") || !strings.HasSuffix(got[0], " models/iris/1.0.0.onnx") {
		t.Errorf("repo.publish records = %q; want one by operator:rm", got)
	}
}

// TestRunRemovesStaleStagedRollouts: a rollout creation that crashed between staging
// its file and renaming it leaves a hidden staged file in the policy directory. The
// server removes it at start, after an audit record; a staged file younger than
// policy.StaleStagedAge (a replica creating a rollout right now) is left alone.
func TestRunRemovesStaleStagedRollouts(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := repository.Init(ctx, repository.Config{Dir: dir, KDF: repository.KDFParams{N: 1 << 10}, Recorder: AuditRecorder{Dir: dir}},
		repository.InitOptions{Passphrase: []byte(testPass)}); err != nil {
		t.Fatal(err)
	}
	policyDir := filepath.Join(dir, "policy")
	if err := ensurePolicyDir(policyDir); err != nil {
		t.Fatal(err)
	}
	stage := func(id string, age time.Duration) string {
		t.Helper()
		at := time.Now().Add(-age)
		st, err := policy.StageRollout(policyDir, policy.RolloutSpec{ID: id, Target: policy.TargetSpec{Kind: artifact.KindModel, Name: "vib", Version: "1.0.0"}}, at)
		if err != nil {
			t.Fatal(err)
		}
		staged := filepath.Join(policyDir, policy.StagedPrefix+filepath.Base(st.Path))
		if err := os.Chtimes(staged, at, at); err != nil {
			t.Fatal(err)
		}
		return staged
	}
	crashed := stage("crashed", policy.StaleStagedAge+time.Minute)
	inFlight := stage("in-flight", 5*time.Second)

	runUntilServing(t, dir)
	if _, err := os.Stat(crashed); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the crash's staged file after the server's start: %v; want it removed", err)
	}
	if _, err := os.Stat(inFlight); err != nil {
		t.Errorf("the in-flight staged file after the server's start: %v; want it kept", err)
	}
	repo, err := repository.Open(repository.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	l, db, err := OpenAudit(context.Background(), repo)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	recs, err := l.Records(context.Background(), audit.Query{Kind: "policy.staged.removed"})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].Subject != filepath.Base(crashed) {
		t.Errorf("policy.staged.removed records = %+v; want one for %s", recs, filepath.Base(crashed))
	}
}

func TestRunNeedsDir(t *testing.T) {
	if err := Run(context.Background(), Config{}); err == nil {
		t.Error("Run(Config{}) = nil; want an error naming the missing directory")
	}
}

// The server as the repository's recorder fails closed: when its audit log cannot take
// the record (here: its checkpoint key is gone), the publish fails and nothing is served.
func TestServerRecorderFailsClosed(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := repository.Init(ctx, repository.Config{Dir: dir, KDF: repository.KDFParams{N: 1 << 10}},
		repository.InitOptions{Passphrase: []byte(testPass)}); err != nil {
		t.Fatal(err)
	}
	rec := &lateRecorder{}
	repo, err := repository.Open(repository.Config{Dir: dir, Recorder: rec})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(ServerConfig{Repo: repo})
	if err != nil {
		t.Fatal(err)
	}
	rec.s = srv
	keys, _ := filepath.Glob(filepath.Join(repo.OnlineKeyDir(), "audit-*.key"))
	for _, k := range keys {
		os.Remove(k)
	}
	before, _ := os.ReadFile(filepath.Join(repo.MetadataDir(), "timestamp.json"))
	_, err = repo.Publish(ctx, repository.PublishRequest{Meta: artifact.Meta{Kind: artifact.KindModel, Name: "iris", Version: "1.0.0"}, Ext: ".onnx", Content: strings.NewReader("m")},
		&repository.KeyRing{Passphrase: func() ([]byte, error) { return []byte(testPass), nil }})
	if err == nil || !strings.Contains(err.Error(), "audit") {
		t.Fatalf("Publish with the audit log unavailable = %v; want an audit error", err)
	}
	after, _ := os.ReadFile(filepath.Join(repo.MetadataDir(), "timestamp.json"))
	if string(before) != string(after) {
		t.Error("timestamp.json changed although the publish was not recorded")
	}
}

// TestReplicasShareOneStepCA (issue 12): two servers on one PostgreSQL database and one
// repository directory start at the same moment, each with the embedded step-ca
// (--tls-listen). They create one device CA: both tell devices the same root, the
// directory holds that root, and each serves ACME from a database of its own (step-ca's
// admits one process: before, the second replica could not start it).
func TestReplicasShareOneStepCA(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two whole servers with embedded step-cas on PostgreSQL")
	}
	db := pg.Database(t)
	ctx, cancel := context.WithCancel(context.Background())
	dir := t.TempDir()
	if _, err := repository.Init(ctx, repository.Config{Dir: dir, KDF: repository.KDFParams{N: 1 << 10}, Recorder: AuditRecorder{Dir: dir, DB: db}},
		repository.InitOptions{Passphrase: []byte(testPass)}); err != nil {
		t.Fatal(err)
	}
	keys := &repository.KeyRing{Passphrase: func() ([]byte, error) { return []byte(testPass), nil }}
	freePort := func() int {
		p, err := testport.Take()
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	start := make(chan struct{})
	ready := make(chan [2]net.Addr, 2)
	done := make(chan error, 2)
	for range 2 {
		tlsListen := fmt.Sprintf("127.0.0.1:%d", freePort())
		go func() {
			<-start
			done <- Run(ctx, Config{Dir: dir, DB: db, Listen: "127.0.0.1:0", TLSListen: tlsListen, Signing: keys,
				Ready: func(h, t net.Addr) { ready <- [2]net.Addr{h, t} }})
		}()
	}
	close(start)
	var addrs [][2]net.Addr
	for len(addrs) < 2 {
		select {
		case a := <-ready:
			addrs = append(addrs, a)
		case err := <-done:
			cancel()
			t.Fatalf("a replica stopped before serving: %v", err)
		case <-time.After(120 * time.Second):
			cancel()
			t.Fatal("the replicas did not both serve within 120 s")
		}
	}
	defer func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil && err != context.Canceled {
				t.Errorf("Run after cancel = %v", err)
			}
		}
	}()
	onDisk, err := os.ReadFile(filepath.Join(dir, "stepca", "root_ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	serverPEM, err := os.ReadFile(filepath.Join(dir, "tls", "server.pem"))
	if err != nil {
		t.Fatal(err)
	}
	serverRoots := x509.NewCertPool()
	serverRoots.AppendCertsFromPEM(serverPEM)
	server := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: serverRoots}}}
	var dirs []string
	for i, a := range addrs {
		resp, err := server.Get("https://" + a[1].String() + wire.PathDeviceCA) // devices talk TLS when the server has it
		if err != nil {
			t.Fatal(err)
		}
		var ca wire.DeviceCA
		err = json.NewDecoder(resp.Body).Decode(&ca)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("replica %d: GET %s = %d, %v", i, wire.PathDeviceCA, resp.StatusCode, err)
		}
		if ca.RootPEM != string(onDisk) {
			t.Errorf("replica %d tells devices another device CA root than the directory's:\n%s\nwant\n%s", i, ca.RootPEM, onDisk)
		}
		// Its ACME directory answers, under that root.
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(onDisk)
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
		resp, err = hc.Get(ca.DirectoryURL)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("replica %d: GET its ACME directory %s = %v, %v", i, ca.DirectoryURL, resp, err)
		}
		resp.Body.Close()
		dirs = append(dirs, ca.DirectoryURL)
	}
	if dirs[0] == dirs[1] {
		t.Errorf("both replicas name the ACME directory %s; want each its own step-ca", dirs[0])
	}
	states, _ := filepath.Glob(filepath.Join(dir, "stepca", "replicas", "*", "db", "bolt.db"))
	if len(states) != 2 {
		t.Errorf("step-ca databases %v; want one per replica", states)
	}
}

// TestDecommissionedDeviceCannotEnroll: the attestation CA's Refuse, as Run composes
// it, refuses a decommissioned device's EK (attestca.ErrRefused, so 403 and a
// recorded refusal), passes an unknown or serving one, and fails, without refusing,
// when the store cannot say.
func TestDecommissionedDeviceCannotEnroll(t *testing.T) {
	ctx := context.Background()
	store, err := fleet.Open(ctx, filepath.Join(t.TempDir(), "fleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	refuse := refuseDecommissionedEK(store)
	at := time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC)
	for _, id := range []string{"dev-serving", "dev-gone"} {
		if err := store.Enroll(ctx, id, nil, at); err != nil {
			t.Fatal(err)
		}
	}
	if err := store.Decommission(ctx, "dev-gone", "stolen", at); err != nil {
		t.Fatal(err)
	}
	for id, refused := range map[string]bool{"dev-serving": false, "dev-unknown": false, "dev-gone": true} {
		err := refuse(ctx, id)
		if refused != errors.Is(err, attestca.ErrRefused) || refused != errors.Is(err, attestca.ErrRefusedForGood) || (!refused && err != nil) {
			t.Errorf("Refuse(%s) = %v; want refused %v", id, err, refused)
		}
	}
	store.Close()
	if err := refuse(ctx, "dev-gone"); err == nil || errors.Is(err, attestca.ErrRefused) {
		t.Errorf("Refuse(with the store closed) = %v; want an error that is not a refusal", err)
	}
}

// TestUnchangedPolicyIsNotRecordedAtEachStart: the policy in force at start is recorded
// once; a restart with the same policy adds no record (one at every start said nothing
// new, and on a full disk kept the server from starting: found from outside, 2 Dec); a
// restart after the policy changed records it.
func TestUnchangedPolicyIsNotRecordedAtEachStart(t *testing.T) {
	dir := t.TempDir()
	if _, err := repository.Init(context.Background(), repository.Config{Dir: dir, KDF: repository.KDFParams{N: 1 << 10}, Recorder: AuditRecorder{Dir: dir}},
		repository.InitOptions{Passphrase: []byte(testPass)}); err != nil {
		t.Fatal(err)
	}
	start := func() { t.Helper(); runUntilServing(t, dir) }
	reloads := func() []string {
		t.Helper()
		repo, err := repository.Open(repository.Config{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		l, db, err := OpenAudit(context.Background(), repo)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		recs, err := l.Records(context.Background(), audit.Query{Kind: "policy.reload"})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range recs {
			out = append(out, r.Subject)
		}
		return out
	}
	start()
	start()
	if got := reloads(); len(got) != 1 {
		t.Fatalf("policy.reload records after two starts with one policy: %v; want 1", got)
	}
	f := filepath.Join(dir, "policy", "10-more.yaml")
	if err := os.WriteFile(f, []byte("version: 1\nrollouts:\n  - id: vib-1\n    target: {kind: model, name: vib, version: 1.0.0}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	start()
	if got := reloads(); len(got) != 2 || got[0] == got[1] {
		t.Fatalf("policy.reload records after a start with another policy: %v; want a second, with its digest", got)
	}
}

// runUntilServing runs the server on the repository at dir until it serves, then stops
// it; the test fails if it does not start within 60 s or stops with an error.
func runUntilServing(t *testing.T, dir string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{Dir: dir, Listen: "127.0.0.1:0", Ready: func(net.Addr, net.Addr) { close(ready) }})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Run = %v before serving", err)
	case <-time.After(60 * time.Second):
		t.Fatal("Run did not start serving in 60 s")
	}
	cancel()
	if err := <-done; err != nil && err != context.Canceled {
		t.Fatalf("Run after cancel = %v", err)
	}
}

// TestServerRefusesAnotherDatabase: the first start names its database in the
// repository directory (DatabaseMarker); a start on another database (the sqlite file
// deleted: a new, empty one; or a mistyped --db) is refused, saying what happened and
// what to do, and writes nothing to the marker; --new-database starts on it and serves
// it from then on. Before, the server started silently on an empty database: every
// device, token and rollout state forgotten, a new audit log, a paused rollout pending
// again (found from outside, 2 Dec). A restart on the same database is unchanged.
func TestServerRefusesAnotherDatabase(t *testing.T) {
	dir := t.TempDir()
	if _, err := repository.Init(context.Background(), repository.Config{Dir: dir, KDF: repository.KDFParams{N: 1 << 10}, Recorder: AuditRecorder{Dir: dir}},
		repository.InitOptions{Passphrase: []byte(testPass)}); err != nil {
		t.Fatal(err)
	}
	runUntilServing(t, dir)
	runUntilServing(t, dir)
	marker, err := os.ReadFile(filepath.Join(dir, DatabaseMarker))
	if err != nil || len(strings.TrimSpace(string(marker))) != 32 {
		t.Fatalf("marker after the first start: %q, %v", marker, err)
	}
	run := func(db string, fresh bool) error {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		ready := make(chan struct{})
		done := make(chan error, 1)
		go func() {
			done <- Run(ctx, Config{Dir: dir, DB: db, NewDatabase: fresh, Listen: "127.0.0.1:0", Ready: func(net.Addr, net.Addr) { close(ready) }})
		}()
		select {
		case <-ready:
			cancel()
			<-done
			return nil
		case err := <-done:
			return err
		case <-time.After(60 * time.Second):
			t.Fatal("Run neither served nor failed in 60 s")
			return nil
		}
	}
	for _, name := range []string{"fleet.db", "fleet.db-wal", "fleet.db-shm"} {
		os.Remove(filepath.Join(dir, name))
	}
	err = run("", false)
	if !errors.Is(err, ErrOtherDatabase) || !strings.Contains(err.Error(), "--new-database") || !strings.Contains(strings.ToLower(err.Error()), "restore it") {
		t.Fatalf("start on a new, empty fleet.db = %v; want ErrOtherDatabase saying what to do", err)
	}
	// Nothing was made in its place, by the server or by the CLI's own opens (a
	// token, an audit export: they made a small fleet.db that then passed for one from
	// before database IDs, found from outside).
	if _, err := OpenAuditedFleet(context.Background(), dir, ""); !errors.Is(err, ErrOtherDatabase) {
		t.Errorf("the CLI's fleet open on the deleted fleet.db = %v; want ErrOtherDatabase", err)
	}
	if repo, err := repository.Open(repository.Config{Dir: dir}); err != nil {
		t.Fatal(err)
	} else if _, _, err := OpenAudit(context.Background(), repo); !errors.Is(err, ErrOtherDatabase) {
		t.Errorf("the CLI's audit open on the deleted fleet.db = %v; want ErrOtherDatabase", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "fleet.db")); !os.IsNotExist(err) {
		t.Errorf("after the refusals, fleet.db: %v; want none made", err)
	}
	if err := run(filepath.Join(t.TempDir(), "typo.db"), false); !errors.Is(err, ErrOtherDatabase) {
		t.Fatalf("start on a mistyped --db = %v; want ErrOtherDatabase", err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, DatabaseMarker)); string(after) != string(marker) {
		t.Fatalf("a refused start changed the marker: %q → %q", marker, after)
	}
	if err := run("", true); err != nil {
		t.Fatalf("start with --new-database = %v", err)
	}
	if err := run("", false); err != nil {
		t.Fatalf("restart on the new database = %v; want it served from then on", err)
	}

	// A database from before identities that holds a fleet (a backup taken before the
	// upgrade) is refused saying so, and --new-database keeps what it holds (the
	// message said it would start afresh: found in review).
	ctx := context.Background()
	store, err := fleet.Open(ctx, DBPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Enroll(ctx, "dev-1", nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	store.Close()
	raw, err := durable.OpenSQLite(ctx, DBPath(dir), durable.SQLite{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.ExecContext(ctx, `DELETE FROM server_secrets WHERE name = 'database-id'`); err != nil {
		t.Fatal(err)
	}
	raw.Close()
	if err := run("", false); !errors.Is(err, ErrOtherDatabase) || !strings.Contains(err.Error(), "from before database IDs") || !strings.Contains(err.Error(), "keeps what the database holds") {
		t.Fatalf("start on a database from before identities = %v; want it named as such", err)
	}
	if err := run("", true); err != nil {
		t.Fatalf("--new-database on it = %v", err)
	}
	store, err = fleet.Open(ctx, DBPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if _, err := store.Device(ctx, "dev-1"); err != nil {
		t.Errorf("its device after --new-database: %v; want it kept", err)
	}
}

// TestServerLeavesAnEmptyPostgresAsFound: a start whose --db names a PostgreSQL
// database other than the repository's, new and empty (a mistyped database name that
// an administrator had created, a restore target not yet restored), is refused, and the
// database is left with no table. Before, the store created and migrated its tables
// first, and only then did the identity check refuse it.
func TestServerLeavesAnEmptyPostgresAsFound(t *testing.T) {
	served, other := pg.Database(t), pg.Database(t)
	dir := t.TempDir()
	if _, err := repository.Init(context.Background(), repository.Config{Dir: dir, KDF: repository.KDFParams{N: 1 << 10}, Recorder: AuditRecorder{Dir: dir, DB: served}},
		repository.InitOptions{Passphrase: []byte(testPass)}); err != nil {
		t.Fatal(err)
	}
	run := func(db string) error {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		ready := make(chan struct{})
		done := make(chan error, 1)
		go func() {
			done <- Run(ctx, Config{Dir: dir, DB: db, Listen: "127.0.0.1:0", Ready: func(net.Addr, net.Addr) { close(ready) }})
		}()
		select {
		case <-ready:
			cancel()
			<-done
			return nil
		case err := <-done:
			return err
		case <-time.After(60 * time.Second):
			t.Fatal("Run neither served nor failed in 60 s")
			return nil
		}
	}
	if err := run(served); err != nil {
		t.Fatalf("first start: %v", err)
	}
	err := run(other)
	if !errors.Is(err, ErrOtherDatabase) || !strings.Contains(err.Error(), "no table") || !strings.Contains(err.Error(), "--new-database") {
		t.Fatalf("start on another, empty PostgreSQL database = %v; want ErrOtherDatabase naming it new", err)
	}
	if _, err := OpenAuditedFleet(context.Background(), dir, other); !errors.Is(err, ErrOtherDatabase) {
		t.Errorf("the CLI's fleet open on it = %v; want ErrOtherDatabase", err)
	}
	db, err := OpenDB(context.Background(), other)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()`).Scan(&n); err != nil || n != 0 {
		t.Errorf("tables in the refused database: %d, %v; want none made", n, err)
	}
	if err := run(served); err != nil {
		t.Fatalf("start on the served database again: %v", err)
	}
}

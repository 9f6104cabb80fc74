package reposerver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgeward/edgeward/repo-server/audit"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repository"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// A publish through the operator API to a role whose threshold the server's keys do not
// meet (models, 2 of alice's and bob's keys) is staged for the role's key holders when
// the operator asks (stage=1, as 'edgeward publish --server' does): 202 with the staged
// version, audited under the operator's name, not served until both have signed and it
// is published. Without stage=1 it is refused (409) saying so. Before, it was refused
// whatever the operator asked: a release manager had to go to the repository machine.
func TestOperatorPublishStagesForKeyHolders(t *testing.T) {
	f := newFixture(t, repository.KeyEd25519)
	ctx := context.Background()
	alice, bob := newRoleKey(t), newRoleKey(t)
	st, err := f.repo.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var old []string
	for _, dr := range st.Targets[metadata.TARGETS].Signed.Delegations.Roles {
		if dr.Name == repository.RoleModels {
			old = dr.KeyIDs
		}
	}
	stagingKeys := f.keyring()
	stagingKeys.Stage = true
	if _, err := f.repo.ChangeDelegation(ctx, repository.DelegationChange{Role: repository.RoleModels, AddKeys: []*metadata.Key{alice.Public, bob.Public}, RevokeKeys: old, Threshold: 2}, stagingKeys); err != nil {
		t.Fatal(err)
	}
	signAndPublish := func() {
		t.Helper()
		for _, k := range []*repository.Key{alice, bob} {
			if _, err := f.repo.SignStaged(ctx, repository.RoleModels, k); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := f.repo.PublishStaged(ctx, repository.RoleModels, nil); err != nil {
			t.Fatal(err)
		}
	}
	signAndPublish() // models is now 2 of 2, neither key on the server

	store, err := fleet.Open(ctx, DBLocation(f.repo.Dir(), f.db))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if err := f.srv.EnableOperatorAPI(OperatorConfig{Fleet: store, Signing: f.keyring(), MaxPublishBytes: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	rm, _, err := store.CreateToken(ctx, "rita", fleet.RoleReleaseManager, time.Hour, f.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	publish := func(query string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("POST", f.http.URL+"/v1/publish?kind=model&name=iris&version=1.0.0&ext=.onnx"+query, strings.NewReader("model one"))
		req.Header.Set("Authorization", "Bearer "+rm)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	listed := func() bool {
		t.Helper()
		st, err := f.repo.Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return st.Targets[repository.RoleModels].Signed.Targets["models/iris/1.0.0.onnx"] != nil
	}

	if code, body := publish(""); code != http.StatusConflict || !strings.Contains(body, "stage=1") {
		t.Fatalf("publish to a 2-of-2 role without stage=1 = %d %s; want 409 naming stage=1", code, body)
	}
	code, body := publish("&stage=1")
	if code != http.StatusAccepted {
		t.Fatalf("publish with stage=1 = %d %s; want 202", code, body)
	}
	var res repository.PublishResult
	if err := json.Unmarshal([]byte(body), &res); err != nil {
		t.Fatal(err)
	}
	if res.Staged == nil || len(res.Staged.Roles) != 1 || res.Staged.Roles[0].Role != repository.RoleModels || res.Staged.Roles[0].Threshold != 2 || len(res.Staged.Roles[0].SignedBy) != 0 {
		t.Fatalf("staged %+v; want models, 0 of 2 signatures", res.Staged)
	}
	if listed() {
		t.Fatal("the staged model is served before its key holders signed it")
	}
	// GET /v1/repository says what waits for signatures.
	req0, _ := http.NewRequest("GET", f.http.URL+"/v1/repository", nil)
	req0.Header.Set("Authorization", "Bearer "+rm)
	resp0, err := http.DefaultClient.Do(req0)
	if err != nil {
		t.Fatal(err)
	}
	var view struct {
		Staged []struct {
			Role       string
			Version    int64
			Signatures int
			Threshold  int
		}
	}
	err = json.NewDecoder(resp0.Body).Decode(&view)
	resp0.Body.Close()
	if err != nil || len(view.Staged) != 1 || view.Staged[0].Role != "models" || view.Staged[0].Version != res.Version || view.Staged[0].Signatures != 0 || view.Staged[0].Threshold != 2 {
		t.Errorf("GET /v1/repository staged = %+v, %v; want models v%d, 0 of 2", view.Staged, err, res.Version)
	}
	// Another publish while that change waits for its holders: 409 saying what is
	// staged (it was a 500 "publish failed").
	req, _ := http.NewRequest("POST", f.http.URL+"/v1/publish?kind=model&name=iris&version=2.0.0&ext=.onnx&stage=1", strings.NewReader("model two"))
	req.Header.Set("Authorization", "Bearer "+rm)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict || !strings.Contains(string(b), "is staged") {
		t.Errorf("a second staged publish while one is pending = %d %s; want 409 naming the staged change", resp.StatusCode, b)
	}
	l, err := f.srv.AuditLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := l.Records(ctx, audit.Query{Kind: "repo.role.stage"})
	if err != nil || len(recs) != 2 || !strings.Contains(recs[1].Actor, "rita") {
		t.Errorf("repo.role.stage records = %+v, %v; want the delegation change's and then rita's", recs, err)
	}
	// The key holders sign through the server: each fetches the staged version, signs
	// the copy on their own machine, and sends it back; the release manager publishes.
	sam, _, err := store.CreateToken(ctx, "sam", fleet.RoleSecurityAdmin, time.Hour, f.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	call := func(method, path, tok string, body []byte) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, f.http.URL+path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	signed := func(k *repository.Key) []byte {
		t.Helper()
		code, data := call("GET", "/v1/staged/models", rm, nil)
		if code != http.StatusOK {
			t.Fatalf("GET /v1/staged/models = %d %s", code, data)
		}
		c := filepath.Join(t.TempDir(), "copy.json")
		os.WriteFile(c, data, 0o644)
		if _, err := repository.SignStagedFile(nil, c, k, time.Now()); err != nil {
			t.Fatal(err)
		}
		out, _ := os.ReadFile(c)
		return out
	}
	if code, b := call("POST", "/v1/staged/models/signatures", rm, signed(alice)); code != http.StatusForbidden {
		t.Errorf("signatures sent by a release manager = %d %s; want 403 (a security admin's)", code, b)
	}
	if code, b := call("POST", "/v1/staged/models/signatures", sam, signed(alice)); code != http.StatusOK || !strings.Contains(string(b), `"signatures":1`) {
		t.Fatalf("alice's signed copy = %d %s; want 1 of 2", code, b)
	}
	if code, b := call("POST", "/v1/staged/models/publish", rm, nil); code != http.StatusConflict || listed() {
		t.Fatalf("publish with 1 of 2 signatures = %d %s; want 409, nothing served", code, b)
	}
	if code, b := call("POST", "/v1/staged/models/signatures", sam, []byte("{")); code != http.StatusBadRequest {
		t.Errorf("a copy that is not metadata = %d %s; want 400", code, b)
	}
	if code, b := call("POST", "/v1/staged/runtimes/signatures", sam, signed(bob)); code != http.StatusNotFound {
		t.Errorf("signatures for a role with nothing staged = %d %s; want 404", code, b)
	}
	if code, b := call("POST", "/v1/staged/models/signatures", sam, signed(bob)); code != http.StatusOK || !strings.Contains(string(b), `"signatures":2`) {
		t.Fatalf("bob's signed copy = %d %s; want 2 of 2", code, b)
	}
	if code, b := call("POST", "/v1/staged/models/publish", rm, nil); code != http.StatusOK {
		t.Fatalf("publish with 2 of 2 = %d %s", code, b)
	}
	if !listed() {
		t.Fatal("the model is not served once both key holders signed and it was published")
	}
	if recs, err := l.Records(ctx, audit.Query{Kind: "repo.role.sign"}); err != nil || len(recs) < 2 || !strings.Contains(recs[len(recs)-1].Actor, "sam") {
		t.Errorf("repo.role.sign records = %+v, %v; want the signatures sent through the server, by sam", recs, err)
	}
}

func newRoleKey(t *testing.T) *repository.Key {
	t.Helper()
	k, err := repository.GenerateKey(repository.RoleModels, repository.KeyEd25519, nil)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// A failed publish is answered with a status its client can act on. A lost publish
// lease (this replica stalled past it) and a database not answering are 503 (try
// again), a full disk 507; they were 500 "publish failed".
func TestPublishFailureStatus(t *testing.T) {
	for _, tc := range []struct {
		name  string
		err   error
		stage bool
		want  int
		says  string
	}{
		{"lease lost", fmt.Errorf("the repository lock was lost before the change became visible: %w", fmt.Errorf("%w: publish is held by r2", fleet.ErrLeaseLost)), false, http.StatusServiceUnavailable, "publish again"},
		{"disk full", fmt.Errorf("write blob: %w", &os.PathError{Op: "write", Path: "/repo/blobs/x", Err: syscall.ENOSPC}), false, http.StatusInsufficientStorage, "no space left"},
		{"database away", fmt.Errorf("record: %w", fleet.ErrUnavailable), false, http.StatusServiceUnavailable, "not answering"},
		{"needs signatures", fmt.Errorf("%w: models 2 of 2", repository.ErrNeedsSignatures), false, http.StatusConflict, "stage=1"},
		{"needs signatures, staging refused", fmt.Errorf("%w: this change also changes root", repository.ErrNeedsSignatures), true, http.StatusConflict, "also changes root"},
		{"staged pending", fmt.Errorf("%w: models v3 is staged", repository.ErrStagedPending), true, http.StatusConflict, "is staged"},
		{"too large", &http.MaxBytesError{Limit: 10}, false, http.StatusRequestEntityTooLarge, "larger than 10 bytes"},
		{"unexpected", errors.New("boom"), false, http.StatusInternalServerError, "publish failed: boom"},
	} {
		code, msg := publishFailure(tc.err, tc.stage, 10)
		if code != tc.want || !strings.Contains(msg, tc.says) {
			t.Errorf("%s: %d %q; want %d saying %q", tc.name, code, msg, tc.want, tc.says)
		}
	}
}

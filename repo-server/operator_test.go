package reposerver

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/repo-server/audit"
	"github.com/edgeward/edgeward/repo-server/fleet"

	"github.com/edgeward/edgeward/repository"
)

func TestOperatorAPI(t *testing.T) {
	f := newFixture(t, repository.KeyEd25519)
	ctx := context.Background()
	store, err := fleet.Open(ctx, DBLocation(f.repo.Dir(), f.db))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if err := f.srv.EnableOperatorAPI(OperatorConfig{Fleet: store, Signing: f.keyring(), MaxPublishBytes: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	token := func(name string, role fleet.Role) string {
		tok, _, err := store.CreateToken(ctx, name, role, time.Hour, f.clock.Now())
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	rm, auditor, admin := token("rita", fleet.RoleReleaseManager), token("otto", fleet.RoleAuditor), token("sam", fleet.RoleSecurityAdmin)
	revoked := token("gone", fleet.RoleReleaseManager)

	do := func(method, path, tok string, body io.Reader, hdr ...string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, f.http.URL+path, body)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	pub := "/v1/publish?kind=model&name=iris&version=1.0.0&ext=.onnx"
	meta := `{"gates":{"min_accuracy":"0.9"}}`
	// The gates are judged on the model's probe set, published first.
	if _, err := f.publish(artifact.KindProbe, "iris", "1.0.0", ".json", []byte(`{"inputs":[[1]],"labels":[0]}`), nil); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name, method, path, tok string
		body                    string
		want                    int
		contains                string
	}{
		{"no token", "POST", pub, "", "m", 401, "missing bearer token"},
		{"unknown token", "POST", pub, "ewt_nope", "m", 401, "unauthenticated"},
		{"auditor cannot publish", "POST", pub, auditor, "m", 403, "may not publish"},
		{"release manager publishes", "POST", pub, rm, "model v1", 201, `"Path":"models/iris/1.0.0.onnx"`},
		{"same bytes again", "POST", pub, rm, "model v1", 200, `"Unchanged":true`},
		{"other bytes refused", "POST", pub, rm, "model v1 evil", 409, "already published"},
		{"bad version", "POST", "/v1/publish?kind=model&name=iris&version=latest", rm, "x", 400, "semantic version"},
		{"bad kind", "POST", "/v1/publish?kind=firmware&name=iris&version=1.0.0", rm, "x", 400, "unknown kind"},
		{"bad ext", "POST", "/v1/publish?kind=model&name=iris&version=1.0.1&ext=/../x", rm, "x", 400, "ext"},
		{"ext with a newline", "POST", "/v1/publish?kind=model&name=iris&version=1.0.2&ext=.onnx%0A", rm, "x", 400, "extension"},
		{"ext with a NUL", "POST", "/v1/publish?kind=model&name=iris&version=1.0.2&ext=.on%00nx", rm, "x", 400, "extension"},
		{"ext ..", "POST", "/v1/publish?kind=model&name=iris&version=1.0.2&ext=..", rm, "x", 400, "extension"},
		{"too large", "POST", "/v1/publish?kind=model&name=big&version=1.0.0", rm, strings.Repeat("x", 2<<20), 413, "larger than"},
		{"release manager reads", "GET", "/v1/repository", rm, "", 200, `"models/iris/1.0.0.onnx"`},
		{"release manager cannot export audit", "GET", "/v1/audit/export", rm, "", 403, "may not audit.export"},
		{"security admin cannot publish", "POST", pub, admin, "m", 403, "may not publish"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, body := do(tc.method, tc.path, tc.tok, strings.NewReader(tc.body), "X-Edgeward-Meta", meta)
			if code != tc.want || !strings.Contains(body, tc.contains) {
				t.Fatalf("%s %s = %d %s; want %d containing %q", tc.method, tc.path, code, body, tc.want, tc.contains)
			}
		})
	}

	// The attack of issue 15 item 3: 63 KB of custom metadata per publish. Refused with
	// 413 naming the bound; nothing is published.
	huge := fmt.Sprintf(`{"notes":%q}`, strings.Repeat("x", 63<<10))
	if code, body := do("POST", "/v1/publish?kind=model&name=iris&version=1.0.9&ext=.onnx", rm, strings.NewReader("m"), "X-Edgeward-Meta", huge); code != http.StatusRequestEntityTooLarge || !strings.Contains(body, "max_custom_bytes") {
		t.Fatalf("publish with 63 KB of custom metadata = %d %s; want 413 naming max_custom_bytes", code, body)
	}
	if code, body := do("GET", "/v1/repository", rm, nil); code != 200 || strings.Contains(body, "1.0.9") {
		t.Fatalf("repository after the refused publish = %d %s; want no 1.0.9", code, body)
	}

	// A model naming a probe set that is not published: 400 with the reason.
	if code, body := do("POST", "/v1/publish?kind=model&name=iris&version=1.0.8&ext=.onnx", rm, strings.NewReader("m"), "X-Edgeward-Meta", `{"probe":"probes/iris/9.9.9.json"}`); code != http.StatusBadRequest || !strings.Contains(body, "probe set") {
		t.Fatalf("publish with a missing probe set = %d %s; want 400 naming the probe set", code, body)
	}
	// The same bytes with other gates: 409 saying what differs, the signed gates kept
	// (they used to be kept with a 200 "unchanged").
	if code, body := do("POST", pub, rm, strings.NewReader("model v1"), "X-Edgeward-Meta", `{"gates":{"min_accuracy":"0.99"}}`); code != http.StatusConflict ||
		!strings.Contains(body, `gates: signed {\"min_accuracy\":\"0.9\"}, now {\"min_accuracy\":\"0.99\"}`) || !strings.Contains(body, "new version") {
		t.Fatalf("same bytes with other gates = %d %s; want 409 naming the gates", code, body)
	}
	// A model with gates and no probe set for them: 400, nothing signed (every device
	// would fail its trial).
	if code, body := do("POST", "/v1/publish?kind=model&name=iris&version=1.0.7&ext=.onnx", rm, strings.NewReader("m"), "X-Edgeward-Meta", `{"gates":{"max_rss_mb":"256"}}`); code != http.StatusBadRequest || !strings.Contains(body, "publish the probe set first") {
		t.Fatalf("publish with gates and no probe set = %d %s; want 400 saying to publish the probe set first", code, body)
	}
	// And refused before its bytes are read: a client that asks first (Expect:
	// 100-continue, as curl does for large bodies) sends none of them. The server read
	// the whole upload (GiBs perhaps) before refusing it.
	counted := &countingReader{r: strings.NewReader(strings.Repeat("m", 512<<10))}
	req, _ := http.NewRequest("POST", f.http.URL+"/v1/publish?kind=model&name=iris&version=1.0.6&ext=.onnx", counted)
	req.ContentLength = 512 << 10
	req.Header.Set("Authorization", "Bearer "+rm)
	req.Header.Set("X-Edgeward-Meta", `{"gates":{"min_accuracy":"0.9"}}`)
	req.Header.Set("Expect", "100-continue")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "publish the probe set first") || counted.n.Load() != 0 {
		t.Fatalf("gated publish without a probe set, asking to continue = %d %s after %d bytes sent; want 400 before any byte", resp.StatusCode, b, counted.n.Load())
	}

	// The published target reaches a TUF client with its custom metadata.
	c := f.newClient()
	up := c.mustRefresh()
	data, tf, err := c.download(up, "models/iris/1.0.0.onnx")
	if err != nil || string(data) != "model v1" {
		t.Fatalf("download = %q, %v", data, err)
	}
	var m artifact.Meta
	json.Unmarshal(*tf.Custom, &m)
	if m.Gates == nil || m.Gates.MinAccuracy != 0.9 {
		t.Fatalf("custom = %s", *tf.Custom)
	}

	// Revoked tokens stop working.
	if code, _ := do("GET", "/v1/repository", revoked, nil); code != 200 {
		t.Fatalf("valid token = %d", code)
	}
	tokens, _ := store.Tokens(ctx)
	for _, ti := range tokens {
		if ti.Operator == "gone" {
			store.RevokeToken(ctx, ti.ID, f.clock.Now())
		}
	}
	if code, body := do("GET", "/v1/repository", revoked, nil); code != 401 || !strings.Contains(body, "revoked") {
		t.Fatalf("revoked token = %d %s; want 401 revoked", code, body)
	}

	// The auditor exports the log: the API publish is attributed to the operator.
	code, body := do("GET", "/v1/audit/export", auditor, nil)
	if code != 200 || !strings.Contains(body, `"actor":"operator:rita@`) {
		t.Fatalf("audit export = %d\n%s", code, body)
	}
	l, db, _ := OpenAuditAt(ctx, f.repo, f.db)
	defer db.Close()
	if _, err := audit.Verify(strings.NewReader(body), audit.VerifyOptions{LogKey: l.Verifier()}); err != nil {
		t.Fatalf("verify exported audit log: %v", err)
	}
}

// TestPublishThroughServerAndCLIConcurrently publishes through the operator API and
// directly on the directory (as the CLI does) at the same time, while a client
// refreshes: every publish lands and the client never sees an inconsistent repository.
func TestPublishThroughServerAndCLIConcurrently(t *testing.T) {
	f := newFixture(t, repository.KeyEd25519)
	ctx := context.Background()
	store, err := fleet.Open(ctx, DBLocation(f.repo.Dir(), f.db))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	f.srv.EnableOperatorAPI(OperatorConfig{Fleet: store, Signing: f.keyring()})
	tok, _, _ := store.CreateToken(ctx, "rita", fleet.RoleReleaseManager, time.Hour, f.clock.Now())

	var wg sync.WaitGroup
	errs := make(chan error, 64)
	const n = 8
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := range n {
			req, _ := http.NewRequest("POST", fmt.Sprintf("%s/v1/publish?kind=model&name=api&version=1.0.%d&ext=.onnx", f.http.URL, i), bytes.NewReader([]byte{byte(i)}))
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				errs <- err
				return
			}
			resp.Body.Close()
			if resp.StatusCode != 201 {
				errs <- fmt.Errorf("api publish %d: %d", i, resp.StatusCode)
			}
		}
	}()
	go func() {
		defer wg.Done()
		for i := range n {
			if _, err := f.publish(artifact.KindModel, "cli", fmt.Sprintf("1.0.%d", i), ".onnx", []byte{byte(i)}, nil); err != nil {
				errs <- err
			}
		}
	}()
	done := make(chan struct{})
	go func() {
		c := f.newClient()
		for {
			select {
			case <-done:
				close(errs)
				return
			default:
			}
			if _, err := c.refresh(); err != nil {
				errs <- fmt.Errorf("client: %w", err)
			}
		}
	}()
	wg.Wait()
	close(done)
	for err := range errs {
		t.Fatal(err)
	}
	st, err := f.repo.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(st.List()); got != 2*n {
		t.Fatalf("targets = %d; want %d", got, 2*n)
	}
}

// publisher enables the operator API (publications up to 1 MiB, signed with the
// fixture's keys) and returns a release manager's token; the store closes with the test.
func (f *fixture) publisher() string {
	f.t.Helper()
	ctx := context.Background()
	store, err := fleet.Open(ctx, DBLocation(f.repo.Dir(), f.db))
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { store.Close() })
	if err := f.srv.EnableOperatorAPI(OperatorConfig{Fleet: store, Signing: f.keyring(), MaxPublishBytes: 1 << 20}); err != nil {
		f.t.Fatal(err)
	}
	tok, _, err := store.CreateToken(ctx, "rita", fleet.RoleReleaseManager, time.Hour, f.clock.Now())
	if err != nil {
		f.t.Fatal(err)
	}
	return tok
}

// TestStalledUploadHoldsUpNoOtherPublication: a publisher whose upload stalls (a CI job
// on a flaky link) does not hold up another publication on the same replica; a mutex
// around the whole publication, upload included, used to make every later one wait.
func TestStalledUploadHoldsUpNoOtherPublication(t *testing.T) {
	f := newFixture(t, repository.KeyEd25519)
	tok := f.publisher()
	publish := func(version string, body io.Reader, length int64) (*http.Response, error) {
		req, _ := http.NewRequest("POST", f.http.URL+"/v1/publish?kind=model&name=iris&version="+version+"&ext=.onnx", body)
		req.ContentLength = length
		req.Header.Set("Authorization", "Bearer "+tok)
		return http.DefaultClient.Do(req)
	}
	pr, pw := io.Pipe()
	defer pw.CloseWithError(io.ErrUnexpectedEOF) // however the test ends
	stalled := make(chan error, 1)
	go func() {
		resp, err := publish("1.0.0", pr, 1000)
		if err == nil {
			resp.Body.Close()
		}
		stalled <- err
	}()
	pw.Write([]byte("the first ten")) // then nothing: the upload stalls
	time.Sleep(200 * time.Millisecond)
	done := make(chan int, 1)
	go func() {
		resp, err := publish("2.0.0", strings.NewReader("model v2"), int64(len("model v2")))
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	select {
	case code := <-done:
		if code != http.StatusCreated {
			t.Fatalf("publication beside a stalled upload = %d; want 201", code)
		}
	case <-time.After(10 * time.Second):
		pw.CloseWithError(io.ErrUnexpectedEOF)
		<-stalled
		t.Fatal("a publication waited 10 s behind another's stalled upload")
	}
	pw.CloseWithError(io.ErrUnexpectedEOF)
	<-stalled
}

// countingReader counts the bytes read from r.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

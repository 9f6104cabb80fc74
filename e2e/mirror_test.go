package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/nginxtest"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/lab"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repository"
	"github.com/edgeward/edgeward/runtime/modelgen"
)

// TestMirror (issue 12): two swtpm devices take their TUF metadata and targets from
// Debian's nginx as a caching mirror, configured by deploy/nginx/mirror.conf as
// docs/OPERATORS.md tells operators to install it (only the cache directory, the
// server's address and the listen port are changed), and check in with the server
// directly.
//
//   - Install, then update, through the mirror, in two waves: the first device's
//     downloads fill the cache, the second device's are served from it (nginx's
//     $upstream_cache_status is HIT) and never reach the server (its request counter
//     for targets does not move); every versioned metadata file and target reached the
//     server at most once; timestamp.json was never cached.
//   - A target changed on the mirror's disk (a byte of the cached model flipped): each
//     device refuses the bytes but not the version (infrastructure, "hash mismatch",
//     retried with backoff; never install_error), installs nothing and keeps serving
//     the version it had. Once the mirror serves the good bytes again, both devices
//     install the version without any operator action on them.
//   - Metadata changed on the mirror's disk (a signature of the cached delegated
//     models role flipped): the same, the cause saying its hash is not the one the
//     snapshot names (the snapshot names each role's length and SHA-256).
func TestMirror(t *testing.T) {
	f := newFleet(t, 0)
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	conf, err := os.ReadFile(filepath.Join(root, "deploy", "nginx", "mirror.conf"))
	if err != nil {
		t.Fatal(err)
	}
	cache := filepath.Join(t.TempDir(), "cache")
	ng := nginxtest.Start(t, func(port int) string {
		c := string(conf)
		for _, r := range [][2]string{
			{"proxy_cache_path /var/cache/nginx/edgeward ", "proxy_cache_path " + cache + " "},
			{"server 127.0.0.1:8440;", "server " + f.srv.Addr + ";"},
			{"listen 8080;", fmt.Sprintf("listen 127.0.0.1:%d;", port)},
		} {
			if n := strings.Count(c, r[0]); n != 1 {
				t.Fatalf("deploy/nginx/mirror.conf: %q occurs %d times; the test changes exactly one", r[0], n)
			}
			c = strings.Replace(c, r[0], r[1], 1)
		}
		return c
	})
	// The mirror serves only metadata and targets.
	if code := httpStatus(t, ng.URL+"/v1/devices/nonce"); code != http.StatusNotFound {
		t.Errorf("GET /v1/devices/nonce through the mirror = %d; want 404 (devices check in with the server)", code)
	}

	f.srv.MetadataURL = ng.URL + "/metadata" // devices enroll with the mirror
	for i := range 2 {
		d, err := f.lab.NewDevice(f.ctx, fmt.Sprintf("device-%d", i+1), nil, f.srv, f.repo.RootJSON())
		if err != nil {
			t.Fatal(err)
		}
		f.devs = append(f.devs, d)
	}
	f.startAgents()

	// Install and update, each in two waves: the second device after the first.
	for _, version := range []string{"1.0.0", "1.1.0"} {
		f.publish(version)
		id := "vib-" + version
		ordered := lab.ByBucket(id, f.devs)
		first, second := ordered[0], ordered[1]
		f.rollout(id, version, []policy.WaveSpec{{Percent: lab.PercentFor(id, ordered, 1), Soak: "3s"}, {Percent: 100}})
		if err := f.srv.WaitCommitted(f.ctx, wait, []*lab.Device{first}, artifact.KindModel, version); err != nil {
			t.Fatal(err)
		}
		origin := serverTargetRequests(t, f.srv)
		mark := len(accessLog(t, ng))
		if err := f.srv.WaitCommitted(f.ctx, wait, []*lab.Device{second}, artifact.KindModel, version); err != nil {
			t.Fatal(err)
		}
		if _, err := second.WaitServing(f.ctx, wait, version); err != nil {
			t.Fatal(err)
		}
		if n := serverTargetRequests(t, f.srv); n != origin {
			t.Errorf("%s: the server answered %d target requests while %s installed through the mirror; want none (the mirror's cache)", version, n-origin, second.Name)
		}
		var hits []string
		for _, e := range accessLog(t, ng)[mark:] {
			if strings.HasPrefix(e.Path, "/targets/") {
				if e.Cache != "HIT" {
					t.Errorf("%s: %s's download %s %s: cache %s, status %d; want a HIT", version, second.Name, e.Method, e.Path, e.Cache, e.Status)
				}
				hits = append(hits, e.Path)
			}
		}
		if len(hits) < 2 { // the probe set and the model
			t.Errorf("%s: %s downloaded %q through the mirror; want its probe set and model", version, second.Name, hits)
		}
		t.Logf("%s: %s installed from the mirror's cache: %d target requests, all HIT; the server answered %d target requests in all", version, second.Name, len(hits), origin)
	}
	// Each versioned metadata file and target came from the server once; timestamp.json
	// every time.
	fromOrigin := map[string]int{}
	timestamps := 0
	for _, e := range accessLog(t, ng) {
		switch {
		case e.Status != http.StatusOK && e.Status != http.StatusPartialContent:
		case e.Path == "/metadata/timestamp.json":
			timestamps++
			if e.Cache != "-" {
				t.Errorf("timestamp.json went through the cache (%s); want it never cached", e.Cache)
			}
		case e.Cache != "HIT":
			fromOrigin[e.Path]++
		}
	}
	for p, n := range fromOrigin {
		if n > 1 {
			t.Errorf("%s: fetched from the server %d times; want once (cached since)", p, n)
		}
	}
	if timestamps < 4 {
		t.Errorf("timestamp.json was fetched %d times through the mirror; want one per refresh", timestamps)
	}

	// A target changed on the mirror's disk: cached before the rollout, then one byte
	// of the model flipped. Devices fetch targets only to install them.
	res := publishUnique(t, f, "1.2.0")
	uri := "/targets/" + repository.ConsistentTargetPath(res.Path, res.SHA256)
	repair := tamperCached(t, ng, cache, uri, func(body []byte) { body[len(body)/2] ^= 0x01 })
	if sum := sha256.Sum256(httpBody(t, ng.URL+uri)); hex.EncodeToString(sum[:]) == res.SHA256 {
		t.Fatal("the mirror still serves the original model after its cached copy was changed")
	}
	f.rollout("vib-1.2.0", "1.2.0", nil)
	retried(t, f, "vib-1.2.0", "1.1.0", "hash mismatch")
	repair()
	if err := f.srv.WaitCommitted(f.ctx, wait, f.devs, artifact.KindModel, "1.2.0"); err != nil {
		t.Fatalf("after the mirror was repaired: %v", err)
	}

	// Metadata changed on the mirror's disk: the new version of the delegated models
	// role (fetched by devices only to resolve a target), cached, then a character of
	// its signature changed.
	res = publishUnique(t, f, "1.3.0")
	uri = fmt.Sprintf("/metadata/%d.%s.json", res.Version, res.Role)
	repair = tamperCached(t, ng, cache, uri, func(body []byte) {
		m := sigRE.FindIndex(body)
		if m == nil {
			t.Fatalf("%s: no signature in %s", uri, body)
		}
		i := m[1]
		if body[i] == '0' {
			body[i] = '1'
		} else {
			body[i] = '0'
		}
	})
	f.rollout("vib-1.3.0", "1.3.0", nil)
	retried(t, f, "vib-1.3.0", "1.2.0", "hash verification failed") // go-tuf: the file is not the one the snapshot names
	repair()
	if err := f.srv.WaitCommitted(f.ctx, wait, f.devs, artifact.KindModel, "1.3.0"); err != nil {
		t.Fatalf("after the mirror was repaired: %v", err)
	}
	for _, id := range []string{"vib-1.2.0", "vib-1.3.0"} {
		for _, d := range f.devs {
			var outcomes []string
			for _, r := range f.reports(id)[d.ID] {
				outcomes = append(outcomes, string(r.Outcome))
			}
			if !slices.Contains(outcomes, string(wire.OutcomeInfrastructure)) || !slices.Contains(outcomes, string(wire.OutcomeCommitted)) || slices.Contains(outcomes, string(wire.OutcomeInstallError)) {
				t.Errorf("%s: %s reports %v; want infrastructure failures, then a commit", id, d.Name, outcomes)
			}
		}
	}
}

// publishUnique publishes a model version trained as 1.1.0 is, under its own name (so
// its bytes are its own), with 1.1.0's probe set, and no delta: a device downloads the
// full target, which the test tampers with on the mirror.
func publishUnique(t *testing.T, f *fleetLab, version string) *repository.PublishResult {
	t.Helper()
	probe, err := modelgen.ProbeSet("1.1.0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.repo.Repo.Publish(f.ctx, repository.PublishRequest{
		Meta: artifact.Meta{Kind: artifact.KindProbe, Name: lab.Model, Version: version, Format: "json"},
		Ext:  ".json", Content: bytes.NewReader(probe),
	}, f.repo.Keys); err != nil {
		t.Fatal(err)
	}
	spec, err := modelgen.SpecOf("1.1.0")
	if err != nil {
		t.Fatal(err)
	}
	spec.Version = version
	g := gates
	res, err := f.repo.Repo.Publish(f.ctx, repository.PublishRequest{
		Meta: artifact.Meta{Kind: artifact.KindModel, Name: lab.Model, Version: version, Format: "onnx", Gates: &g},
		Ext:  ".onnx", Content: bytes.NewReader(modelgen.ModelOf(spec)), Deltas: -1,
	}, f.repo.Keys)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// retried waits until every device reported an infrastructure failure whose cause
// contains want for rollout id (the mirror's bytes refused, the version not), and
// checks that none reported anything else or installed anything: each still has
// version have committed and serves it.
func retried(t *testing.T, f *fleetLab, id, have, want string) {
	t.Helper()
	err := lab.WaitFor(f.ctx, wait, "every device to refuse the mirror's bytes for "+id, func(context.Context) (bool, string, error) {
		reps := f.reports(id)
		var seen []string
		ok := true
		for _, d := range f.devs {
			var got *wire.Report
			for i, r := range reps[d.ID] {
				if r.Outcome != wire.OutcomeInfrastructure {
					return false, "", lab.Final(fmt.Errorf("%s: %s report %s (%s); want only infrastructure while the mirror is tampered with", d.Name, id, r.Outcome, r.Cause))
				}
				got = &reps[d.ID][i]
			}
			if got == nil {
				ok = false
				seen = append(seen, fmt.Sprintf("%s: no report", d.Name))
				continue
			}
			if !strings.Contains(got.Cause, want) {
				return false, "", lab.Final(fmt.Errorf("%s failed %s for another reason: %s; want %q", d.Name, id, got.Cause, want))
			}
		}
		return ok, strings.Join(seen, "; "), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range f.devs {
		reps := f.reports(id)[d.ID]
		t.Logf("%s refused the mirror's bytes for %s: %s", d.Name, id, reps[len(reps)-1].Cause)
		if res, err := d.WaitServing(f.ctx, wait, have); err != nil {
			t.Errorf("%s after refusing %s: %v (last answer %+v)", d.Name, id, err, res)
		}
	}
	fds, err := f.srv.Devices(f.ctx, f.devs)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range f.devs {
		if got := fds[d.Name].Slots[artifact.KindModel].Version; got != have {
			t.Errorf("%s: committed model %s while the mirror was tampered with; want %s", d.Name, got, have)
		}
	}
}

// tamperCached caches uri on the mirror (a GET that must reach the server: nobody
// asked for it before), then changes its body in nginx's cache file with change. repair
// puts the cached file back as it was.
func tamperCached(t *testing.T, ng *nginxtest.Server, cache, uri string, change func(body []byte)) (repair func()) {
	t.Helper()
	httpBody(t, ng.URL+uri)
	var es []nginxtest.Entry
	err := lab.WaitFor(context.Background(), wait, "nginx to log "+uri, func(context.Context) (bool, string, error) {
		es = es[:0]
		for _, e := range accessLog(t, ng) { // written once the answer is sent
			if e.Path == uri {
				es = append(es, e)
			}
		}
		return len(es) > 0, "", nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 1 || es[0].Cache != "MISS" {
		t.Fatalf("priming %s: access log %+v; want one MISS (did a device fetch it first?)", uri, es)
	}
	var file string
	err = filepath.WalkDir(cache, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		// A cache file: a binary header, "\nKEY: <key>\n", the upstream's response
		// header, a blank line, the body.
		if _, rest, ok := bytes.Cut(b, []byte("\nKEY: ")); ok {
			if key, _, ok := bytes.Cut(rest, []byte("\n")); ok && bytes.HasSuffix(key, []byte(uri)) {
				file = p
			}
		}
		return nil
	})
	if err != nil || file == "" {
		t.Fatalf("no cache file for %s under %s: %v", uri, cache, err)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, []byte("\r\n\r\n"))
	if i < 0 {
		t.Fatalf("%s: no end of the response header", file)
	}
	good := bytes.Clone(b)
	change(b[i+4:])
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return func() {
		t.Helper()
		if err := os.WriteFile(file, good, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func accessLog(t *testing.T, ng *nginxtest.Server) []nginxtest.Entry {
	t.Helper()
	es, err := ng.Entries()
	if err != nil {
		t.Fatal(err)
	}
	return es
}

var sigRE = regexp.MustCompile(`"sig"\s*:\s*"`)

var targetRequestsRE = regexp.MustCompile(`(?m)^edgeward_repo_http_requests_total\{code="\d+",route="targets"\} (\d+)$`)

// serverTargetRequests is how many target requests the server answered (its metrics).
func serverTargetRequests(t *testing.T, srv *lab.Server) int {
	t.Helper()
	n := 0
	for _, m := range targetRequestsRE.FindAllStringSubmatch(string(httpBody(t, srv.URL+"/metrics")), -1) {
		v, _ := strconv.Atoi(m[1])
		n += v
	}
	return n
}

func httpBody(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s = %d, %v", url, resp.StatusCode, err)
	}
	return b
}

func httpStatus(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

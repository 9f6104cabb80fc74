package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
)

type testWitness struct {
	w    *Witness
	url  string
	vkey note.Verifier
}

func newWitness(t *testing.T, name string, logs ...*Log) *testWitness {
	t.Helper()
	_, key, _ := ed25519.GenerateKey(nil)
	var lk []note.Verifier
	for _, l := range logs {
		lk = append(lk, l.Verifier())
	}
	w, err := NewWitness(WitnessConfig{Signer: Cosigner(name, key, nil), Logs: lk, State: filepath.Join(t.TempDir(), "witness.json")})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(w)
	t.Cleanup(srv.Close)
	return &testWitness{w: w, url: srv.URL, vkey: mustVerifier(t, CosignerKey(name, key.Public().(ed25519.PublicKey)))}
}

// TestWitnessQuorum: the server collects cosignatures over HTTP (tlog-witness), the
// export carries them, and audit verify counts a quorum of trusted witnesses.
func TestWitnessQuorum(t *testing.T) {
	ctx := context.Background()
	l, _ := newLog(t, 1000)
	w1, w2, w3 := newWitness(t, "w1.example", l), newWitness(t, "w2.example", l), newWitness(t, "w3.example", l)
	clients := []*WitnessClient{{URL: w1.url}, {URL: w2.url}}
	appendN(t, l, 1, 10)
	if _, err := l.Cosign(ctx, clients); err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 11, 7)
	c, err := l.Cosign(ctx, clients) // the witnesses now need a consistency proof from 10
	if err != nil {
		t.Fatal(err)
	}
	if c.Size != 17 || strings.Count(string(c.Note), "\n— ") != 3 {
		t.Fatalf("cosigned checkpoint = %q; want size 17 with the log's and two witnesses' signatures", c.Note)
	}
	// Records appended after the cosigning: ExportCosigned stops at the cosigned tree.
	appendN(t, l, 18, 4)
	var buf bytes.Buffer
	if err := l.ExportCosigned(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	trusted := []note.Verifier{w1.vkey, w2.vkey, w3.vkey}
	rep, err := verifyLines(lines, VerifyOptions{LogKey: l.Verifier(), Witnesses: trusted, Quorum: 2})
	if err != nil || len(rep.Cosigners) != 2 || rep.Records != 17 {
		t.Fatalf("Verify with 2 of 3 = %+v, %v", rep, err)
	}
	_, err = verifyLines(lines, VerifyOptions{LogKey: l.Verifier(), Witnesses: trusted, Quorum: 3})
	var qe *QuorumError
	if !errors.As(err, &qe) || qe.Have != 2 || qe.Want != 3 {
		t.Fatalf("Verify with 3 of 3 = %v; want a QuorumError 2 < 3", err)
	}
	// A cosignature/v1 line carries its time.
	n, _ := note.Open(c.Note, note.VerifierList(l.Verifier(), w1.vkey))
	for _, s := range n.Sigs {
		if s.Name == "w1.example" {
			if at, ok := CosignatureTime(s); !ok || time.Since(at) > time.Minute {
				t.Fatalf("cosignature time = %v, %v", at, ok)
			}
		}
	}
}

// TestWitnessRefusesForkAndRollback: a witness that has cosigned one branch refuses the
// other branch of a fork under the same key, and an older tree (rollback).
func TestWitnessRefusesForkAndRollback(t *testing.T) {
	ctx := context.Background()
	_, key, _ := ed25519.GenerateKey(nil)
	a, _ := newLogWithKey(t, key, 1000)
	b, _ := newLogWithKey(t, key, 1000)
	w := newWitness(t, "w.example", a)
	appendN(t, a, 1, 20)
	appendN(t, b, 1, 12)
	b.Append(ctx, "server", "repo.publish", "models/evil/1.0.0.onnx", nil)
	appendN(t, b, 100, 10)
	if _, err := a.Cosign(ctx, []*WitnessClient{{URL: w.url}}); err != nil {
		t.Fatal(err)
	}
	// Branch b, shown to the same witness, cannot get a cosignature: the witness answers
	// 409 with its size, b's consistency proof from 20 fails, the witness says 422.
	_, err := b.Cosign(ctx, []*WitnessClient{{URL: w.url}})
	if err == nil || !strings.Contains(err.Error(), "422") {
		t.Fatalf("Cosign(fork) = %v; want the witness to refuse (422)", err)
	}
	// An old backup of a (10 records) is a rollback: the witness holds 20.
	old, _ := newLogWithKey(t, key, 1000)
	appendN(t, old, 1, 10)
	_, err = old.Cosign(ctx, []*WitnessClient{{URL: w.url}})
	if !errors.Is(err, ErrInconsistent) || !strings.Contains(err.Error(), "rollback") {
		t.Fatalf("Cosign(rollback) = %v; want a rollback", err)
	}
	// And the witness's state survives a restart.
	w2, err := NewWitness(w.w.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := ParseCheckpointUnverified(w2.Latest(a.Origin())); err != nil || c.Size != 20 {
		t.Fatalf("witness state after restart = %v, %v; want size 20", c, err)
	}
	// Malformed and unknown requests get clear errors.
	if _, _, _, err := ParseAddCheckpoint([]byte("new 3\n\nx")); err == nil {
		t.Fatal("ParseAddCheckpoint accepted a bad first line")
	}
	other, _ := newLog(t, 1000) // same origin, another key
	appendN(t, other, 1, 1)
	co, _ := other.Checkpoint(ctx)
	if _, err := w.w.AddCheckpoint(20, nil, co.Note); err == nil || !strings.Contains(err.Error(), "not signed by the log key") {
		t.Fatalf("AddCheckpoint(another key) = %v", err)
	}
	unknown, err := Open(ctx, Config{DB: openDB(t, filepath.Join(t.TempDir(), "u.db")), Key: key, Origin: "unknown.example"})
	if err != nil {
		t.Fatal(err)
	}
	cu, _ := unknown.Checkpoint(ctx)
	if _, err := w.w.AddCheckpoint(0, nil, cu.Note); !errors.Is(err, ErrUnknownLog) {
		t.Fatalf("AddCheckpoint(unknown origin) = %v", err)
	}
}

// TestWitnessCosignsOnlyWhatItSaved: when the witness cannot save its state (here its
// temporary file is blocked by a directory of that name, as a full or read-only disk
// would), it refuses the cosignature and stays at the checkpoint it has on disk: a retry
// of the same checkpoint is not cosigned from memory alone, and after the disk recovers
// the log is cosigned normally and a restarted witness holds the new size.
func TestWitnessCosignsOnlyWhatItSaved(t *testing.T) {
	ctx := context.Background()
	l, _ := newLog(t, 1000)
	w := newWitness(t, "w.example", l)
	clients := []*WitnessClient{{URL: w.url}}
	appendN(t, l, 1, 10)
	if _, err := l.Cosign(ctx, clients); err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 11, 5)
	blocker := w.w.cfg.State + ".tmp"
	if err := os.Mkdir(blocker, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Cosign(ctx, clients); err == nil {
		t.Fatal("Cosign succeeded while the witness could not save its state")
	}
	if c, err := ParseCheckpointUnverified(w.w.Latest(l.Origin())); err != nil || c.Size != 10 {
		t.Fatalf("witness after a failed save holds %s (%v); want the saved size 10", w.w.Latest(l.Origin()), err)
	}
	co, err := l.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The retry a client makes after a conflict: the same checkpoint, old = its size.
	var ce *ConflictError
	if sig, err := w.w.AddCheckpoint(co.Size, nil, co.Note); !errors.As(err, &ce) || ce.Size != 10 {
		t.Fatalf("AddCheckpoint(%d, same checkpoint) after a failed save = %q, %v; want a conflict at 10", co.Size, sig, err)
	}
	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	if c, err := l.Cosign(ctx, clients); err != nil || c.Size != 15 {
		t.Fatalf("Cosign after the disk recovered = %v, %v; want size 15", c, err)
	}
	w2, err := NewWitness(w.w.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := ParseCheckpointUnverified(w2.Latest(l.Origin())); err != nil || c.Size != 15 {
		t.Fatalf("restarted witness holds %s (%v); want size 15", w2.Latest(l.Origin()), err)
	}
}

// TestDishonestWitnessCannotBreakTheLog: a witness that answers add-checkpoint with a
// malformed line, or a line under the log's own key, is refused and its lines are not
// stored; the log's checkpoints stay readable and an honest witness's cosignature is
// kept. (Any line starting with "— " used to be stored, and one malformed line made
// every read of that checkpoint fail: Latest, CheckpointAt, exports, check-ins.)
func TestDishonestWitnessCannotBreakTheLog(t *testing.T) {
	ctx := context.Background()
	l, _ := newLog(t, 1000)
	honest := newWitness(t, "honest.example", l)
	logLine := func() string {
		c, err := l.Checkpoint(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, sigs, _ := strings.Cut(string(c.Note), "\n\n")
		return strings.SplitAfter(sigs, "\n")[0]
	}
	for _, answer := range []func() string{
		func() string { return "— evil.example !!!\n" },
		func() string { return "— evil.example " + strings.Repeat("A", 8) + "\n— \x01\n" },
		func() string { // the log's name and key hash with a garbage signature
			name, b64, _ := strings.Cut(strings.TrimPrefix(strings.TrimSpace(logLine()), "— "), " ")
			raw, _ := base64.StdEncoding.DecodeString(b64)
			return "— " + name + " " + base64.StdEncoding.EncodeToString(append(raw[:4], make([]byte, 64)...)) + "\n"
		},
		func() string { return strings.Repeat("— evil.example AAAAAAAA\n", maxCosignatureLines+1) },
	} {
		evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			io.WriteString(w, answer())
		}))
		appendN(t, l, 1, 3)
		_, err := l.Cosign(ctx, []*WitnessClient{{URL: evil.URL}, {URL: honest.url}})
		evil.Close()
		if err == nil || !strings.Contains(err.Error(), evil.URL) {
			t.Fatalf("Cosign with a witness answering %q = %v; want that witness refused", answer(), err)
		}
		c, err := l.Latest(ctx)
		if err != nil {
			t.Fatalf("Latest after a witness answered %q: %v", answer(), err)
		}
		if _, err := OpenCheckpoint(c.Note, l.Verifier(), []note.Verifier{honest.vkey}, 1); err != nil {
			t.Fatalf("the honest witness's cosignature: %v", err)
		}
		if strings.Contains(string(c.Note), "evil.example") {
			t.Fatalf("a refused witness's lines were stored: %q", c.Note)
		}
	}
	var buf bytes.Buffer
	if err := l.ExportCosigned(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if _, err := verifyLines(lines, VerifyOptions{LogKey: l.Verifier(), Witnesses: []note.Verifier{honest.vkey}, Quorum: 1}); err != nil {
		t.Fatalf("the export after dishonest answers: %v", err)
	}
}

// TestConcurrentCosignaturesAreAllKept: two writers adding cosignature lines to one
// checkpoint at once (two replicas that both believed they led) keep every line; each
// used to write back the note it had read plus its own lines, losing the other's.
func TestConcurrentCosignaturesAreAllKept(t *testing.T) {
	ctx := context.Background()
	l, _ := newLog(t, 1000)
	appendN(t, l, 1, 3)
	c, err := l.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	line := func(w, i int) string {
		return fmt.Sprintf("— w%d-%d.example %s\n", w, i, base64.StdEncoding.EncodeToString(make([]byte, 68)))
	}
	errs := make(chan error, 2)
	for w := range 2 {
		go func() {
			for i := range 20 {
				if err := l.AddCosignatures(ctx, c.Size, []string{line(w, i)}); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	var note string
	if err := l.db.QueryRowContext(ctx, `SELECT note FROM audit_checkpoints_v2 WHERE size = $1`, c.Size).Scan(&note); err != nil {
		t.Fatal(err)
	}
	for w := range 2 {
		for i := range 20 {
			if !strings.Contains(note, line(w, i)) {
				t.Fatalf("line %d of writer %d lost", i, w)
			}
		}
	}
}

// TestWitnessFollowsTheSpec: the witness's answers where C2SP tlog-witness, signed-note
// and tlog-checkpoint say what they must be (an outside audit with independent clients
// found each of these answered otherwise, 2 Dec; the first is a fork at size 0).
func TestWitnessFollowsTheSpec(t *testing.T) {
	ctx := context.Background()
	_, key, _ := ed25519.GenerateKey(nil)
	l, _ := newLogWithKey(t, key, 1000)
	w := newWitness(t, "w.example", l)
	signer, err := Signer(l.Origin(), key)
	if err != nil {
		t.Fatal(err)
	}
	sign := func(text string) string {
		msg, err := note.Sign(&note.Note{Text: text}, signer)
		if err != nil {
			t.Fatal(err)
		}
		return string(msg)
	}
	appendN(t, l, 1, 5)
	c5, err := l.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var zero [32]byte
	h := base64.StdEncoding.EncodeToString
	post := func(body string) (int, string) {
		t.Helper()
		resp, err := http.Post(w.url+"/add-checkpoint", "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// The log's signature, then a line with its name and key ID that does not verify.
	good := string(c5.Note)
	i := strings.Index(good, "\n\n")
	sigLine := good[i+2:]
	badLine := sigLine[:len(sigLine)-6] + "AAAAA\n"
	if badLine == sigLine {
		badLine = sigLine[:len(sigLine)-6] + "BBBBB\n"
	}
	for _, tc := range []struct {
		name string
		body string
		want int
	}{
		{"a proof from size 0 to a log the witness never saw", "old 0\n" + h(zero[:]) + "\n\n" + good, http.StatusUnprocessableEntity},
		{"a size-0 tree whose root is not the empty tree's", "old 0\n\n" + sign(l.Origin()+"\n0\n"+h(zero[:])+"\n"), http.StatusUnprocessableEntity},
		{"the empty tree", "old 0\n\n" + sign(l.Origin()+"\n0\n"+h(EmptyTreeHash[:])+"\n"), http.StatusOK},
		{"a proof from size 0 that is not empty", "old 0\n" + h(zero[:]) + "\n\n" + good, http.StatusUnprocessableEntity},
		{"old size with a leading zero", "old 00\n\n" + good, http.StatusBadRequest},
		{"old size with a sign", "old +0\n\n" + good, http.StatusBadRequest},
		{"a line ending in CR LF", "old 0\r\n\n" + good, http.StatusBadRequest},
		{"an empty extension line", "old 0\n\n" + sign(l.Origin()+"\n5\n"+c5.Hash.String()+"\n\nx\n"), http.StatusBadRequest},
		{"a bad line of the log key after a good one", "old 0\n\n" + good + badLine, http.StatusForbidden},
		{"a bad line of the log key before a good one", "old 0\n\n" + good[:i+2] + badLine + sigLine, http.StatusForbidden},
		{"from the empty tree", "old 0\n\n" + good, http.StatusOK},
		{"the same size with a proof", "old 5\n" + h(zero[:]) + "\n\n" + good, http.StatusUnprocessableEntity},
		{"the same checkpoint again", "old 5\n\n" + good, http.StatusOK},
		{"old size beyond the checkpoint's", "old 6\n\n" + good, http.StatusBadRequest},
	} {
		if code, body := post(tc.body); code != tc.want {
			t.Errorf("%s: %d %q; want %d", tc.name, code, body, tc.want)
		}
	}
	// The monitoring path: GET /<hex SHA-256 of the origin>/checkpoint.
	sum := sha256.Sum256([]byte(l.Origin()))
	resp, err := http.Get(w.url + "/" + hex.EncodeToString(sum[:]) + "/checkpoint")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if c, err := ParseCheckpointUnverified(b); resp.StatusCode != http.StatusOK || err != nil || c.Size != 5 {
		t.Fatalf("GET /<origin hash>/checkpoint = %d %q", resp.StatusCode, b)
	}
	if resp, err := http.Get(w.url + "/" + strings.Repeat("0", 64) + "/checkpoint"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET /<unknown origin hash>/checkpoint = %v, %v; want 404", resp, err)
	}
}

package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// WitnessConfig configures a Witness.
type WitnessConfig struct {
	Signer note.Signer     // the witness's cosignature/v1 signer (Cosigner)
	Logs   []note.Verifier // the logs it witnesses; a log's origin is its key's name
	// State is the file where the witness keeps the newest checkpoint of each log it has
	// cosigned (created if missing). Keep it: a witness that forgets can be shown a fork.
	State string
}

// Witness cosigns checkpoints that consistently extend the last one it cosigned, per log
// (C2SP tlog-witness: POST /add-checkpoint). Safe for concurrent use.
type Witness struct {
	cfg  WitnessConfig
	logs map[string]note.Verifier
	mu   sync.Mutex
	st   witnessState
}

type witnessState struct {
	Logs map[string]string `json:"logs"` // origin → newest cosigned checkpoint (note)
}

// NewWitness loads the witness's state.
func NewWitness(cfg WitnessConfig) (*Witness, error) {
	if cfg.Signer == nil || cfg.State == "" || len(cfg.Logs) == 0 {
		return nil, errors.New("witness: a signer, a state file and at least one log key are needed")
	}
	w := &Witness{cfg: cfg, logs: map[string]note.Verifier{}, st: witnessState{Logs: map[string]string{}}}
	for _, l := range cfg.Logs {
		w.logs[l.Name()] = l
	}
	data, err := os.ReadFile(cfg.State)
	if err == nil {
		if err := json.Unmarshal(data, &w.st); err != nil {
			return nil, fmt.Errorf("witness state %s: %w", cfg.State, err)
		}
		if w.st.Logs == nil {
			w.st.Logs = map[string]string{}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	return w, nil
}

// ConflictError says the witness's newest checkpoint for the log is not the size the
// caller assumed: retry with a consistency proof from Size.
type ConflictError struct{ Size int64 }

func (e *ConflictError) Error() string {
	return fmt.Sprintf("witness: its newest checkpoint has size %d", e.Size)
}

// ErrUnknownLog says the witness does not witness that origin.
var ErrUnknownLog = errors.New("witness: unknown log")

// originByHash returns the origin of a witnessed log whose SHA-256, hex in lower case,
// is h ("" for none).
func (w *Witness) originByHash(h string) string {
	for origin := range w.logs {
		sum := sha256.Sum256([]byte(origin))
		if hex.EncodeToString(sum[:]) == h {
			return origin
		}
	}
	return ""
}

// Latest returns the newest checkpoint the witness cosigned for origin (nil: none).
func (w *Witness) Latest(origin string) []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	if s, ok := w.st.Logs[origin]; ok {
		return []byte(s)
	}
	return nil
}

// AddCheckpoint verifies msg (signed by its log's key) against the newest checkpoint the
// witness holds for that log, old being the size the caller believes that is and proof a
// consistency proof from it, records it, and returns the witness's cosignature line(s).
func (w *Witness) AddCheckpoint(old int64, proof tlog.TreeProof, msg []byte) ([]byte, error) {
	u, err := ParseCheckpointUnverified(msg)
	if err != nil {
		return nil, err
	}
	logKey, ok := w.logs[u.Origin]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownLog, u.Origin)
	}
	if err := everyLogSignatureVerifies(msg, logKey); err != nil {
		return nil, err
	}
	if _, err := OpenCheckpoint(msg, logKey, nil, 0); err != nil {
		return nil, err
	}
	if old > u.Size { // C2SP tlog-witness: 400
		return nil, fmt.Errorf("%w: old size %d is beyond the checkpoint's size %d", ErrCheckpoint, old, u.Size)
	}
	if old == 0 && len(proof) > 0 {
		// C2SP tlog-witness: 422, for a log the witness never saw too (CheckConsistency
		// says so for one it holds at size 0).
		return nil, fmt.Errorf("%w: a consistency proof of %d hashes from size 0, where the proof is empty", ErrInconsistent, len(proof))
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	var last []byte
	var lastSize int64
	if s, ok := w.st.Logs[u.Origin]; ok {
		last = []byte(s)
		lc, err := ParseCheckpointUnverified(last)
		if err != nil {
			return nil, err
		}
		lastSize = lc.Size
	}
	if old != lastSize {
		return nil, &ConflictError{Size: lastSize}
	}
	c, err := Next(logKey, last, msg, proof)
	if err != nil {
		return nil, err
	}
	// Cosign the checkpoint text only (with the log's signature, not others').
	n, err := note.Open(msg, note.VerifierList(logKey))
	if err != nil {
		return nil, err
	}
	n.UnverifiedSigs = nil
	signed, err := note.Sign(&note.Note{Text: n.Text, Sigs: n.Sigs}, w.cfg.Signer)
	if err != nil {
		return nil, err
	}
	if last == nil || c.Size > lastSize {
		// The state moves on only once it is on disk: a cosignature never leaves for a
		// checkpoint the witness would not remember after a restart. (Were the memory
		// ahead of the disk, a retry of this same checkpoint would be cosigned without a
		// save, and a restarted witness could then cosign a fork of it.)
		w.st.Logs[u.Origin] = string(signed)
		if err := w.save(); err != nil {
			if last == nil {
				delete(w.st.Logs, u.Origin)
			} else {
				w.st.Logs[u.Origin] = string(last)
			}
			return nil, err
		}
	}
	return cosignatureLines(signed, w.cfg.Signer.Name()), nil
}

// everyLogSignatureVerifies refuses a note carrying a signature line by the log's key
// (its name and key ID) that does not verify, wherever it stands among the lines: such a
// note is malformed (C2SP signed-note, tlog-witness: 403). note.Open and the tolerant
// checkpoint.Open look at the first line of a key only, so a bad line after a good one
// was cosigned, and refused in the other order (found from outside, 2 Dec).
func everyLogSignatureVerifies(msg []byte, logKey note.Verifier) error {
	split := bytes.LastIndex(msg, []byte("\n\n"))
	if split < 0 {
		return nil // no signatures: OpenCheckpoint says so
	}
	text, sigs := msg[:split+1], string(msg[split+2:])
	prefix := "— " + logKey.Name() + " "
	for _, line := range strings.SplitAfter(sigs, "\n") {
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		n, err := note.Open(append(append(slices.Clone(text), '\n'), line...), note.VerifierList(logKey))
		var unverified *note.UnverifiedNoteError
		switch {
		case errors.As(err, &unverified):
			continue // another key of the same name
		case err != nil:
			return fmt.Errorf("checkpoint: a signature line of the log key %s does not verify: %w", logKey.Name(), err)
		case len(n.Sigs) != 1:
			return fmt.Errorf("checkpoint: a signature line of the log key %s does not verify", logKey.Name())
		}
	}
	return nil
}

// cosignatureLines picks the signature lines by name out of a signed note.
func cosignatureLines(msg []byte, name string) []byte {
	var out bytes.Buffer
	i := bytes.LastIndex(msg, []byte("\n\n"))
	for _, ln := range strings.SplitAfter(string(msg[i+2:]), "\n") {
		if strings.HasPrefix(ln, "— "+name+" ") {
			out.WriteString(ln)
		}
	}
	return out.Bytes()
}

func (w *Witness) save() error {
	data, err := json.MarshalIndent(&w.st, "", "  ")
	if err != nil {
		return err
	}
	tmp := w.cfg.State + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("witness state: %w", err)
	}
	if err := os.Rename(tmp, w.cfg.State); err != nil {
		return fmt.Errorf("witness state: %w", err)
	}
	d, err := os.Open(filepath.Dir(w.cfg.State))
	if err != nil {
		return fmt.Errorf("witness state: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("witness state: sync %s: %w", filepath.Dir(w.cfg.State), err)
	}
	return nil
}

// FormatAddCheckpoint is the body of a tlog-witness add-checkpoint request.
func FormatAddCheckpoint(old int64, proof tlog.TreeProof, msg []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "old %d\n", old)
	for _, h := range proof {
		fmt.Fprintf(&b, "%s\n", h)
	}
	b.WriteString("\n")
	b.Write(msg)
	return b.Bytes()
}

// ParseAddCheckpoint parses an add-checkpoint request body.
func ParseAddCheckpoint(body []byte) (old int64, proof tlog.TreeProof, msg []byte, err error) {
	head, rest, ok := bytes.Cut(body, []byte("\n\n"))
	if !ok {
		return 0, nil, nil, errors.New("add-checkpoint: no blank line before the checkpoint")
	}
	// Lines end in "\n" alone, and the size is ASCII decimal without a sign or leading
	// zeroes (C2SP tlog-witness): "old 016", "old +5" and "old 5\r" are malformed.
	lines := strings.Split(string(head), "\n")
	first, ok := strings.CutPrefix(lines[0], "old ")
	if !ok {
		return 0, nil, nil, errors.New("add-checkpoint: first line must be \"old <size>\"")
	}
	if old, err = strconv.ParseInt(first, 10, 64); err != nil || old < 0 || strconv.FormatInt(old, 10) != first {
		return 0, nil, nil, fmt.Errorf("add-checkpoint: old size %q", lines[0])
	}
	if len(lines)-1 > 63 {
		return 0, nil, nil, errors.New("add-checkpoint: proof too long")
	}
	for _, ln := range lines[1:] {
		h, err := tlog.ParseHash(ln)
		if err != nil || h.String() != ln {
			return 0, nil, nil, fmt.Errorf("add-checkpoint: proof line %q", ln)
		}
		proof = append(proof, h)
	}
	return old, proof, rest, nil
}

// ServeHTTP serves POST /add-checkpoint (C2SP tlog-witness): 200 with the cosignature
// lines; 409 with the witness's size (text/x.tlog.size) when old is not it; 404 for an
// unknown log; 403 when the log's signature does not verify; 422 when the checkpoint is
// not consistent with the witness's newest one; 400 for a malformed request. GET
// /<hex SHA-256 of the origin>/checkpoint (the spec's monitoring path) and GET
// /checkpoint?origin=O return the newest cosigned checkpoint of a log.
func (w *Witness) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	origin, monitoring := "", false
	if r.Method == http.MethodGet {
		if r.URL.Path == "/checkpoint" {
			origin, monitoring = r.URL.Query().Get("origin"), true
		} else if h, ok := strings.CutSuffix(strings.TrimPrefix(r.URL.Path, "/"), "/checkpoint"); ok {
			// C2SP tlog-witness's monitoring path: GET /<hex SHA-256 of the origin>/checkpoint.
			origin, monitoring = w.originByHash(h), true
		}
	}
	switch {
	case monitoring:
		c := w.Latest(origin)
		if c == nil {
			http.Error(rw, "no checkpoint for that origin", http.StatusNotFound)
			return
		}
		rw.Write(c)
		return
	case r.Method != http.MethodPost || r.URL.Path != "/add-checkpoint":
		http.Error(rw, "POST /add-checkpoint", http.StatusNotFound)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxNote+64*64+1))
	if err != nil || len(body) > maxNote+64*64 {
		http.Error(rw, "request too large", http.StatusBadRequest)
		return
	}
	old, proof, msg, err := ParseAddCheckpoint(body)
	if err != nil {
		http.Error(rw, err.Error(), http.StatusBadRequest)
		return
	}
	sig, err := w.AddCheckpoint(old, proof, msg)
	var conflict *ConflictError
	switch {
	case err == nil:
		rw.Write(sig)
	case errors.As(err, &conflict):
		rw.Header().Set("Content-Type", "text/x.tlog.size")
		rw.WriteHeader(http.StatusConflict)
		fmt.Fprintf(rw, "%d\n", conflict.Size)
	case errors.Is(err, ErrUnknownLog):
		http.Error(rw, err.Error(), http.StatusNotFound)
	case errors.Is(err, ErrInconsistent):
		http.Error(rw, err.Error(), http.StatusUnprocessableEntity)
	case errors.Is(err, ErrCheckpoint):
		http.Error(rw, err.Error(), http.StatusBadRequest)
	default:
		http.Error(rw, err.Error(), http.StatusForbidden)
	}
}

// WitnessClient sends a log's checkpoints to one witness. It remembers the size the
// witness last accepted (learning it from a 409 when it does not know). Not safe for
// concurrent use; the server's checkpoint signer owns it.
type WitnessClient struct {
	URL  string // base URL; requests go to URL + "/add-checkpoint"
	HTTP *http.Client
	size int64
	seen bool
}

// Cosign sends the log's newest checkpoint to each witness, collects their cosignatures
// into the stored checkpoint, and returns the checkpoint with them. Witnesses that refuse
// are reported in the error (joined); the others' cosignatures are kept.
func (l *Log) Cosign(ctx context.Context, witnesses []*WitnessClient) (*Checkpoint, error) {
	c, err := l.Checkpoint(ctx)
	if err != nil {
		return nil, err
	}
	var errs []error
	var lines []string
	for _, wc := range witnesses {
		sig, err := wc.add(ctx, l, c)
		if err == nil {
			var got []string
			got, err = checkCosignatureLines(c, l.Verifier(), sig)
			lines = append(lines, got...)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("witness %s: %w", wc.URL, err))
		}
	}
	if len(lines) > 0 {
		if err := l.AddCosignatures(ctx, c.Size, lines); err != nil {
			return nil, err
		}
		if c, err = l.CheckpointAt(ctx, c.Size); err != nil {
			return nil, err
		}
	}
	return c, errors.Join(errs...)
}

func (wc *WitnessClient) add(ctx context.Context, l *Log, c *Checkpoint) ([]byte, error) {
	hc := wc.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	for try := 0; try < 2; try++ {
		proof, err := l.ConsistencyProof(ctx, min(wc.size, c.Size), c.Size)
		if err != nil {
			return nil, err
		}
		// Send the log's signature only: a witness cosigns what the log signed.
		body := FormatAddCheckpoint(wc.size, proof, logSignedOnly(c.Note, l.Verifier()))
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(wc.URL, "/")+"/add-checkpoint", bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return nil, err
		}
		data, _ := io.ReadAll(io.LimitReader(resp.Body, maxNote))
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
			wc.size, wc.seen = c.Size, true
			return data, nil
		case http.StatusConflict:
			n, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
			if err != nil || n > c.Size {
				return nil, fmt.Errorf("%w: the witness holds a checkpoint of size %s, larger than the log's %d (rollback?)", ErrInconsistent, strings.TrimSpace(string(data)), c.Size)
			}
			wc.size = n
			continue
		default:
			return nil, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(data)))
		}
	}
	return nil, errors.New("the witness keeps changing its size")
}

// maxCosignatureLines bounds the signature lines one witness may add to a checkpoint
// (one per key it signs with; C2SP witnesses use one or two).
const maxCosignatureLines = 4

// checkCosignatureLines checks the signature lines a witness answered for checkpoint c
// before they are stored with it: each must be a well-formed note signature line, not
// the log's own key's (a witness does not sign as the log), at most
// maxCosignatureLines of them. The log cannot check a witness's signature without its
// key; checkpoint.Open drops lines that do not verify for whoever knows it, so a bad
// line costs only its own count. A malformed one, kept, would make note.Open refuse the
// whole checkpoint wherever it is read without that care.
func checkCosignatureLines(c *Checkpoint, logKey note.Verifier, sig []byte) ([]string, error) {
	text := []byte(c.Text())
	var out []string
	for _, ln := range strings.SplitAfter(strings.TrimRight(string(sig), "\n"), "\n") {
		ln = strings.TrimRight(ln, "\n") + "\n"
		_, err := note.Open(append(append(slices.Clone(text), '\n'), ln...), note.VerifierList(logKey))
		if !errors.As(err, new(*note.UnverifiedNoteError)) {
			return nil, fmt.Errorf("answered %q, which is not a cosignature line of another key than the log's", strings.TrimSpace(ln))
		}
		out = append(out, ln)
	}
	if len(out) > maxCosignatureLines {
		return nil, fmt.Errorf("answered %d signature lines; at most %d are kept", len(out), maxCosignatureLines)
	}
	return out, nil
}

// logSignedOnly strips every signature but the log's from a checkpoint note.
func logSignedOnly(msg []byte, logKey note.Verifier) []byte {
	if c, err := OpenCheckpoint(msg, logKey, nil, 0); err == nil {
		msg = c.Note // without lines that cannot count, which note.Open would refuse
	}
	n, err := note.Open(msg, note.VerifierList(logKey))
	if err != nil {
		return msg
	}
	out, err := note.Sign(&note.Note{Text: n.Text, Sigs: n.Sigs})
	if err != nil {
		return msg
	}
	return out
}

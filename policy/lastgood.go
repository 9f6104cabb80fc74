package policy

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/edgeward/edgeward/internal/durable"
)

// lastGood is the copy of a policy's files WatcherConfig.LastGood holds: enough to
// parse the same policy, with the same digest, when its directory does not load.
type lastGood struct {
	// Dir is the policy directory the files came from: a copy of another directory's
	// policy is not started from.
	Dir     string    `json:"dir"`
	Digest  string    `json:"digest"`
	SavedAt time.Time `json:"saved_at"`
	Files   []File    `json:"files"`
}

// maxLastGood bounds the copy's size: MaxFiles files of MaxFileSize, base64 in JSON.
const maxLastGood = MaxFiles*MaxFileSize*4/3 + 1<<20

// saveLastGood writes the files of p, now in force, to the LastGood file. A failure is
// logged: p is in force all the same, and the copy serves only a later start.
func (w *Watcher) saveLastGood(p *Policy, files []File) {
	if w.cfg.LastGood == "" {
		return
	}
	data, err := json.Marshal(lastGood{Dir: absDir(w.cfg.Dir), Digest: p.Digest, SavedAt: w.cfg.Now().UTC(), Files: files})
	if err == nil {
		err = durable.WriteFile(w.cfg.LastGood, data, 0o600)
	}
	if err != nil {
		w.log.Error("policy: could not keep a copy of the policy in force; a start with an invalid policy directory would fail",
			"file", w.cfg.LastGood, "digest", p.Digest, "err", err)
	}
}

// readLastGood parses the policy a LastGood file holds for dir, checking that it is the
// policy that was saved (its digest).
func readLastGood(parser *Parser, path, dir string) (*Policy, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxLastGood+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxLastGood {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxLastGood)
	}
	var lg lastGood
	if err := json.Unmarshal(data, &lg); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if lg.Dir != absDir(dir) && lg.Dir != filepath.Clean(dir) { // Clean: a copy saved before absDir
		return nil, fmt.Errorf("%s holds the policy of %s, not of %s", path, lg.Dir, dir)
	}
	p, err := parser.Parse(lg.Files...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if p.Digest != lg.Digest {
		return nil, fmt.Errorf("%s: policy digest %s; the copy says %s", path, p.Digest, lg.Digest)
	}
	return p, nil
}

// absDir is dir as the copy names it: absolute, so that a relative --repo and an
// absolute one for the same directory agree (the copy was refused, found in review).
func absDir(dir string) string {
	if a, err := filepath.Abs(dir); err == nil {
		return a
	}
	return filepath.Clean(dir)
}

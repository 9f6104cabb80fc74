package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/durable"
)

// RolloutSpec is a rollout as the operator API receives it (`edgeward rollout
// create`); CreateRollout turns it into a policy file. Its fields are those of a rollout
// in a policy file.
type RolloutSpec struct {
	ID       string        `json:"id" yaml:"id"`
	Target   TargetSpec    `json:"target" yaml:"target"`
	Selector *SelectorSpec `json:"selector,omitempty" yaml:"selector,omitempty"`
	Window   string        `json:"window,omitempty" yaml:"window,omitempty"`
	Gates    *GatesSpec    `json:"gates,omitempty" yaml:"gates,omitempty"`
	Pause    *PauseSpec    `json:"pause,omitempty" yaml:"pause,omitempty"`
	Waves    []WaveSpec    `json:"waves,omitempty" yaml:"waves,omitempty"`
}

// TargetSpec names a target.
type TargetSpec struct {
	Kind    artifact.Kind `json:"kind" yaml:"kind"`
	Name    string        `json:"name" yaml:"name"`
	Version string        `json:"version" yaml:"version"`
}

// SelectorSpec is a selector as written in a policy file.
type SelectorSpec struct {
	Devices        []string          `json:"devices,omitempty" yaml:"devices,omitempty"`
	Labels         map[string]string `json:"labels,omitempty" yaml:"labels,omitempty"`
	Hardware       []string          `json:"hardware,omitempty" yaml:"hardware,omitempty"`
	AgentVersion   string            `json:"agent_version,omitempty" yaml:"agent_version,omitempty"`
	RuntimeVersion string            `json:"runtime_version,omitempty" yaml:"runtime_version,omitempty"`
	Expr           string            `json:"expr,omitempty" yaml:"expr,omitempty"`
}

// GatesSpec are commit gates as written in a policy file.
type GatesSpec struct {
	MinAccuracy float64 `json:"min_accuracy,omitempty" yaml:"min_accuracy,omitempty"`
	MaxAbsError float64 `json:"max_abs_error,omitempty" yaml:"max_abs_error,omitempty"`
	MaxP99Ms    float64 `json:"max_p99_ms,omitempty" yaml:"max_p99_ms,omitempty"`
	MaxRSSMB    float64 `json:"max_rss_mb,omitempty" yaml:"max_rss_mb,omitempty"`
}

// PauseSpec is a rollout's default auto-pause rule.
type PauseSpec struct {
	MaxFailureRatio *float64 `json:"max_failure_ratio,omitempty" yaml:"max_failure_ratio,omitempty"`
	MinReports      *int     `json:"min_reports,omitempty" yaml:"min_reports,omitempty"`
}

// WaveSpec is a wave as written in a policy file; Soak is a Go duration ("1h30m").
type WaveSpec struct {
	Percent         float64  `json:"percent" yaml:"percent"`
	Soak            string   `json:"soak,omitempty" yaml:"soak,omitempty"`
	Approval        bool     `json:"approval,omitempty" yaml:"approval,omitempty"`
	MaxFailureRatio *float64 `json:"max_failure_ratio,omitempty" yaml:"max_failure_ratio,omitempty"`
	MinReports      *int     `json:"min_reports,omitempty" yaml:"min_reports,omitempty"`
}

// CreatedPrefix starts the names of the files CreateRollout writes.
const CreatedPrefix = "created-"

// CreateRollout adds a rollout to the policy in dir as a file of its own, named so that
// it sorts before every rollout created earlier (a newer rollout takes precedence, see
// Policy.Rollouts): created-<10^10 - unix seconds>-<10^9 - 1 - nanoseconds>-<id>.yaml. It first checks that the
// whole policy with the new file is valid (ErrorList otherwise, and nothing is
// written), then writes the file atomically (temporary file, fsync, rename, directory
// fsync); a Watcher on dir loads it. It returns the new file's path.
//
// Callers serialise calls for one directory (two concurrent creations could each pass
// the check alone and conflict together; the Watcher would then keep the last good
// policy and report the conflict). Hand-written files whose names sort before
// "created-" (digits, "a"…"b") take precedence over created rollouts.
func CreateRollout(dir string, spec RolloutSpec, now time.Time) (string, error) {
	st, err := StageRollout(dir, spec, now)
	if err != nil {
		return "", err
	}
	if err := st.Commit(); err != nil {
		st.Discard()
		return "", err
	}
	return st.Path, nil
}

// StagedPrefix starts the hidden names StageRollout writes rollout files under until
// they are committed.
const StagedPrefix = ".staged-"

// StagedRollout is a rollout file StageRollout wrote under a name no Watcher loads
// (it starts with "."), until Commit renames it into place.
type StagedRollout struct {
	// Path is where Commit puts the file: the rollout's file in the policy.
	Path string
	// Rollout is the rollout as the policy with the file parses it.
	Rollout *Rollout
	staged  string
}

// StageRollout is CreateRollout up to the last step: it checks the whole policy with
// the new file (ErrorList otherwise, and nothing is written), then writes the file
// durably beside its final name under a hidden one, which neither a Watcher nor a later
// check reads. The caller records the change (its audit record) and then calls Commit,
// or Discard if it could not: no rollout is in force without its record, and nothing
// is left to write after the record but an atomic rename.
func StageRollout(dir string, spec RolloutSpec, now time.Time) (*StagedRollout, error) {
	if !idRE.MatchString(spec.ID) {
		return nil, ErrorList{{Pos: Pos{File: "rollout"}, Msg: fmt.Sprintf("rollout id %q: want lower-case letters, digits, '.', '_' or '-', 1-63 characters", spec.ID)}}
	}
	doc := struct {
		Version  int           `yaml:"version"`
		Rollouts []RolloutSpec `yaml:"rollouts"`
	}{1, []RolloutSpec{spec}}
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "# Created through the operator API at %s.\n", now.UTC().Format(time.RFC3339))
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("create rollout %q: %w", spec.ID, err)
	}
	enc.Close()
	// Seconds, then nanoseconds, both counting down: two rollouts created in one second
	// sorted by ID before (the older could take precedence). Names from before keep
	// their order against these but in their own second.
	name := fmt.Sprintf("%s%010d-%09d-%s.yaml", CreatedPrefix, max(0, 1e10-now.Unix()), 999_999_999-now.Nanosecond(), spec.ID)
	path := filepath.Join(dir, name)
	files, err := readDir(dir)
	if err != nil && !errors.Is(err, ErrNoPolicy) {
		return nil, err
	}
	files = append(files, File{Name: path, Data: buf.Bytes()})
	sortFiles(files)
	p, err := Parse(files...)
	if err != nil {
		return nil, otherFiles(spec.ID, path, files, err)
	}
	st := &StagedRollout{Path: path, Rollout: p.Rollout(spec.ID), staged: filepath.Join(dir, StagedPrefix+name)}
	if err := durable.WriteFile(st.staged, buf.Bytes(), 0o644); err != nil {
		return nil, fmt.Errorf("create rollout %q: %w", spec.ID, err)
	}
	return st, nil
}

// ErrRejectedFiles is the category of a RejectedFilesError.
var ErrRejectedFiles = errors.New("the policy directory holds a file the server rejects")

// RejectedFilesError refuses a rollout whose own file is valid while other files of the
// policy directory are not. The watcher loads the directory as one policy, so no change
// to it (this rollout included) takes effect until those files are fixed; the server
// keeps the last good policy in force meanwhile. It is an ErrRejectedFiles.
type RejectedFilesError struct {
	Rollout string
	// Errs are the other files' problems.
	Errs ErrorList
}

func (e *RejectedFilesError) Error() string {
	lines := make([]string, len(e.Errs))
	for i, pe := range e.Errs {
		lines[i] = (&Error{Pos: Pos{File: filepath.Base(pe.File), Line: pe.Line}, Msg: pe.Msg}).Error()
	}
	return fmt.Sprintf("rollout %q not created: %v: %s. No change to the directory takes effect until it is fixed, this rollout included (the server keeps the last good policy in force): correct or remove %s (edgeward rollout status shows the rejection), then create the rollout again",
		e.Rollout, ErrRejectedFiles, strings.Join(lines, "; "), strings.Join(e.Errs.Files(), ", "))
}

func (e *RejectedFilesError) Unwrap() error { return ErrRejectedFiles }

// otherFiles turns err, of checking files (a directory's and a new rollout file, path)
// as one policy, into a *RejectedFilesError when the directory is invalid without the
// new file and no problem is in it: the rollout is fine, the directory is not (every
// creation failed with another file's error, as if it were its own: found from
// outside). Otherwise err is the new rollout's (a conflict it causes may be reported
// at the other file's line) and is returned as it is.
func otherFiles(id, path string, files []File, err error) error {
	var el ErrorList
	if !errors.As(err, &el) {
		return err
	}
	own := false
	for _, e := range el {
		own = own || e.File == path
	}
	if own {
		// The new rollout's own problems: named after it, not after a generated file
		// that was never created and whose line numbers the operator cannot see (found
		// from outside, 2 Dec). Other files' problems it causes keep their place.
		out := make(ErrorList, len(el))
		for i, e := range el {
			out[i] = e
			if e.File == path {
				out[i] = &Error{Pos: Pos{File: "rollout " + id}, Msg: strings.TrimPrefix(e.Msg, fmt.Sprintf("rollout %q: ", id))}
			}
		}
		return out
	}
	rest := slices.DeleteFunc(slices.Clone(files), func(f File) bool { return f.Name == path })
	if len(rest) == 0 {
		return err
	}
	_, derr := Parse(rest...)
	var del ErrorList
	if !errors.As(derr, &del) {
		return err
	}
	return &RejectedFilesError{Rollout: id, Errs: del}
}

// Commit puts the staged file in place (rename, directory fsync): a Watcher loads it.
func (s *StagedRollout) Commit() error {
	if err := durable.Rename(s.staged, s.Path); err != nil {
		return fmt.Errorf("create rollout %s: %w", filepath.Base(s.Path), err)
	}
	return nil
}

// Discard removes the staged file; the policy never saw it.
func (s *StagedRollout) Discard() error {
	if err := os.Remove(s.staged); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// StaleStagedAge is how old a staged rollout file must be before RemoveStaleStaged
// takes it for a crash's leftover. A creation stages its file, appends one audit
// record and renames the file, all under the publish lock, in well under a second; a
// file this old belongs to a process that died (or was stopped) between staging and
// renaming.
const StaleStagedAge = 10 * time.Minute

// RemoveStaleStaged removes from dir the staged rollout files (StagedPrefix, and the
// temporary files of their durable writes) last modified before cutoff: a process
// that crashed between StageRollout and Commit leaves one behind, which no Watcher
// loads and nothing else removes. A newer file is left alone, since another process
// sharing the directory (a replica) may be creating that rollout right now. If record
// is set it is called with each file's name before the file is removed, and a file
// whose record fails is kept (the caller audits the removal first). It returns the
// names (not paths) it removed, in directory order; files it could not record or
// remove are in the error and the rest are still removed. A missing dir removes nothing.
func RemoveStaleStaged(dir string, cutoff time.Time, record func(name string) error) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	var removed []string
	var errs []error
	for _, e := range ents {
		name := e.Name()
		// durable's temporary files are "." + the final name + ".tmp-*".
		if !e.Type().IsRegular() || !(strings.HasPrefix(name, StagedPrefix) || strings.HasPrefix(name, "."+StagedPrefix)) {
			continue
		}
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // committed or discarded meanwhile
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !fi.ModTime().Before(cutoff) {
			continue
		}
		if record != nil {
			if err := record(name); err != nil {
				errs = append(errs, fmt.Errorf("policy: %s kept: %w", name, err))
				continue
			}
		}
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
			continue
		}
		removed = append(removed, name)
	}
	if len(removed) > 0 {
		if err := durable.SyncDir(dir); err != nil {
			errs = append(errs, err)
		}
	}
	return removed, errors.Join(errs...)
}

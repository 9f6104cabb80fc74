package repository

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// ErrNotPublished is returned when a version to retire is not in the targets metadata.
var ErrNotPublished = errors.New("not published")

// ErrNothingToRetire is Retire's error when Keep leaves no version to retire: nothing
// changed, and nothing needs to (the CLI says so and succeeds).
var ErrNothingToRetire = errors.New("nothing to do")

// RetireRequest names the versions of one artifact to remove from the targets metadata.
// Exactly one of Versions and Keep is set.
type RetireRequest struct {
	Kind artifact.Kind
	Name string
	// Versions are retired; each must be published.
	Versions []string
	// Keep, if positive, retires every version but the Keep highest.
	Keep int
	// Grace is how long the retired contents stay in the blob store (SweepRetired
	// removes them afterwards). 0: DefaultRetireGrace.
	Grace time.Duration
}

// DefaultRetireGrace is how long a retired target's content is kept by default.
const DefaultRetireGrace = 30 * 24 * time.Hour

// RetiredTarget is a target that was removed from the targets metadata. The list of
// them (DIR/retired.json) lets the server recognise the measurements of devices that
// still run one (they stay trusted; nobody is offered it again).
type RetiredTarget struct {
	Path      string          `json:"path"`
	Role      string          `json:"role"`
	SHA256    string          `json:"sha256"`
	Length    int64           `json:"length"`
	Custom    json.RawMessage `json:"custom,omitempty"`
	RetiredAt time.Time       `json:"retired_at"`
	// KeepUntil is when SweepRetired may remove its content (if no listed target has
	// the same content).
	KeepUntil time.Time `json:"keep_until"`
	// Swept is set once the content was removed.
	Swept bool `json:"swept,omitempty"`
}

// Meta is the target's custom metadata, nil if it has none that parses.
func (t RetiredTarget) Meta() *artifact.Meta {
	if len(t.Custom) == 0 {
		return nil
	}
	if _, ok := artifact.ParseDelta(t.Custom); ok {
		return nil
	}
	var m artifact.Meta
	if json.Unmarshal(t.Custom, &m) != nil {
		return nil
	}
	return &m
}

// RetireResult says what Retire removed.
type RetireResult struct {
	Retired []RetiredTarget
	Version int64 // the role's new version
	// Staged is set when the role needs more signatures than the keys at hand made: the
	// retirement is staged for the role's key holders, not published (the contents
	// are listed in retired.json already, which keeps them; nothing else changed).
	Staged *Staged
}

const retiredFile = "retired.json"

// maxRetiredBytes bounds what Retired reads.
const maxRetiredBytes = 64 << 20

// Retired lists the retired targets (oldest first).
func (r *Repo) Retired() ([]RetiredTarget, error) {
	f, err := os.Open(r.path(retiredFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(io.LimitReader(f, maxRetiredBytes+1)); err != nil {
		return nil, fmt.Errorf("%s: %w", r.path(retiredFile), err)
	}
	if buf.Len() > maxRetiredBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes", r.path(retiredFile), maxRetiredBytes)
	}
	var out []RetiredTarget
	if err := json.Unmarshal(buf.Bytes(), &out); err != nil {
		return nil, fmt.Errorf("%s: %w", r.path(retiredFile), err)
	}
	return out, nil
}

func (r *Repo) writeRetired(list []RetiredTarget) error {
	data, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	return r.fs.WriteFile(r.path(retiredFile), data, 0o644)
}

// Retire removes versions of an artifact from its role's targets metadata and re-signs
// the role, the snapshot and the timestamp, so the metadata every device downloads
// stops growing with every release. A retired model's probe set is retired with it
// unless another listed target still names it. The contents stay in the blob store for
// req.Grace (a device that has it installed keeps it; its slots live on the device), and
// the retired targets are listed in DIR/retired.json, written before the new metadata
// is visible, so the server still recognises their measurements.
//
// Retiring is always allowed by the metadata bound (it only shrinks a role). Devices
// are never offered a retired target again; a rollout whose target is retired offers
// nothing.
func (r *Repo) Retire(ctx context.Context, req RetireRequest, keys *KeyRing) (*RetireResult, error) {
	if _, err := artifact.ParseKind(string(req.Kind)); err != nil {
		return nil, fmt.Errorf("retire: %w", err)
	}
	if (len(req.Versions) == 0) == (req.Keep <= 0) {
		return nil, errors.New("retire: give the versions to retire or how many to keep (not both)")
	}
	grace := req.Grace
	if grace <= 0 {
		grace = DefaultRetireGrace
	}
	role := req.Kind.Role()
	res := &RetireResult{}
	var prev []RetiredTarget
	wrote := false
	var tsBefore int64 // timestamp.json's version when the change began
	staged, err := r.updateOrStage(ctx, keys, func(t *txn) error {
		tsBefore = t.st.Timestamp.Signed.Version
		rm, ok := t.st.Targets[role]
		if !ok {
			return fmt.Errorf("retire: no delegated role %q", role)
		}
		type listed struct {
			path string
			v    artifact.Version
		}
		var mine []listed
		for p := range rm.Signed.Targets {
			k, name, ver, err := artifact.ParseTargetPath(p)
			if err != nil || k != req.Kind || name != req.Name {
				continue
			}
			v, err := artifact.ParseVersion(ver)
			if err != nil {
				continue
			}
			mine = append(mine, listed{p, v})
		}
		sort.Slice(mine, func(i, j int) bool { return mine[i].v.Compare(mine[j].v) < 0 })
		var paths []string
		if req.Keep > 0 {
			for i := 0; i < len(mine)-req.Keep; i++ {
				paths = append(paths, mine[i].path)
			}
			if len(paths) == 0 {
				return fmt.Errorf("retire %s %s: %d versions listed, none beyond the %d to keep: %w", req.Kind, req.Name, len(mine), req.Keep, ErrNothingToRetire)
			}
		} else {
			for _, want := range req.Versions {
				found := ""
				for _, l := range mine {
					if l.v.String() == want {
						found = l.path
					}
				}
				if found == "" {
					return fmt.Errorf("retire %s %s %s: %w", req.Kind, req.Name, want, ErrNotPublished)
				}
				paths = append(paths, found)
			}
		}
		// A retired model's probe set goes too, unless a target still listed names it.
		for _, p := range paths {
			tf := rm.Signed.Targets[p]
			if tf.Custom == nil {
				continue
			}
			var m artifact.Meta
			if json.Unmarshal(*tf.Custom, &m) != nil || m.Probe == "" || slices.Contains(paths, m.Probe) {
				continue
			}
			if _, ok := rm.Signed.Targets[m.Probe]; ok && !probeNamedByOthers(rm.Signed.Targets, m.Probe, paths) {
				paths = append(paths, m.Probe)
			}
		}
		// Deltas to or from a retired version go with it.
		for p, tf := range rm.Signed.Targets {
			if tf.Custom == nil || slices.Contains(paths, p) {
				continue
			}
			if d, ok := artifact.ParseDelta(*tf.Custom); ok && (slices.Contains(paths, d.Base.Path) || slices.Contains(paths, d.Result.Path)) {
				paths = append(paths, p)
			}
		}
		now := r.now().UTC().Truncate(time.Second)
		list, err := r.Retired()
		if err != nil {
			return err
		}
		prev = slices.Clone(list)
		for _, p := range paths {
			tf := rm.Signed.Targets[p]
			rt := RetiredTarget{Path: p, Role: role, SHA256: hex.EncodeToString(tf.Hashes["sha256"]), Length: tf.Length,
				RetiredAt: now, KeepUntil: now.Add(grace)}
			if tf.Custom != nil {
				rt.Custom = append(json.RawMessage(nil), *tf.Custom...)
			}
			res.Retired = append(res.Retired, rt)
			list = append(list, rt)
			delete(rm.Signed.Targets, p)
			t.record("retire", p, map[string]any{"path": p, "role": role, "sha256": rt.SHA256, "length": rt.Length, "keep_until": rt.KeepUntil})
		}
		t.touch(role)
		// Before the new metadata is visible: the server must know the retired
		// contents by the time devices stop finding them listed.
		wrote = true
		return r.writeRetired(list)
	})
	if err != nil && wrote && !r.wentLive(tsBefore) {
		// The metadata did not change (a missing key, a failed write): neither does
		// the list. (When it did, and only a step after timestamp.json failed, the
		// list stays: devices running the retired contents must still be recognised.)
		if rerr := r.writeRetired(prev); rerr != nil {
			r.log.Warn("restore the retired list after a failed retire", "err", rerr)
		}
	}
	if err != nil {
		return nil, err
	}
	if staged != nil {
		res.Staged, res.Version = staged, staged.Version(role)
		return res, nil
	}
	if st, lerr := r.Load(ctx); lerr == nil {
		res.Version = st.Targets[role].Signed.Version
	}
	return res, nil
}

// wentLive reports whether timestamp.json has moved past version before: a change that
// failed after that point is visible (its files stay, txn.rollback), and what it wrote
// beside the metadata must stay with it.
func (r *Repo) wentLive(before int64) bool {
	ts, err := loadMeta(r.MetadataDir(), "timestamp.json", metadata.Timestamp(), nil)
	return err == nil && ts.Signed.Version > before
}

// probeNamedByOthers reports whether a listed target other than those in retiring names
// probe as its probe set.
func probeNamedByOthers(targets map[string]*metadata.TargetFiles, probe string, retiring []string) bool {
	for p, tf := range targets {
		if slices.Contains(retiring, p) || tf.Custom == nil {
			continue
		}
		var m artifact.Meta
		if json.Unmarshal(*tf.Custom, &m) == nil && m.Probe == probe {
			return true
		}
	}
	return false
}

// SweepRetired removes the contents of retired targets whose grace period ended before
// now, unless a listed target has the same content, and marks them swept. It takes the
// repository lock.
func (r *Repo) SweepRetired(ctx context.Context, now time.Time) (files int, size int64, err error) {
	unlock, err := r.lock(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer unlock()
	list, err := r.Retired()
	if err != nil || len(list) == 0 {
		return 0, 0, err
	}
	st, err := r.Load(ctx)
	if err != nil {
		return 0, 0, err
	}
	live := map[string]bool{}
	for _, ti := range st.List() {
		live[ti.SHA256] = true
	}
	changed := false
	for i := range list {
		rt := &list[i]
		if rt.Swept || now.Before(rt.KeepUntil) {
			continue
		}
		rt.Swept, changed = true, true
		if live[rt.SHA256] {
			continue
		}
		fi, err := os.Stat(r.BlobPath(rt.SHA256))
		if err != nil {
			continue
		}
		if err := os.Remove(r.BlobPath(rt.SHA256)); err != nil {
			return files, size, err
		}
		files++
		size += fi.Size()
	}
	if !changed {
		return 0, 0, nil
	}
	return files, size, r.writeRetired(list)
}

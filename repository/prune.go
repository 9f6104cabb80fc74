package repository

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// KeepMetadata is how many versions of each role's metadata besides root PruneMetadata
// keeps (the current one included), and MetadataGrace how long it keeps any version
// after it was written, whatever its number: a client or a mirror that read the
// timestamp a moment before a publish still finds the snapshot and roles it names.
const (
	KeepMetadata  = 10
	MetadataGrace = 24 * time.Hour
)

var versionedRE = regexp.MustCompile(`^([1-9][0-9]{0,9})\.(.+)\.json$`)

// PruneMetadata removes the versioned metadata files of the snapshot and the targets
// roles (N.snapshot.json, N.models.json, …) older than the KeepMetadata newest of their
// role and written more than MetadataGrace before now. Root versions are never removed:
// a client walks the chain of roots from the one it trusts. Every publish writes a whole
// new copy of its role, and nothing removed the old ones: about 190 small publishes left
// 378 files, and at 2,500 releases of a 2 MiB role they would take some 2.5 GB (found
// from outside, 2 Dec). It runs under the repository's lock; a role the metadata no
// longer names is left as it is.
func (r *Repo) PruneMetadata(ctx context.Context, now time.Time) (files int, size int64, err error) {
	unlock, err := r.lock(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer unlock()
	st, err := r.Load(ctx)
	if err != nil {
		return 0, 0, err
	}
	current := map[string]int64{metadata.SNAPSHOT: st.Snapshot.Signed.Version}
	for role, md := range st.Targets {
		current[role] = md.Signed.Version
	}
	entries, err := os.ReadDir(r.MetadataDir())
	if err != nil {
		return 0, 0, fmt.Errorf("prune metadata: %w", err)
	}
	var errs []error
	for _, e := range entries {
		m := versionedRE.FindStringSubmatch(e.Name())
		if m == nil || e.IsDir() || m[2] == metadata.ROOT {
			continue
		}
		cur, ok := current[m[2]]
		v, _ := strconv.ParseInt(m[1], 10, 64)
		if !ok || v > cur-KeepMetadata {
			continue
		}
		info, err := e.Info()
		if err != nil || now.Sub(info.ModTime()) < MetadataGrace {
			continue
		}
		if err := os.Remove(filepath.Join(r.MetadataDir(), e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		files++
		size += info.Size()
	}
	return files, size, errors.Join(errs...)
}

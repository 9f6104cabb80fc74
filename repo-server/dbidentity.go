package reposerver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/edgeward/edgeward/internal/durable"
	"github.com/edgeward/edgeward/repo-server/fleet"
)

// DatabaseMarker is the file in the repository directory that names the database the
// repository is served with (fleet.Store.ID). Back it up with the directory.
const DatabaseMarker = "fleet-database.id"

// ErrOtherDatabase: the server was started on a database other than the one its
// repository directory was served with.
var ErrOtherDatabase = errors.New("the fleet database is not the one this repository was served with")

// checkDatabase holds the database the server opened against the repository
// directory's DatabaseMarker. The first start writes the marker. A database with
// another identity (an empty one made by a mistyped --db or a deleted fleet.db, or
// another fleet's) is refused unless fresh (--new-database), which rewrites the
// marker: started on it silently, the server forgot every device, token and rollout
// state, began a new audit log and would start again a rollout the operator had
// paused (found from outside, 2 Dec).
func checkDatabase(ctx context.Context, dir string, store *fleet.Store, where string, fresh bool, log *slog.Logger) error {
	id, made, err := store.Identity(ctx)
	if err != nil {
		return err
	}
	path := filepath.Join(dir, DatabaseMarker)
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read %s: %w", path, err)
	}
	want := strings.TrimSpace(string(data))
	switch {
	case want == id:
		return nil
	case want != "" && !fresh && made:
		if full, err := store.HoldsData(ctx); err == nil && full {
			// Not an empty database: one from before identities, as a backup taken
			// before the upgrade that brought them (found in review).
			return fmt.Errorf("%w: %s holds a fleet but had no database ID (%s names %s): it was written by a server from before database IDs, as a backup taken before the upgrade. "+
				"If it is this repository's database, start once with --new-database: it keeps what the database holds, and %s names it from then on",
				ErrOtherDatabase, fleet.Redacted(where), path, want, DatabaseMarker)
		}
		fallthrough
	case want != "" && !fresh:
		return fmt.Errorf("%w: %s has database ID %s, while %s names %s. It was replaced, emptied or lost (a mistyped --db or $EDGEWARD_DB, a deleted fleet.db). "+
			"Point --db at the database this repository was served with, or restore it from its backup (docs/OPERATORS.md, \"Backups and restore\"). "+
			"To serve this repository from this database for good (empty: a new audit log, no devices, tokens or rollout states), start once with --new-database",
			ErrOtherDatabase, fleet.Redacted(where), id, path, want)
	case want != "":
		log.Warn("serving the repository from a new database (--new-database): devices, tokens, rollout states and the audit log start again", "database_id", id, "was", want)
	}
	if err := durable.WriteFile(path, []byte(id+"\n"), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

package reposerver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

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
	path := filepath.Join(dir, DatabaseMarker)
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read %s: %w", path, err)
	}
	want := strings.TrimSpace(string(data))
	// Refused, a start leaves the database as it found it: an ID is made only for a
	// database the directory takes (a first start, or --new-database).
	id, err := store.ReadID(ctx)
	if err != nil {
		return err
	}
	made := id == ""
	if made && (want == "" || fresh) {
		if id, err = store.ID(ctx); err != nil {
			return err
		}
	}
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
		has := "database ID " + id
		if id == "" {
			has = "no database ID (a new, empty database)"
		}
		return fmt.Errorf("%w: %s has %s, while %s names %s. It was replaced, emptied or lost (a mistyped --db or $EDGEWARD_DB, a deleted fleet.db). "+
			"Point --db at the database this repository was served with, or restore it from its backup (docs/OPERATORS.md, \"Backups and restore\"). "+
			"To serve this repository from this database for good (empty: a new audit log, no devices, tokens or rollout states), start once with --new-database",
			ErrOtherDatabase, fleet.Redacted(where), has, path, want)
	case want != "":
		log.Warn("serving the repository from another database (--new-database), with what it holds", "database_id", id, "was", want)
	}
	if err := durable.WriteFile(path, []byte(id+"\n"), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// guardLostDatabase refuses to open the database at where (creating or migrating it)
// when the repository directory names the database it is served with (DatabaseMarker)
// and the database at where is new: a sqlite file missing or empty, a PostgreSQL
// database with no table. It was deleted or emptied, or --db names another one, and a
// new one made there, by the CLI as by the server, would hide that and hold little
// enough to pass for the real one (found from outside, 2 Dec: 'token create --repo'
// then 'audit export --repo' made a fleet.db of one token and one record over the
// emptied one). A PostgreSQL database is left as it was found: its tables were created
// before checkDatabase refused it. Any other database is checked by its ID once open
// (checkDatabase).
func guardLostDatabase(ctx context.Context, dir, where string) error {
	marker := filepath.Join(dir, DatabaseMarker)
	want, err := os.ReadFile(marker)
	if err != nil {
		return nil // no marker (a first start, or a repository from before them)
	}
	what := "is missing or empty"
	if fleet.IsPostgres(where) {
		if !emptyPostgres(ctx, where) {
			return nil
		}
		what = "is a new database with no table"
	} else if st, err := os.Stat(where); err == nil && st.Size() > 0 {
		return nil
	}
	return fmt.Errorf("%w: %s %s, while %s names database %s: it was deleted, emptied or mistyped. "+
		"Point --db at the database this repository was served with, or restore it from its backup (docs/OPERATORS.md, \"Backups and restore\"); nothing was created in it. "+
		"To serve this repository from a new, empty database for good (a new audit log; no devices, tokens or rollout states), start the server once with --new-database",
		ErrOtherDatabase, fleet.Redacted(where), what, marker, strings.TrimSpace(string(want)))
}

// emptyPostgres reports whether the PostgreSQL database at where answers and has no
// table in its schema. One that does not answer is not called empty: opening it
// then fails with its own error.
func emptyPostgres(ctx context.Context, where string) bool {
	db, err := fleet.OpenPostgres(where)
	if err != nil {
		return false
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var n int
	err = db.QueryRowContext(ctx, `SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()`).Scan(&n)
	return err == nil && n == 0
}

package repository

import (
	"context"
	"fmt"
)

// Recorder receives the repository's events: init, publish, refresh, root proposals and
// publications, key rotations. The server records them in its audit log; the
// repository itself opens no database.
//
// Events are recorded before the change they describe becomes visible: before
// timestamp.json (for every metadata change), before a root proposal is written, and
// before edgeward-repo.json marks a new repository complete. If Record fails, the
// operation fails and nothing visible has changed (fail closed). If a later write
// fails, the log holds the record of a change that did not take effect, and the
// operation's error says so; a change never takes effect without its record.
type Recorder interface {
	// Record appends one event. kind is "repo.<action>" ("repo.publish"), subject
	// what it acted on (a target path, "root v3", a role), data its details (JSON-encodable).
	Record(ctx context.Context, actor, kind, subject string, data any) error
}

// event is one record the repository makes.
type event struct {
	action, subject string
	data            map[string]any
}

// record hands ev to the configured Recorder (none: nothing is recorded).
func (r *Repo) record(ctx context.Context, ev event) error {
	if r.cfg.Recorder == nil {
		return nil
	}
	if err := r.cfg.Recorder.Record(ctx, r.cfg.Actor, "repo."+ev.action, ev.subject, ev.data); err != nil {
		return fmt.Errorf("record repo.%s %s: %w", ev.action, ev.subject, err)
	}
	return nil
}

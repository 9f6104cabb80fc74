// Package logging makes the one slog logger of a binary, in the format its operator
// chose, so that a binary's log is one format whatever writes into it. Stdlib only.
package logging

import (
	"fmt"
	"io"
	"log/slog"
)

// Formats are the accepted formats: JSON (one object a line, for collectors) and text
// (slog's key=value lines, for people).
const (
	JSON = "json"
	Text = "text"
)

// New returns a logger writing format to w at level Info.
func New(w io.Writer, format string) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	switch format {
	case JSON:
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case Text:
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: want %s or %s", format, JSON, Text)
}

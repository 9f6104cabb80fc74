package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/edgeward/edgeward/updater"
)

type repeated []string

func (r *repeated) String() string     { return strings.Join(*r, ",") }
func (r *repeated) Set(s string) error { *r = append(*r, s); return nil }

// tufClient implements the tuf-conformance client-under-test CLI: flags come before the
// command; exit status 0 on success and 1 on any failure.
func tufClient(ctx context.Context, args []string, stdout io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet("tuf-client", flag.ContinueOnError)
	var (
		metadataDir = fs.String("metadata-dir", "", "directory of trusted metadata")
		metadataURL = fs.String("metadata-url", "", "repository metadata URL")
		targetBase  = fs.String("target-base-url", "", "repository targets URL")
		targetDir   = fs.String("target-dir", "", "directory for downloaded targets")
		names       repeated
	)
	fs.Var(&names, "target-name", "target path to download (repeatable, processed in order)")
	fs.Bool("verbose", false, "ignored: the client always logs to stderr")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return errors.New("want a command: init ROOT, refresh or download")
	}
	if *metadataDir == "" {
		return errors.New("--metadata-dir is required")
	}
	switch rest[0] {
	case "init":
		if len(rest) != 2 {
			return errors.New("usage: --metadata-dir DIR init TRUSTED_ROOT")
		}
		root, err := updater.ReadRegular(rest[1], updater.MaxRootBytes)
		if err != nil {
			return err
		}
		return updater.PinRoot(*metadataDir, root)
	case "refresh", "download":
		if len(rest) != 1 {
			return fmt.Errorf("unexpected arguments after %s: %q", rest[0], rest[1:])
		}
	default:
		return fmt.Errorf("unknown command %q", rest[0])
	}
	if *metadataURL == "" {
		return errors.New("--metadata-url is required")
	}
	// The suite fakes the time with faketime, which Go's clock does not see; date(1) does.
	now := referenceTime(ctx)
	dl := &updater.Downloader{Retry: updater.Backoff{Attempts: 1}, NoResume: true, Logger: log}
	c, err := updater.NewTUF(updater.TUFConfig{
		MetadataDir: *metadataDir, MetadataURL: *metadataURL, TargetsURL: *targetBase,
		Now: func() time.Time { return now }, Downloader: dl,
	})
	if err != nil {
		return err
	}
	if err := c.Refresh(ctx); err != nil {
		return err
	}
	log.Info("refreshed metadata", "dir", *metadataDir)
	if rest[0] == "refresh" {
		return nil
	}
	if *targetDir == "" || len(names) == 0 {
		return errors.New("download needs --target-dir and at least one --target-name")
	}
	if err := os.MkdirAll(*targetDir, 0o755); err != nil {
		return err
	}
	for _, name := range names {
		tf, err := c.Target(ctx, name)
		if err != nil {
			return err
		}
		dst := filepath.Join(*targetDir, url.QueryEscape(name))
		cached, err := c.Download(ctx, tf, dst)
		if err != nil {
			return fmt.Errorf("target %s: %w", name, err)
		}
		fmt.Fprintf(stdout, "%s: %s (cached: %v)\n", name, dst, cached)
	}
	return nil
}

// referenceTime is the time date(1) reports, falling back to the Go clock.
func referenceTime(ctx context.Context) time.Time {
	out, err := exec.CommandContext(ctx, "date", "+%s").Output()
	if err == nil {
		if s, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64); err == nil {
			return time.Unix(s, 0)
		}
	}
	return time.Now()
}

// Command gotufdl is the go-tuf peer of the install benchmark: a client written on go-tuf
// v2's updater as its README shows it (Refresh, GetTargetInfo, DownloadTarget), which
// reads a target into memory, verifies it, and writes it to a file.
//
//	gotufdl METADATA_URL TARGETS_URL ROOT_FILE METADATA_DIR TARGET_PATH OUT_FILE
package main

import (
	"fmt"
	"os"

	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"
)

func main() {
	if len(os.Args) != 7 {
		fmt.Fprintln(os.Stderr, "usage: gotufdl METADATA_URL TARGETS_URL ROOT_FILE METADATA_DIR TARGET_PATH OUT_FILE")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2], os.Args[3], os.Args[4], os.Args[5], os.Args[6]); err != nil {
		fmt.Fprintln(os.Stderr, "gotufdl:", err)
		os.Exit(1)
	}
}

func run(metadataURL, targetsURL, rootFile, metadataDir, target, out string) error {
	root, err := os.ReadFile(rootFile)
	if err != nil {
		return err
	}
	cfg, err := config.New(metadataURL, root)
	if err != nil {
		return err
	}
	cfg.LocalMetadataDir, cfg.LocalTargetsDir = metadataDir, metadataDir
	cfg.RemoteTargetsURL, cfg.PrefixTargetsWithHash = targetsURL, true
	if err := os.MkdirAll(metadataDir, 0o755); err != nil {
		return err
	}
	up, err := updater.New(cfg)
	if err != nil {
		return err
	}
	if err := up.Refresh(); err != nil {
		return fmt.Errorf("refresh: %w", err)
	}
	tf, err := up.GetTargetInfo(target)
	if err != nil {
		return fmt.Errorf("target %s: %w", target, err)
	}
	if _, _, err := up.DownloadTarget(tf, out, ""); err != nil {
		return fmt.Errorf("download %s: %w", target, err)
	}
	return nil
}

package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/edgeward/edgeward/internal/artifact"
	reposerver "github.com/edgeward/edgeward/repo-server"
	"github.com/edgeward/edgeward/repo-server/audit"
	"github.com/edgeward/edgeward/runtime/modelgen"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"
)

// demo is the demonstration scenario. It works in its own folder, which it recreates,
// with demo keys whose passphrase is printed: never use them for anything else.
type demo struct {
	env     *cliEnv
	dir     string
	devices int
	repo    *reposerver.Repo
	url     string
	kr      *reposerver.KeyRing
	step    int
}

const demoPassphrase = "edgeward-demo-only"

func cmdDemo(ctx context.Context, env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	d := &demo{env: env}
	fs.StringVar(&d.dir, "dir", "demo-data", "working folder (recreated)")
	fs.IntVar(&d.devices, "devices", 5, "number of devices")
	serve := fs.Bool("serve", false, "keep serving after the scenario")
	listen := fs.String("listen", "127.0.0.1:0", "server address")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if d.devices < 1 {
		return errors.New("--devices must be at least 1")
	}
	if err := d.run(ctx, *listen, *serve); err != nil {
		return fmt.Errorf("demo failed at step %d: %w", d.step, err)
	}
	return nil
}

func (d *demo) say(format string, a ...any) {
	d.step++
	fmt.Fprintf(d.env.stdout, "[%d] %s\n", d.step, fmt.Sprintf(format, a...))
}

func (d *demo) run(ctx context.Context, listen string, serve bool) error {
	if err := os.RemoveAll(d.dir); err != nil {
		return err
	}
	repoDir := filepath.Join(d.dir, "repo")
	d.say("security team creates the TUF repository in %s (root 2-of-3, delegated roles models and runtimes; demo passphrase %q)", repoDir, demoPassphrase)
	res, err := reposerver.Init(ctx, reposerver.Config{Dir: repoDir, Actor: "demo:security"}, reposerver.InitOptions{Passphrase: []byte(demoPassphrase)})
	if err != nil {
		return err
	}
	d.repo = res.Repo
	d.kr = &reposerver.KeyRing{Passphrase: func() ([]byte, error) { return []byte(demoPassphrase), nil }}
	rootKeys := res.KeyFiles[metadata.ROOT]

	srv, err := reposerver.NewServer(reposerver.ServerConfig{Repo: d.repo})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	go srv.Serve(sctx, ln)
	d.url = "http://" + ln.Addr().String()
	d.say("repository server listening on %s", d.url)

	root1, err := os.ReadFile(filepath.Join(d.repo.MetadataDir(), "1.root.json"))
	if err != nil {
		return err
	}
	devs := make([]*demoDevice, d.devices)
	for i := range devs {
		devs[i] = &demoDevice{id: fmt.Sprintf("device-%d", i+1), dir: filepath.Join(d.dir, "devices", fmt.Sprintf("device-%d", i+1)), root: root1}
	}

	d.say("release manager publishes probe set and model vibration-anomaly 1.0.0 (a real ONNX model) with gates")
	if err := d.publishModel(ctx, "1.0.0"); err != nil {
		return err
	}
	if err := d.fleetFetch(ctx, devs, "models/vibration-anomaly/1.0.0.onnx"); err != nil {
		return err
	}

	d.say("security team rotates the timestamp key: root v2 proposed, signed by 2 of 3 root key holders, published")
	rot, err := d.repo.RotateKey(ctx, metadata.TIMESTAMP, reposerver.KeyEd25519, "", &reposerver.KeyRing{})
	if err != nil {
		return err
	}
	for _, kf := range rootKeys[:2] {
		k, err := d.kr.Load(kf)
		if err != nil {
			return err
		}
		if _, err := reposerver.SignRootFile(nil, rot.Proposal, k); err != nil {
			return err
		}
	}
	if _, err := d.repo.PublishRoot(ctx, rot.Proposal, d.kr); err != nil {
		return err
	}

	d.say("release manager publishes vibration-anomaly 1.1.0")
	if err := d.publishModel(ctx, "1.1.0"); err != nil {
		return err
	}
	if err := d.fleetFetch(ctx, devs, "models/vibration-anomaly/1.1.0.onnx"); err != nil {
		return err
	}

	d.say("someone republishes 1.1.0 with other bytes: refused")
	_, err = d.repo.Publish(ctx, reposerver.PublishRequest{
		Meta: artifact.Meta{Kind: artifact.KindModel, Name: "vibration-anomaly", Version: "1.1.0", Format: "onnx"},
		Ext:  ".onnx", Content: strings.NewReader("tampered"),
	}, d.kr)
	if !errors.Is(err, reposerver.ErrConflict) {
		return fmt.Errorf("republish with other bytes = %v; want a conflict", err)
	}
	fmt.Fprintf(d.env.stdout, "    refused: %v\n", err)

	d.say("auditor exports the audit log and verifies it offline with the checkpoint key alone")
	auditFile := filepath.Join(d.dir, "audit.jsonl")
	if err := d.verifyAudit(ctx, auditFile); err != nil {
		return err
	}

	st, err := d.repo.Load(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintln(d.env.stdout, "\nSummary")
	tw := tabwriter.NewWriter(d.env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tROOT\tTIMESTAMP\tMODEL\tSHA256\tVERIFIED")
	for _, dv := range devs {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\n", dv.id, dv.rootVersion, dv.tsVersion, dv.model, dv.sha[:16], "yes (TUF)")
	}
	tw.Flush()
	fmt.Fprintf(d.env.stdout, "\nrepository: root v%d, timestamp v%d, %d targets; events in %s\n",
		st.Root.Signed.Version, st.Timestamp.Signed.Version, len(st.List()), filepath.Join(repoDir, "repo.db"))
	fmt.Fprintf(d.env.stdout, "metadata: %s/metadata/timestamp.json   metrics: %s/metrics\n", d.url, d.url)
	if serve {
		fmt.Fprintln(d.env.stdout, "serving until interrupted")
		<-ctx.Done()
	}
	return nil
}

func (d *demo) verifyAudit(ctx context.Context, file string) error {
	l, db, err := d.repo.OpenAudit(ctx)
	if err != nil {
		return err
	}
	defer db.Close()
	var buf bytes.Buffer
	if err := l.Export(ctx, &buf); err != nil {
		return err
	}
	if err := os.WriteFile(file, buf.Bytes(), 0o644); err != nil {
		return err
	}
	rep, err := audit.Verify(bytes.NewReader(buf.Bytes()), l.PublicKey())
	if err != nil {
		return fmt.Errorf("audit export does not verify: %w", err)
	}
	fmt.Fprintf(d.env.stdout, "    %s: %d records, %d signed checkpoints, all covered\n", file, rep.Records, rep.Checkpoints)
	return nil
}

func (d *demo) publishModel(ctx context.Context, version string) error {
	probe, err := modelgen.ProbeSet(version)
	if err != nil {
		return err
	}
	model, err := modelgen.Model(version)
	if err != nil {
		return err
	}
	if _, err := d.repo.Publish(ctx, reposerver.PublishRequest{
		Meta: artifact.Meta{Kind: artifact.KindProbe, Name: "vibration-anomaly", Version: version, Format: "json"},
		Ext:  ".json", Content: bytes.NewReader(probe),
	}, d.kr); err != nil {
		return err
	}
	res, err := d.repo.Publish(ctx, reposerver.PublishRequest{
		Meta: artifact.Meta{Kind: artifact.KindModel, Name: "vibration-anomaly", Version: version, Format: "onnx",
			Gates: &artifact.Gates{MinAccuracy: 0.9, MaxP99Ms: 50, MaxRSSMB: 512}, Hardware: []string{"x86_64", "aarch64"}, MinRuntime: "1.24.0"},
		Ext: ".onnx", Content: bytes.NewReader(model),
	}, d.kr)
	if err != nil {
		return err
	}
	fmt.Fprintf(d.env.stdout, "    published %s (%d bytes, sha256 %s…) signed by %s\n", res.Path, res.Length, res.SHA256[:16], res.Role)
	return nil
}

// demoDevice is a TUF client with its own trusted-metadata cache.
type demoDevice struct {
	id, dir     string
	root        []byte
	rootVersion int64
	tsVersion   int64
	model, sha  string
}

func (d *demo) fleetFetch(ctx context.Context, devs []*demoDevice, target string) error {
	for _, dv := range devs {
		if err := dv.fetch(d.url, target); err != nil {
			return fmt.Errorf("%s: %w", dv.id, err)
		}
	}
	fmt.Fprintf(d.env.stdout, "    %d devices refreshed TUF metadata (root v%d) and downloaded and verified %s\n", len(devs), devs[0].rootVersion, target)
	return nil
}

func (dv *demoDevice) fetch(url, target string) error {
	mdir := filepath.Join(dv.dir, "metadata")
	if err := os.MkdirAll(mdir, 0o755); err != nil {
		return err
	}
	root := dv.root
	if b, err := os.ReadFile(filepath.Join(mdir, "root.json")); err == nil {
		root = b
	}
	cfg, err := config.New(url+"/metadata", root)
	if err != nil {
		return err
	}
	cfg.RemoteTargetsURL = url + "/targets"
	cfg.LocalMetadataDir = mdir
	cfg.LocalTargetsDir = filepath.Join(dv.dir, "targets")
	up, err := updater.New(cfg)
	if err != nil {
		return err
	}
	if err := up.Refresh(); err != nil {
		return fmt.Errorf("refresh: %w", err)
	}
	tf, err := up.GetTargetInfo(target)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.LocalTargetsDir, 0o755); err != nil {
		return err
	}
	path, data, err := up.DownloadTarget(tf, filepath.Join(cfg.LocalTargetsDir, filepath.Base(target)), "")
	if err != nil {
		return err
	}
	if err := tf.VerifyLengthHashes(data); err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	n, _ := io.Copy(io.Discard, f)
	if n != tf.Length {
		return fmt.Errorf("stored %d bytes; TUF says %d", n, tf.Length)
	}
	trusted := up.GetTrustedMetadataSet()
	dv.rootVersion = trusted.Root.Signed.Version
	dv.tsVersion = trusted.Timestamp.Signed.Version
	dv.model = target
	dv.sha = hex.EncodeToString(tf.Hashes["sha256"])
	return nil
}

package repository

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/delta"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// madeDelta is a delta made before the publish transaction, waiting in the incoming
// directory.
type madeDelta struct {
	DeltaResult
	incoming string
	meta     artifact.Delta
}

// makeDeltas makes, outside the repository lock, a delta to the new target (its
// content at incoming) from each of the req.Deltas newest earlier versions of the same
// kind and name, and keeps those under req.DeltaMaxRatio of the full target. A delta
// that cannot be made is skipped with its reason (the full target is published all the
// same); only a cancelled context fails the publish.
func (r *Repo) makeDeltas(ctx context.Context, req PublishRequest, role, tpath, incoming, sum string, n int64) ([]madeDelta, error) {
	k := req.Deltas
	if k == 0 {
		k = DefaultDeltas
	}
	ratio := req.DeltaMaxRatio
	if ratio <= 0 {
		ratio = DefaultDeltaMaxRatio
	}
	m := req.Meta
	if k < 0 || (m.Kind != artifact.KindModel && m.Kind != artifact.KindRuntime) || req.KEK != nil {
		// An encrypted target is ciphertext under a fresh content key: nothing to share.
		return nil, nil
	}
	st, err := r.Load(ctx)
	if err != nil {
		return nil, err
	}
	rm, ok := st.Targets[role]
	if !ok {
		return nil, nil // publishLocked says why
	}
	if tf, ok := rm.Signed.Targets[tpath]; ok && hex.EncodeToString(tf.Hashes["sha256"]) == sum {
		return nil, nil // unchanged: its deltas were made when it was published
	}
	newV, _ := artifact.ParseVersion(m.Version)
	type base struct {
		path, sha string
		length    int64
		v         artifact.Version
	}
	var bases []base
	for p, tf := range rm.Signed.Targets {
		kk, name, ver, err := artifact.ParseTargetPath(p)
		if err != nil || kk != m.Kind || name != m.Name {
			continue
		}
		v, err := artifact.ParseVersion(ver)
		if err != nil || v.Compare(newV) >= 0 {
			continue
		}
		var bm artifact.Meta
		if tf.Custom != nil && json.Unmarshal(*tf.Custom, &bm) == nil && bm.Encryption != nil {
			continue // ciphertext: a device holds no plaintext base on disk
		}
		bases = append(bases, base{p, hex.EncodeToString(tf.Hashes["sha256"]), tf.Length, v})
	}
	sort.Slice(bases, func(i, j int) bool { return bases[i].v.Compare(bases[j].v) > 0 })
	if len(bases) > k {
		bases = bases[:k]
	}
	var out []madeDelta
	for _, b := range bases {
		d, err := r.makeDelta(ctx, b.path, b.sha, b.length, tpath, incoming, sum, n)
		if err != nil {
			if ctx.Err() != nil {
				return out, ctx.Err()
			}
			r.log.Warn("no delta made", "target", tpath, "base", b.path, "err", err)
			out = append(out, madeDelta{DeltaResult: DeltaResult{Base: b.path, Skipped: err.Error()}})
			continue
		}
		if float64(d.Length) >= ratio*float64(n) {
			os.Remove(d.incoming)
			d.incoming = ""
			d.Skipped = fmt.Sprintf("%d bytes, not under %.0f %% of the %d-byte target", d.Length, 100*ratio, n)
			d.Path, d.SHA256 = "", ""
		}
		out = append(out, d)
	}
	return out, nil
}

func (r *Repo) makeDelta(ctx context.Context, basePath, baseSHA string, baseLen int64, tpath, incoming, sum string, n int64) (madeDelta, error) {
	bf, err := os.Open(r.BlobPath(baseSHA))
	if err != nil {
		return madeDelta{}, fmt.Errorf("base content: %w", err)
	}
	defer bf.Close()
	tf, err := os.Open(incoming)
	if err != nil {
		return madeDelta{}, err
	}
	defer tf.Close()
	pr, pw := io.Pipe()
	go func() {
		_, err := delta.Diff(ctx, bf, tf, pw)
		pw.CloseWithError(err)
	}()
	path, dsum, dn, err := r.receiveBlob(ctx, pr)
	pr.Close()
	if err != nil {
		return madeDelta{}, err
	}
	d := artifact.Delta{Method: delta.MethodCDC,
		Base:   artifact.DeltaRef{Path: basePath, SHA256: baseSHA, Length: baseLen},
		Result: artifact.DeltaRef{Path: tpath, SHA256: sum, Length: n}}
	return madeDelta{DeltaResult: DeltaResult{Path: artifact.DeltaPath(tpath, baseSHA), Base: basePath, Length: dn, SHA256: dsum}, incoming: path, meta: d}, nil
}

// addDelta lists d in the role's targets (in the publish transaction).
func (r *Repo) addDelta(t *txn, targets map[string]*metadata.TargetFiles, d madeDelta) error {
	custom, err := json.Marshal(artifact.DeltaCustom{Delta: &d.meta})
	if err != nil {
		return err
	}
	raw := json.RawMessage(custom)
	digest, _ := hex.DecodeString(d.SHA256)
	if _, err := os.Stat(r.BlobPath(d.SHA256)); err != nil {
		t.create(r.BlobPath(d.SHA256))
	}
	if err := r.fs.Rename(d.incoming, r.BlobPath(d.SHA256)); err != nil {
		return fmt.Errorf("store delta blob: %w", err)
	}
	targets[d.Path] = &metadata.TargetFiles{Length: d.Length, Hashes: metadata.Hashes{"sha256": digest}, Custom: &raw, Path: d.Path}
	t.record("publish", d.Path, map[string]any{"path": d.Path, "sha256": d.SHA256, "length": d.Length, "delta": d.meta})
	return nil
}

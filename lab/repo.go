package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
	reposerver "github.com/edgeward/edgeward/repo-server"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repository"
	"github.com/edgeward/edgeward/runtime/modelgen"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// Model is the name under which the lab publishes modelgen's vibration-anomaly models.
const Model = "vibration-anomaly"

// Repo is a TUF repository with its offline keys at hand (the security team's and
// release manager's view) and its policy directory.
type Repo struct {
	Dir       string
	PolicyDir string
	Repo      *repository.Repo
	Keys      *repository.KeyRing
	// RootKeys are the root key files (offline, encrypted): three, threshold two.
	RootKeys []string

	mu       sync.Mutex
	lastRoll time.Time
}

// InitRepo creates a repository (root 2-of-3, delegated models and runtimes roles) whose
// offline keys are encrypted with passphrase, and a policy directory holding
// policyYAML as 00-attestation.yaml.
func InitRepo(ctx context.Context, dir, passphrase, policyYAML string) (*Repo, error) {
	return InitRepoOn(ctx, dir, "", passphrase, policyYAML)
}

// InitRepoOn is InitRepo with the audit log in the server's database db (a postgres://
// URL, as the servers' --db; "": DIR/fleet.db): what the repository records (its
// creation, every publish through Repo) goes there.
func InitRepoOn(ctx context.Context, dir, db, passphrase, policyYAML string) (*Repo, error) {
	res, err := repository.Init(ctx, repository.Config{Dir: dir, Actor: "cli:security-team", Recorder: reposerver.AuditRecorder{Dir: dir, DB: db}}, repository.InitOptions{Passphrase: []byte(passphrase)})
	if err != nil {
		return nil, err
	}
	// As 'edgeward repo init' does: the audit checkpoint key lives beside the data
	// directory, never inside it.
	if err := repository.MoveAuditKey(dir, filepath.Clean(dir)+".audit.key"); err != nil {
		return nil, err
	}
	r := &Repo{Dir: dir, PolicyDir: filepath.Join(dir, "policy"), Repo: res.Repo,
		Keys:     &repository.KeyRing{Passphrase: func() ([]byte, error) { return []byte(passphrase), nil }},
		RootKeys: res.KeyFiles[metadata.ROOT]}
	if err := os.MkdirAll(r.PolicyDir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(r.PolicyDir, "00-attestation.yaml"), []byte(policyYAML), 0o644); err != nil {
		return nil, err
	}
	return r, nil
}

// RotateTimestampKey replaces the online timestamp key: a root proposal, signed by two
// of the three root key holders (one signature at a time, as in a ceremony), then
// published. It returns the new root version.
func (r *Repo) RotateTimestampKey(ctx context.Context) (int64, error) {
	rot, err := r.Repo.RotateKey(ctx, metadata.TIMESTAMP, repository.KeyEd25519, "", &repository.KeyRing{})
	if err != nil {
		return 0, err
	}
	if len(r.RootKeys) < 2 {
		return 0, errors.New("fewer than two root keys at hand")
	}
	for _, kf := range r.RootKeys[:2] {
		k, err := r.Keys.Load(kf)
		if err != nil {
			return 0, err
		}
		if _, err := repository.SignRootFile(nil, rot.Proposal, k, nil); err != nil {
			return 0, err
		}
	}
	return r.Repo.PublishRoot(ctx, rot.Proposal, r.Keys)
}

// RootJSON is the path of the first root metadata, which devices pin at enrollment.
func (r *Repo) RootJSON() string {
	return filepath.Join(r.Dir, "repository", "metadata", "1.root.json")
}

// PublishModel publishes modelgen's probe set and model of a vibration-anomaly version
// with gates.
func (r *Repo) PublishModel(ctx context.Context, version string, gates artifact.Gates) (*repository.PublishResult, error) {
	return r.PublishModelRuns(ctx, version, gates, 0)
}

// PublishModelEncrypted is PublishModel with the model encrypted under a fresh content
// key, sealed under the key-encryption key kek (issue 18); the probe set stays plain.
func (r *Repo) PublishModelEncrypted(ctx context.Context, version string, gates artifact.Gates, kek []byte) (*repository.PublishResult, error) {
	return r.publishModel(ctx, version, gates, 0, kek)
}

// PublishModelRuns is PublishModel with the probe set's number of measured runs set to
// runs (0: the probe set's own), e.g. to make a trial last a while.
func (r *Repo) PublishModelRuns(ctx context.Context, version string, gates artifact.Gates, runs int) (*repository.PublishResult, error) {
	return r.publishModel(ctx, version, gates, runs, nil)
}

func (r *Repo) publishModel(ctx context.Context, version string, gates artifact.Gates, runs int, kek []byte) (*repository.PublishResult, error) {
	probe, err := modelgen.ProbeSet(version)
	if err != nil {
		return nil, err
	}
	if runs > 0 {
		if probe, err = probeWith(probe, map[string]any{"runs": runs}); err != nil {
			return nil, err
		}
	}
	model, err := modelgen.Model(version)
	if err != nil {
		return nil, err
	}
	return r.publishModelBytes(ctx, version, model, probe, gates, kek)
}

// PublishWideModel publishes modelgen.WideModel(version, width, head) (a backbone
// width units wide around the vibration model 1.1.0; head > 0 a retrained head) as the
// vibration-anomaly version, with 1.1.0's probe set cut to a few runs (a wide model's
// inference is slow), and deltas from the newest earlier versions as Publish makes
// them.
func (r *Repo) PublishWideModel(ctx context.Context, version string, width int, head uint64, gates artifact.Gates) (*repository.PublishResult, error) {
	probe, err := modelgen.ProbeSet("1.1.0")
	if err != nil {
		return nil, err
	}
	if probe, err = probeWith(probe, map[string]any{"version": version, "warmup": 1, "runs": 5}); err != nil {
		return nil, err
	}
	return r.publishModelBytes(ctx, version, modelgen.WideModel(version, width, head), probe, gates, nil)
}

// probeWith is the probe set with fields set.
func probeWith(probe []byte, set map[string]any) ([]byte, error) {
	var ps map[string]any
	if err := json.Unmarshal(probe, &ps); err != nil {
		return nil, err
	}
	maps.Copy(ps, set)
	return json.Marshal(ps)
}

// publishModelBytes publishes a probe set and a model as the vibration-anomaly version.
func (r *Repo) publishModelBytes(ctx context.Context, version string, model, probe []byte, gates artifact.Gates, kek []byte) (*repository.PublishResult, error) {
	if _, err := r.Repo.Publish(ctx, repository.PublishRequest{
		Meta: artifact.Meta{Kind: artifact.KindProbe, Name: Model, Version: version, Format: "json"},
		Ext:  ".json", Content: bytes.NewReader(probe),
	}, r.Keys); err != nil {
		return nil, err
	}
	return r.Repo.Publish(ctx, repository.PublishRequest{
		Meta: artifact.Meta{Kind: artifact.KindModel, Name: Model, Version: version, Format: "onnx", Gates: &gates},
		Ext:  ".onnx", Content: bytes.NewReader(model), KEK: kek,
	}, r.Keys)
}

// PublishRuntime publishes an ONNX Runtime shared library as runtime name@version.
func (r *Repo) PublishRuntime(ctx context.Context, name, version, lib string) (*repository.PublishResult, error) {
	f, err := os.Open(lib)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return r.Repo.Publish(ctx, repository.PublishRequest{
		Meta: artifact.Meta{Kind: artifact.KindRuntime, Name: name, Version: version, Format: "so"},
		Ext:  ".so", Content: f,
	}, r.Keys)
}

// PublishAgent publishes the agent's build as agent targets version: the
// edgeward-agent binary at agentBin and the edgeward-runtime binary at runtimeBin
// (agents/edgeward-agent/VERSION, agents/edgeward-runtime/VERSION, signed by the
// runtimes role). The server trusts the binaries a device's IMA list shows by these
// digests.
func (r *Repo) PublishAgent(ctx context.Context, version, agentBin, runtimeBin string) ([]*repository.PublishResult, error) {
	var out []*repository.PublishResult
	for name, bin := range map[string]string{artifact.AgentBinary: agentBin, artifact.RuntimeBinary: runtimeBin} {
		f, err := os.Open(bin)
		if err != nil {
			return nil, err
		}
		res, err := r.Repo.Publish(ctx, repository.PublishRequest{
			Meta: artifact.Meta{Kind: artifact.KindAgent, Name: name, Version: version, Format: "elf"}, Content: f,
		}, r.Keys)
		f.Close()
		if err != nil {
			return nil, err
		}
		out = append(out, res)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// CreateRollout writes a rollout into the policy directory (the server hot-reloads it),
// always as the newest one.
func (r *Repo) CreateRollout(spec policy.RolloutSpec) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if !now.After(r.lastRoll.Add(time.Second)) {
		now = r.lastRoll.Add(time.Second) // file names order rollouts by second
	}
	r.lastRoll = now
	return policy.CreateRollout(r.PolicyDir, spec, now)
}

// TargetSHA is the sha256 of a published target.
func (r *Repo) TargetSHA(ctx context.Context, path string) (string, error) {
	st, err := r.Repo.Load(ctx)
	if err != nil {
		return "", err
	}
	for _, ti := range st.List() {
		if ti.Path == path {
			return ti.SHA256, nil
		}
	}
	return "", fmt.Errorf("target %s is not published", path)
}

// ByBucket orders devices by their position in a rollout (policy.Bucket): the first k
// are the rollout's first wave when its percentage is PercentFor(rollout, ordered, k).
func ByBucket(rollout string, devs []*Device) []*Device {
	out := slices.Clone(devs)
	sort.SliceStable(out, func(i, j int) bool { return policy.Bucket(rollout, out[i].ID) < policy.Bucket(rollout, out[j].ID) })
	return out
}

// PercentFor is the smallest wave percentage that holds exactly the first k devices of
// ordered (from ByBucket; buckets are distinct with overwhelming probability).
func PercentFor(rollout string, ordered []*Device, k int) float64 {
	return float64(policy.Bucket(rollout, ordered[k-1].ID)+1) / 100
}

// Names lists device names.
func Names(devs []*Device) string {
	var s []string
	for _, dv := range devs {
		s = append(s, dv.Name)
	}
	return strings.Join(s, ", ")
}

// Devices returns the server's view of devs, by device name (devices the server has not
// seen yet are missing).
func (s *Server) Devices(ctx context.Context, devs []*Device) (map[string]fleet.Device, error) {
	st, err := s.Fleet(ctx)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	out := map[string]fleet.Device{}
	for _, dv := range devs {
		if dv.ID == "" {
			continue
		}
		fd, err := st.Device(ctx, dv.ID)
		if errors.Is(err, fleet.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out[dv.Name] = fd
	}
	return out, nil
}

// Reports returns the server's install reports matching f.
func (s *Server) Reports(ctx context.Context, f fleet.ReportFilter) ([]wire.Report, error) {
	st, err := s.Fleet(ctx)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	return st.Reports(ctx, f)
}

// RolloutState returns a rollout's state.
func (s *Server) RolloutState(ctx context.Context, id string) (policy.RolloutState, error) {
	st, err := s.Fleet(ctx)
	if err != nil {
		return policy.RolloutState{}, err
	}
	defer st.Close()
	return st.RolloutState(ctx, id)
}

// WaitCommitted waits until the server sees every device of devs with kind committed at
// version. A device quarantined meanwhile fails the wait at once.
func (s *Server) WaitCommitted(ctx context.Context, timeout time.Duration, devs []*Device, kind artifact.Kind, version string) error {
	return WaitFor(ctx, timeout, fmt.Sprintf("%s to commit %s %s", Names(devs), kind, version), func(ctx context.Context) (bool, string, error) {
		fds, err := s.Devices(ctx, devs)
		if err != nil {
			return false, "", err
		}
		var not []string
		for _, dv := range devs {
			if fds[dv.Name].Quarantined {
				return false, "", Final(fmt.Errorf("%s was quarantined: %s", dv.Name, fds[dv.Name].QuarantineReason))
			}
			if got := fds[dv.Name].Slots[kind].Version; got != version {
				not = append(not, fmt.Sprintf("%s=%q", dv.Name, got))
			}
		}
		return len(not) == 0, strings.Join(not, " "), nil
	})
}

// WaitTrusted waits until the server holds a trusted verdict made after since for every
// device of devs.
func (s *Server) WaitTrusted(ctx context.Context, timeout time.Duration, devs []*Device, since time.Time) error {
	return WaitFor(ctx, timeout, fmt.Sprintf("a trusted quote from %s", Names(devs)), func(ctx context.Context) (bool, string, error) {
		fds, err := s.Devices(ctx, devs)
		if err != nil {
			return false, "", err
		}
		var not []string
		for _, dv := range devs {
			fd := fds[dv.Name]
			if fd.Quarantined {
				return false, "", Final(fmt.Errorf("%s was quarantined: %s", dv.Name, fd.QuarantineReason))
			}
			if fd.Verdict != policy.VerdictTrusted || fd.VerdictAt.Before(since) {
				not = append(not, dv.Name+":"+string(fd.Verdict))
			}
		}
		return len(not) == 0, strings.Join(not, " "), nil
	})
}

// WaitServing waits until the device answers inference for Model with version.
func (d *Device) WaitServing(ctx context.Context, timeout time.Duration, version string) (InferResult, error) {
	var last InferResult
	err := WaitFor(ctx, timeout, fmt.Sprintf("%s to answer inference with %s", d.Name, version), func(ctx context.Context) (bool, string, error) {
		r, err := d.Infer(ctx, Model)
		last = r
		return err == nil && r.Code == 200 && r.Version == version, fmt.Sprintf("HTTP %d version %q %s", r.Code, r.Version, r.Error), err
	})
	return last, err
}

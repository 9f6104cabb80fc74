// Package artifact defines what Edgeward publishes and installs: the custom TUF metadata
// carried by every target, and the target-path layout of the repository. It is shared by
// the repository (which writes it) and the agent (which reads it), so it has no
// dependencies beyond the standard library.
package artifact

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"path"
	"regexp"
	"strconv"
	"strings"
)

// Kind is what a target is. Models and runtimes are installed into A/B slots; probes are
// data the agent downloads to decide whether a model or runtime may be committed;
// agents are the device software's own builds (edgeward-agent, edgeward-runtime),
// published so that the server trusts the binaries a device's IMA list shows by their
// signed digests. No device installs an agent target.
type Kind string

const (
	KindModel   Kind = "model"
	KindProbe   Kind = "probe"
	KindRuntime Kind = "runtime"
	KindAgent   Kind = "agent"
)

// ParseKind returns the Kind named s, or an error naming the accepted kinds.
func ParseKind(s string) (Kind, error) {
	switch k := Kind(s); k {
	case KindModel, KindProbe, KindRuntime, KindAgent:
		return k, nil
	}
	return "", fmt.Errorf("unknown kind %q: want model, probe, runtime or agent", s)
}

// ParseSlotKind returns the slot kind named s (model or runtime: the kinds a device
// installs into A/B slots), or an error.
func ParseSlotKind(s string) (Kind, error) {
	k, err := ParseKind(s)
	if err != nil || !k.Slot() {
		return "", fmt.Errorf("kind %q: want model or runtime", s)
	}
	return k, nil
}

// Slot reports whether a device installs targets of this kind into an A/B slot.
func (k Kind) Slot() bool { return k == KindModel || k == KindRuntime }

// Agent target names: the two binaries the agent package ships. An agent target is
// named after its binary, optionally followed by "." and a hardware class
// ("edgeward-agent.aarch64"); AgentBinary returns the binary a name is a build of.
const (
	AgentBinary   = "edgeward-agent"
	RuntimeBinary = "edgeward-runtime"
)

// AgentBinaryOf returns the binary an agent target named name is a build of
// (AgentBinary or RuntimeBinary), or "".
func AgentBinaryOf(name string) string {
	for _, b := range []string{AgentBinary, RuntimeBinary} {
		if name == b || strings.HasPrefix(name, b+".") {
			return b
		}
	}
	return ""
}

// Dir is the first path element of this kind's targets ("models", "probes", "runtimes",
// "agents").
func (k Kind) Dir() string { return string(k) + "s" }

// Role is the delegated TUF role that signs this kind's targets.
func (k Kind) Role() string {
	if k == KindRuntime || k == KindAgent {
		return "runtimes" // the platform team signs runtimes and the agent's builds
	}
	return "models" // models and their probe sets are signed by the same team
}

// Gates are the thresholds a probe run must meet before the agent commits a new version.
// A zero field means "no gate" on that measure.
//
// In JSON each gate is written as a decimal string ("0.95"): TUF signs canonical JSON,
// which has no floating-point numbers. Numbers are accepted when reading.
type Gates struct {
	MinAccuracy float64 `json:"min_accuracy,omitempty"`
	MaxAbsError float64 `json:"max_abs_error,omitempty"`
	MaxP99Ms    float64 `json:"max_p99_ms,omitempty"`
	MaxRSSMB    float64 `json:"max_rss_mb,omitempty"`
}

func (g Gates) fields() []struct {
	name string
	v    float64
} {
	return []struct {
		name string
		v    float64
	}{{"min_accuracy", g.MinAccuracy}, {"max_abs_error", g.MaxAbsError}, {"max_p99_ms", g.MaxP99Ms}, {"max_rss_mb", g.MaxRSSMB}}
}

// MarshalJSON writes the set gates as decimal strings.
func (g Gates) MarshalJSON() ([]byte, error) {
	m := map[string]string{}
	for _, f := range g.fields() {
		if f.v != 0 {
			m[f.name] = strconv.FormatFloat(f.v, 'f', -1, 64)
		}
	}
	return json.Marshal(m)
}

// UnmarshalJSON reads gates given as numbers or decimal strings; unknown gates are an
// error, so a misspelt gate is never silently ignored.
func (g *Gates) UnmarshalJSON(b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("gates: %w", err)
	}
	*g = Gates{}
	dst := map[string]*float64{"min_accuracy": &g.MinAccuracy, "max_abs_error": &g.MaxAbsError, "max_p99_ms": &g.MaxP99Ms, "max_rss_mb": &g.MaxRSSMB}
	for k, v := range raw {
		p, ok := dst[k]
		if !ok {
			return fmt.Errorf("unknown gate %q: want min_accuracy, max_abs_error, max_p99_ms or max_rss_mb", k)
		}
		var s string
		if json.Unmarshal(v, &s) != nil {
			s = string(v)
		}
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return fmt.Errorf("gate %s: %q is not a number", k, s)
		}
		if math.IsNaN(f) || math.IsInf(f, 0) || f < 0 {
			return fmt.Errorf("gate %s: %q: want a finite number, not negative", k, s)
		}
		*p = f
	}
	return nil
}

// ParseGates reads "min_accuracy=0.9,max_p99_ms=5" (the --gates flag).
func ParseGates(s string) (*Gates, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	m := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok {
			return nil, fmt.Errorf("gates %q: want name=value[,name=value]", s)
		}
		m[k] = v
	}
	b, _ := json.Marshal(m)
	var g Gates
	if err := json.Unmarshal(b, &g); err != nil {
		return nil, err
	}
	if err := g.Validate(); err != nil {
		return nil, err
	}
	return &g, nil
}

// Meta is the custom metadata of an Edgeward target (the "custom" field of its TUF
// target entry). Unknown fields given by a publisher are kept in Extra.
type Meta struct {
	Kind       Kind     `json:"kind"`
	Name       string   `json:"name"`
	Version    string   `json:"version"`
	Format     string   `json:"format,omitempty"`      // "onnx" for models, "tar" etc.
	Probe      string   `json:"probe,omitempty"`       // target path of the probe set (models, runtimes)
	Gates      *Gates   `json:"gates,omitempty"`       // commit gates (models, runtimes)
	Hardware   []string `json:"hardware,omitempty"`    // e.g. x86_64, aarch64
	MinRuntime string   `json:"min_runtime,omitempty"` // lowest runtime version a model needs
	// Encryption is set by the repository when it published the content encrypted: the
	// target's signed hash and length are then the ciphertext's.
	Encryption *Encryption `json:"encryption,omitempty"`
	// Extra holds publisher-supplied fields Edgeward does not interpret.
	Extra map[string]json.RawMessage `json:"-"`
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// Validate checks the fields every target must have and their syntax.
func (m *Meta) Validate() error {
	if _, err := ParseKind(string(m.Kind)); err != nil {
		return err
	}
	if !nameRE.MatchString(m.Name) {
		return fmt.Errorf("name %q: want lower-case letters, digits, '.', '_' or '-', 1-63 characters, starting with a letter or digit", m.Name)
	}
	if m.Kind == KindAgent && AgentBinaryOf(m.Name) == "" {
		return fmt.Errorf("agent target name %q: want %s or %s, optionally followed by .HARDWARE", m.Name, AgentBinary, RuntimeBinary)
	}
	if _, err := ParseVersion(m.Version); err != nil {
		return err
	}
	if g := m.Gates; g != nil {
		if err := g.Validate(); err != nil {
			return err
		}
	}
	if e := m.Encryption; e != nil {
		if err := e.Validate(); err != nil {
			return err
		}
	}
	return nil
}

// Validate refuses gates that cannot be compared: NaN, infinite or negative values,
// and a minimum accuracy outside [0, 1]. (A NaN gate used to compare false against
// every measure, which switched gating off.)
func (g Gates) Validate() error {
	for _, f := range g.fields() {
		if math.IsNaN(f.v) || math.IsInf(f.v, 0) || f.v < 0 {
			return fmt.Errorf("gate %s %v: want a finite number, not negative", f.name, f.v)
		}
	}
	if g.MinAccuracy > 1 {
		return fmt.Errorf("gate min_accuracy %v: want a value in [0, 1]", g.MinAccuracy)
	}
	return nil
}

// MarshalJSON writes the known fields and Extra side by side.
func (m Meta) MarshalJSON() ([]byte, error) {
	type plain Meta
	b, err := json.Marshal(plain(m))
	if err != nil || len(m.Extra) == 0 {
		return b, err
	}
	all := map[string]json.RawMessage{}
	if err := json.Unmarshal(b, &all); err != nil {
		return nil, err
	}
	for k, v := range m.Extra {
		if _, known := all[k]; !known {
			all[k] = v
		}
	}
	return json.Marshal(all)
}

// UnmarshalJSON reads the known fields and keeps the others in Extra.
func (m *Meta) UnmarshalJSON(b []byte) error {
	type plain Meta
	var p plain
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	all := map[string]json.RawMessage{}
	if err := json.Unmarshal(b, &all); err != nil {
		return err
	}
	for _, k := range []string{"kind", "name", "version", "format", "probe", "gates", "hardware", "min_runtime", "encryption"} {
		delete(all, k)
	}
	*m = Meta(p)
	if len(all) > 0 {
		m.Extra = all
	}
	return nil
}

// EncryptionScheme is the one encryption scheme of targets: AES-256-GCM in fixed-size
// authenticated segments (internal/segcrypt, format version 1).
const EncryptionScheme = "segcrypt-v1"

// Encryption describes the plaintext inside an encrypted target (issue 18). The
// content key is not here: the server keeps it sealed, and releases it wrapped to one
// device's TPM at a check-in.
type Encryption struct {
	Scheme      string `json:"scheme"`
	SegmentSize int    `json:"segment_size"`
	// PlainSHA256 and PlainLength are the decrypted content's: what the device checks
	// after decrypting, and what its measurement log records beside the ciphertext.
	PlainSHA256 string `json:"plaintext_sha256"`
	PlainLength int64  `json:"plaintext_length"`
}

// Validate refuses an encryption the device cannot decrypt or check.
func (e Encryption) Validate() error {
	if e.Scheme != EncryptionScheme {
		return fmt.Errorf("encryption scheme %q: want %q", e.Scheme, EncryptionScheme)
	}
	if e.SegmentSize <= 0 || e.PlainLength < 0 {
		return fmt.Errorf("encryption: segment size %d, plaintext length %d", e.SegmentSize, e.PlainLength)
	}
	if b, err := hex.DecodeString(e.PlainSHA256); err != nil || len(b) != sha256.Size {
		return fmt.Errorf("encryption: plaintext_sha256 %q is not a SHA-256 in hex", e.PlainSHA256)
	}
	return nil
}

// TargetPath is where a target of this meta lives in the repository:
// <kind dir>/<name>/<version><ext>, e.g. models/iris/1.0.0.onnx or probes/iris/1.0.0.json.
// ext includes its dot, or is empty.
func TargetPath(k Kind, name, version, ext string) string {
	return path.Join(k.Dir(), name, version+ext)
}

// Exts are the file extensions a target path may end with (or none).
var Exts = []string{".onnx", ".json", ".tar.gz", ".tgz", ".tar", ".bin", ".so"}

// ParseTargetPath splits a target path made by TargetPath. It returns an error for any
// other shape, so it can be used to reject hostile or foreign paths.
func ParseTargetPath(p string) (k Kind, name, version string, err error) {
	parts := strings.Split(p, "/")
	if len(parts) != 3 {
		return "", "", "", fmt.Errorf("target path %q: want <kind>s/<name>/<version>[.ext]", p)
	}
	switch parts[0] {
	case "models":
		k = KindModel
	case "probes":
		k = KindProbe
	case "runtimes":
		k = KindRuntime
	case "agents":
		k = KindAgent
	default:
		return "", "", "", fmt.Errorf("target path %q: unknown kind directory %q", p, parts[0])
	}
	name = parts[1]
	if !nameRE.MatchString(name) {
		return "", "", "", fmt.Errorf("target path %q: bad name %q", p, name)
	}
	file := parts[2]
	for _, ext := range Exts {
		if strings.HasSuffix(file, ext) {
			file = strings.TrimSuffix(file, ext)
			break
		}
	}
	if _, err := ParseVersion(file); err != nil {
		return "", "", "", fmt.Errorf("target path %q: %w", p, err)
	}
	return k, name, file, nil
}

// Version is a semantic version MAJOR.MINOR.PATCH with an optional pre-release, compared
// by precedence. Build metadata ("+...") is not accepted: two builds of the same version
// would be indistinguishable to the anti-rollback floor.
type Version struct {
	Major, Minor, Patch uint32
	Pre                 string
}

var versionRE = regexp.MustCompile(`^(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})(?:-([0-9A-Za-z.-]{1,64}))?$`)

// ParseVersion parses s as MAJOR.MINOR.PATCH[-PRE].
func ParseVersion(s string) (Version, error) {
	m := versionRE.FindStringSubmatch(s)
	if m == nil {
		return Version{}, fmt.Errorf("version %q: want MAJOR.MINOR.PATCH[-PRERELEASE] (semantic version)", s)
	}
	var v Version
	for i, dst := range []*uint32{&v.Major, &v.Minor, &v.Patch} {
		n, _ := strconv.ParseUint(m[i+1], 10, 32)
		*dst = uint32(n)
	}
	v.Pre = m[4]
	return v, nil
}

func (v Version) String() string {
	s := fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch)
	if v.Pre != "" {
		s += "-" + v.Pre
	}
	return s
}

// Compare returns -1, 0 or +1 as v is lower than, equal to or higher than w
// (semantic-version precedence; a pre-release is lower than its release).
func (v Version) Compare(w Version) int {
	for _, d := range [][2]uint32{{v.Major, w.Major}, {v.Minor, w.Minor}, {v.Patch, w.Patch}} {
		if d[0] != d[1] {
			if d[0] < d[1] {
				return -1
			}
			return 1
		}
	}
	switch {
	case v.Pre == w.Pre:
		return 0
	case v.Pre == "":
		return 1
	case w.Pre == "":
		return -1
	}
	a, b := strings.Split(v.Pre, "."), strings.Split(w.Pre, ".")
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] == b[i] {
			continue
		}
		an, aerr := strconv.ParseUint(a[i], 10, 64)
		bn, berr := strconv.ParseUint(b[i], 10, 64)
		switch {
		case aerr == nil && berr == nil:
			if an < bn || an == bn && a[i] < b[i] {
				// Equal numbers written differently ("01" and "1", which SemVer does
				// not allow but the pattern does) are ordered by their text, so that
				// Compare stays antisymmetric: it used to call each greater than the
				// other, and the anti-rollback floor let a version move either way.
				return -1
			}
			return 1
		case aerr == nil:
			return -1
		case berr == nil:
			return 1
		case a[i] < b[i]:
			return -1
		default:
			return 1
		}
	}
	switch {
	case len(a) < len(b):
		return -1
	case len(a) > len(b):
		return 1
	}
	return 0
}

// Floor is the anti-rollback number of a version, small enough for a TPM NV counter:
// MAJOR<<40 | MINOR<<20 | PATCH, each part below 2^20. It is monotonic in precedence
// across MAJOR.MINOR.PATCH; pre-releases of X.Y.Z share the floor of X.Y.Z, so a caller
// that must also order pre-releases compares Versions with Compare.
func (v Version) Floor() (uint64, error) {
	const lim = 1 << 20
	if v.Major >= lim || v.Minor >= lim || v.Patch >= lim {
		return 0, fmt.Errorf("version %s: each part must be below %d to map to an anti-rollback floor", v, lim)
	}
	return uint64(v.Major)<<40 | uint64(v.Minor)<<20 | uint64(v.Patch), nil
}

package policy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/google/cel-go/cel"
	"gopkg.in/yaml.v3"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/reference"
)

// Limits on what Load reads, so that a wrong directory cannot exhaust the server.
const (
	MaxFileSize = 1 << 20
	MaxFiles    = 256
)

// Error is one problem in a policy file.
type Error struct {
	Pos
	Msg string
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.File, e.Msg)
}

// ErrorList is every problem found in a policy load; Load returns one (as an error)
// when the policy is invalid. It unwraps to its *Error elements.
type ErrorList []*Error

func (l ErrorList) Error() string {
	s := make([]string, len(l))
	for i, e := range l {
		s[i] = e.Error()
	}
	return strings.Join(s, "\n")
}

func (l ErrorList) Unwrap() []error {
	errs := make([]error, len(l))
	for i, e := range l {
		errs[i] = e
	}
	return errs
}

// Files returns the names (base names, in order of first appearance) of the files
// the problems are in.
func (l ErrorList) Files() []string {
	var out []string
	for _, e := range l {
		if name := filepath.Base(e.File); e.File != "" && !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	return out
}

// ErrNoPolicy means the directory holds no policy file.
var ErrNoPolicy = errors.New("no policy files (*.yaml, *.yml)")

// IsPolicyFile reports whether a file name is read by Load: *.yaml or *.yml, not
// hidden (editors' swap and backup files start with a dot or end in ~).
func IsPolicyFile(name string) bool {
	base := filepath.Base(name)
	if strings.HasPrefix(base, ".") {
		return false
	}
	ext := filepath.Ext(base)
	return ext == ".yaml" || ext == ".yml"
}

// Load reads every policy file in dir, in name order, and returns the merged policy.
// Rollouts, windows and maintenance entries from all files are concatenated; the
// attestation and gates sections may each appear in at most one file. On any problem it
// returns an ErrorList (or ErrNoPolicy) and no policy.
func Load(dir string) (*Policy, error) {
	p, err := NewParser()
	if err != nil {
		return nil, err
	}
	return p.Load(dir)
}

// Load is the package's Load with p's CEL environment.
func (p *Parser) Load(dir string) (*Policy, error) {
	files, err := readDir(dir)
	if err != nil {
		return nil, err
	}
	return p.Parse(files...)
}

// readDir reads the policy files of dir in name order.
func readDir(dir string) ([]File, error) {
	ents, err := os.ReadDir(dir) // sorted by name
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	var files []File
	for _, e := range ents {
		if e.IsDir() || !IsPolicyFile(e.Name()) {
			continue
		}
		if len(files) == MaxFiles {
			return nil, fmt.Errorf("policy: %s: more than %d policy files", dir, MaxFiles)
		}
		p := filepath.Join(dir, e.Name())
		data, err := readBounded(p)
		if err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
		files = append(files, File{Name: p, Data: data})
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("policy: %s: %w", dir, ErrNoPolicy)
	}
	return files, nil
}

func sortFiles(files []File) {
	slices.SortFunc(files, func(a, b File) int { return strings.Compare(filepath.Base(a.Name), filepath.Base(b.Name)) })
}

func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxFileSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, MaxFileSize)
	}
	return b, nil
}

// File is one policy file's name (used in errors) and content.
type File struct {
	Name string
	Data []byte
}

// Parser parses policy files. It holds what every parse shares, the CEL environment
// selector expressions compile in, so that a caller parsing many times (the Watcher on
// every edit, a fuzzer on every input) builds it once. A Parser is immutable and safe
// for concurrent use.
type Parser struct {
	env *cel.Env
}

// NewParser returns a Parser.
func NewParser() (*Parser, error) {
	env, err := newCELEnv()
	if err != nil {
		return nil, fmt.Errorf("policy: CEL environment: %w", err)
	}
	return &Parser{env: env}, nil
}

// Parse parses and validates policy files as Load does, without touching the disk.
func Parse(files ...File) (*Policy, error) {
	p, err := NewParser()
	if err != nil {
		return nil, err
	}
	return p.Parse(files...)
}

// Parse is the package's Parse with p's CEL environment.
func (p *Parser) Parse(files ...File) (*Policy, error) {
	b := &builder{env: p.env, pol: &Policy{Windows: map[string]*Window{}}}
	h := sha256.New()
	raws := make([]*rawPolicy, len(files))
	for i, f := range files {
		fmt.Fprintf(h, "%d:%s\n%d:", len(f.Name), f.Name, len(f.Data))
		h.Write(f.Data)
		b.pol.Files = append(b.pol.Files, f.Name)
		raws[i] = b.decode(f)
	}
	// Windows first: rollouts and maintenance entries in any file refer to them.
	for i, r := range raws {
		if r != nil {
			b.windows(files[i].Name, r)
		}
	}
	for i, r := range raws {
		if r != nil {
			b.rest(files[i].Name, r)
		}
	}
	if len(b.errs) > 0 {
		return nil, b.errs
	}
	b.pol.Digest = hex.EncodeToString(h.Sum(nil))
	return b.pol, nil
}

// located is a scalar with the line it was written on.
type located[T any] struct {
	V    T
	Line int
	Set  bool
}

func (l *located[T]) UnmarshalYAML(n *yaml.Node) error {
	l.Line, l.Set = n.Line, true
	if n.Kind != yaml.ScalarNode && n.Kind != yaml.SequenceNode {
		return fmt.Errorf("line %d: want a value, got a mapping", n.Line)
	}
	return n.Decode(&l.V)
}

type rawPolicy struct {
	Version     located[int]     `yaml:"version"`
	Attestation *rawAttestation  `yaml:"attestation"`
	Gates       *rawGates        `yaml:"gates"`
	Windows     []rawWindow      `yaml:"windows"`
	Maintenance []rawMaintenance `yaml:"maintenance"`
	Rollouts    []rawRollout     `yaml:"rollouts"`
}

type rawAttestation struct {
	Required located[bool]   `yaml:"required"`
	MaxAge   located[string] `yaml:"max_age"`
	Boot     []rawBoot       `yaml:"boot"`
	Runtime  *rawRuntime     `yaml:"runtime"`
}

// rawRuntime is the runtime-integrity (IMA) policy, its keys checked as rawBoot's.
type rawRuntime struct {
	reference.Runtime
	line int
}

func (r *rawRuntime) UnmarshalYAML(n *yaml.Node) error {
	r.line = n.Line
	if err := knownKeys(n, "runtime", "agent", "runtime", "allowed", "enforce"); err != nil {
		return err
	}
	return n.Decode(&r.Runtime)
}

// knownKeys fails on a key of the mapping n that is not one of keys.
func knownKeys(n *yaml.Node, what string, keys ...string) error {
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: a %s policy is a mapping", n.Line, what)
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i]; !slices.Contains(keys, k.Value) {
			return fmt.Errorf("line %d: unknown %s policy field %q (%s)", k.Line, what, k.Value, strings.Join(keys, ", "))
		}
	}
	return nil
}

// rawBoot is one boot policy entry. Its keys are checked here: yaml.Node.Decode does
// not inherit the file decoder's KnownFields, and a misspelt secure_boot must not
// silently weaken the policy.
type rawBoot struct {
	reference.Boot
	line int
}

func (r *rawBoot) UnmarshalYAML(n *yaml.Node) error {
	r.line = n.Line
	if err := knownKeys(n, "boot", "hardware", "secure_boot", "boot_applications", "forbidden", "pcrs"); err != nil {
		return err
	}
	return n.Decode(&r.Boot)
}

type rawGates struct {
	MinAccuracy located[float64] `yaml:"min_accuracy"`
	MaxAbsError located[float64] `yaml:"max_abs_error"`
	MaxP99Ms    located[float64] `yaml:"max_p99_ms"`
	MaxRSSMB    located[float64] `yaml:"max_rss_mb"`
}

type rawWindow struct {
	Name     located[string]   `yaml:"name"`
	Timezone located[string]   `yaml:"timezone"`
	Days     located[[]string] `yaml:"days"`
	From     located[string]   `yaml:"from"`
	To       located[string]   `yaml:"to"`
}

type rawMaintenance struct {
	Window   located[string] `yaml:"window"`
	Selector *rawSelector    `yaml:"selector"`
}

type rawSelector struct {
	Devices        located[[]string] `yaml:"devices"`
	Labels         map[string]string `yaml:"labels"`
	Hardware       located[[]string] `yaml:"hardware"`
	AgentVersion   located[string]   `yaml:"agent_version"`
	RuntimeVersion located[string]   `yaml:"runtime_version"`
	Expr           located[string]   `yaml:"expr"`
}

type rawTarget struct {
	Kind    located[string] `yaml:"kind"`
	Name    located[string] `yaml:"name"`
	Version located[string] `yaml:"version"`
}

type rawRollout struct {
	ID       located[string] `yaml:"id"`
	Target   *rawTarget      `yaml:"target"`
	Selector *rawSelector    `yaml:"selector"`
	Window   located[string] `yaml:"window"`
	Gates    *rawGates       `yaml:"gates"`
	Pause    *rawPause       `yaml:"pause"`
	Waves    []rawWave       `yaml:"waves"`
}

// rawPause is a rollout's default auto-pause rule for its waves.
type rawPause struct {
	MaxFailureRatio located[float64] `yaml:"max_failure_ratio"`
	MinReports      located[int]     `yaml:"min_reports"`
}

type rawWave struct {
	Percent         located[float64] `yaml:"percent"`
	Soak            located[string]  `yaml:"soak"`
	Approval        located[bool]    `yaml:"approval"`
	MaxFailureRatio located[float64] `yaml:"max_failure_ratio"`
	MinReports      located[int]     `yaml:"min_reports"`
}

// Defaults of a wave's auto-pause rule.
const (
	DefaultMaxFailureRatio = 0.1
	DefaultMinReports      = 3
)

var (
	idRE          = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	yamlLineRE    = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)
	unknownFieldR = regexp.MustCompile(`field (\S+) not found in type \S+`)
	intoTypeR     = regexp.MustCompile(` into (\S+)$`)
)

type builder struct {
	env      *cel.Env
	pol      *Policy
	errs     ErrorList
	attFile  string
	gateFile string
	ids      map[string]Pos
}

func (b *builder) errorf(file string, line int, format string, args ...any) {
	b.errs = append(b.errs, &Error{Pos: Pos{file, line}, Msg: fmt.Sprintf(format, args...)})
}

// decode parses one file strictly: unknown fields, duplicate keys, wrong types and
// several documents are errors, each reported with its line.
func (b *builder) decode(f File) *rawPolicy {
	dec := yaml.NewDecoder(bytes.NewReader(f.Data))
	dec.KnownFields(true)
	var r rawPolicy
	err := dec.Decode(&r)
	if errors.Is(err, io.EOF) {
		b.errorf(f.Name, 0, "empty file")
		return nil
	}
	if err != nil {
		b.yamlError(f.Name, err)
		return nil
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		b.errorf(f.Name, extra.Line, "more than one YAML document; want one per file")
		return nil
	}
	if r.Version.Set && r.Version.V != 1 {
		b.errorf(f.Name, r.Version.Line, "version %d: this server reads policy version 1", r.Version.V)
		return nil
	}
	return &r
}

// yamlError turns yaml.v3's messages into file:line: messages without Go type names.
func (b *builder) yamlError(file string, err error) {
	var te *yaml.TypeError
	msgs := []string{err.Error()}
	if errors.As(err, &te) {
		msgs = te.Errors
	}
	for _, m := range msgs {
		line := 0
		if sm := yamlLineRE.FindStringSubmatch(m); sm != nil {
			fmt.Sscan(sm[1], &line)
			m = sm[2]
		}
		m = unknownFieldR.ReplaceAllString(m, "unknown field $1")
		m = intoTypeR.ReplaceAllStringFunc(m, func(into string) string { return ": want " + yamlKind(strings.TrimPrefix(into, " into ")) })
		// Nested "line N:" from a located value repeats the line; drop it.
		if sm := yamlLineRE.FindStringSubmatch(m); sm != nil {
			m = sm[2]
		}
		b.errorf(file, line, "%s", m)
	}
}

// yamlKind names, for an operator, what a Go type expects in YAML.
func yamlKind(goType string) string {
	switch {
	case strings.HasPrefix(goType, "[]"):
		return "a list"
	case strings.HasPrefix(goType, "map["), strings.Contains(goType, ".raw"):
		return "a mapping"
	case strings.Contains(goType, "float"):
		return "a number"
	case strings.Contains(goType, "int"):
		return "an integer"
	case goType == "bool":
		return "true or false"
	case goType == "string":
		return "a string"
	}
	return "another type"
}

func (b *builder) duration(file string, l located[string], what string) (time.Duration, bool) {
	if !l.Set {
		return 0, true
	}
	d, err := time.ParseDuration(l.V)
	if err != nil || d < 0 {
		b.errorf(file, l.Line, "%s %q: want a non-negative duration such as 90s, 15m or 2h", what, l.V)
		return 0, false
	}
	return d, true
}

func (b *builder) windows(file string, r *rawPolicy) {
	for _, rw := range r.Windows {
		line := rw.Name.Line
		if !rw.Name.Set || !idRE.MatchString(rw.Name.V) {
			b.errorf(file, max(line, rw.From.Line), "window name %q: want lower-case letters, digits, '.', '_' or '-'", rw.Name.V)
			continue
		}
		if prev, dup := b.pol.Windows[rw.Name.V]; dup {
			b.errorf(file, line, "window %q already defined at %s:%d", rw.Name.V, prev.Pos.File, prev.Pos.Line)
			continue
		}
		w := &Window{Name: rw.Name.V, Location: time.UTC, Pos: Pos{file, line}}
		ok := true
		if rw.Timezone.Set {
			loc, err := time.LoadLocation(rw.Timezone.V)
			if err != nil || rw.Timezone.V == "" || rw.Timezone.V == "Local" {
				b.errorf(file, rw.Timezone.Line, "window %q: unknown time zone %q: want an IANA name such as Europe/Berlin or UTC", w.Name, rw.Timezone.V)
				ok = false
			} else {
				w.Location = loc
			}
		}
		if !rw.Days.Set || len(rw.Days.V) == 0 {
			b.errorf(file, line, "window %q: days missing: list days such as [mon-fri] or [all]", w.Name)
			ok = false
		} else if d, err := parseDays(rw.Days.V); err != nil {
			b.errorf(file, rw.Days.Line, "window %q: %v", w.Name, err)
			ok = false
		} else {
			w.Days = d
		}
		for _, tf := range []struct {
			l   located[string]
			dst *time.Duration
			key string
		}{{rw.From, &w.From, "from"}, {rw.To, &w.To, "to"}} {
			if !tf.l.Set {
				b.errorf(file, line, "window %q: %s missing (HH:MM)", w.Name, tf.key)
				ok = false
				continue
			}
			d, err := parseTimeOfDay(tf.l.V)
			if err != nil {
				b.errorf(file, tf.l.Line, "window %q: %s: %v", w.Name, tf.key, err)
				ok = false
				continue
			}
			*tf.dst = d
		}
		if ok && (w.From == w.To || w.From == 24*time.Hour) {
			b.errorf(file, rw.From.Line, "window %q: from %s and to %s make an empty window", w.Name, rw.From.V, rw.To.V)
			ok = false
		}
		if ok {
			b.pol.Windows[w.Name] = w
		}
	}
}

func (b *builder) rest(file string, r *rawPolicy) {
	if a := r.Attestation; a != nil {
		if b.attFile != "" {
			b.errorf(file, max(a.Required.Line, a.MaxAge.Line), "attestation already set in %s; set it in one file only", b.attFile)
		} else {
			b.attFile = file
			b.pol.Attestation.Disabled = a.Required.Set && !a.Required.V
			if d, ok := b.duration(file, a.MaxAge, "attestation max_age"); ok {
				if a.MaxAge.Set && d == 0 {
					b.errorf(file, a.MaxAge.Line, "attestation max_age must be positive")
				}
				b.pol.Attestation.MaxAge = d
			}
			for _, rb := range a.Boot {
				if err := rb.Boot.Validate(); err != nil {
					b.errorf(file, rb.line, "attestation boot: %v", err)
					continue
				}
				b.pol.Attestation.Boot = append(b.pol.Attestation.Boot, rb.Boot)
			}
			if rr := a.Runtime; rr != nil {
				if err := rr.Runtime.Validate(); err != nil {
					b.errorf(file, rr.line, "attestation runtime: %v", err)
				} else {
					rt := rr.Runtime
					b.pol.Attestation.Runtime = &rt
				}
			}
		}
	}
	if g := r.Gates; g != nil {
		if b.gateFile != "" {
			b.errorf(file, firstLine(g.MinAccuracy.Line, g.MaxAbsError.Line, g.MaxP99Ms.Line, g.MaxRSSMB.Line), "gates already set in %s; set default gates in one file only", b.gateFile)
		} else {
			b.gateFile = file
			b.pol.Gates = b.gates(file, g)
		}
	}
	for _, m := range r.Maintenance {
		w, ok := b.pol.Windows[m.Window.V]
		if !ok {
			b.errorf(file, m.Window.Line, "maintenance: unknown window %q", m.Window.V)
			continue
		}
		b.pol.Maintenance = append(b.pol.Maintenance, Maintenance{Selector: b.selector(file, m.Selector), Window: w})
	}
	for i := range r.Rollouts {
		if ro := b.rollout(file, &r.Rollouts[i]); ro != nil {
			b.pol.Rollouts = append(b.pol.Rollouts, ro)
		}
	}
}

func (b *builder) gates(file string, g *rawGates) artifact.Gates {
	out := artifact.Gates{MinAccuracy: g.MinAccuracy.V, MaxAbsError: g.MaxAbsError.V, MaxP99Ms: g.MaxP99Ms.V, MaxRSSMB: g.MaxRSSMB.V}
	if v := g.MinAccuracy; v.V < 0 || v.V > 1 || math.IsNaN(v.V) {
		b.errorf(file, v.Line, "gate min_accuracy %v: want a value in [0, 1]", v.V)
	}
	for _, v := range []struct {
		l    located[float64]
		name string
	}{{g.MaxAbsError, "max_abs_error"}, {g.MaxP99Ms, "max_p99_ms"}, {g.MaxRSSMB, "max_rss_mb"}} {
		if v.l.V < 0 || math.IsNaN(v.l.V) || math.IsInf(v.l.V, 0) {
			b.errorf(file, v.l.Line, "gate %s %v: want a non-negative number", v.name, v.l.V)
		}
	}
	return out
}

func (b *builder) selector(file string, rs *rawSelector) *Selector {
	if rs == nil {
		return nil
	}
	s := &Selector{Devices: rs.Devices.V, Labels: rs.Labels, Hardware: rs.Hardware.V, Expr: rs.Expr.V}
	for _, r := range []struct {
		l   located[string]
		dst *Range
		key string
	}{{rs.AgentVersion, &s.AgentVersion, "agent_version"}, {rs.RuntimeVersion, &s.RuntimeVersion, "runtime_version"}} {
		if !r.l.Set {
			continue
		}
		rg, err := ParseRange(r.l.V)
		if err != nil {
			b.errorf(file, r.l.Line, "selector %s: %v", r.key, err)
			continue
		}
		*r.dst = rg
	}
	if rs.Expr.Set {
		prg, err := compileExpr(b.env, rs.Expr.V)
		if err != nil {
			b.errorf(file, rs.Expr.Line, "selector expr: %v", err)
		}
		s.prg = prg
	}
	return s
}

// firstLine returns the smallest non-zero line, or 0.
func firstLine(lines ...int) int {
	out := 0
	for _, l := range lines {
		if l > 0 && (out == 0 || l < out) {
			out = l
		}
	}
	return out
}

func (b *builder) rollout(file string, rr *rawRollout) *Rollout {
	line := rr.ID.Line
	if line == 0 { // no id: point at the first field we have
		if t := rr.Target; t != nil {
			line = firstLine(t.Kind.Line, t.Name.Line, t.Version.Line)
		}
		line = firstLine(line, rr.Window.Line)
		if s := rr.Selector; s != nil {
			line = firstLine(line, s.Devices.Line, s.Hardware.Line, s.AgentVersion.Line, s.RuntimeVersion.Line, s.Expr.Line)
		}
		for _, w := range rr.Waves {
			line = firstLine(line, w.Percent.Line, w.Soak.Line)
		}
	}
	nerr := len(b.errs)
	if !rr.ID.Set || !idRE.MatchString(rr.ID.V) {
		b.errorf(file, line, "rollout id %q: want lower-case letters, digits, '.', '_' or '-', 1-63 characters", rr.ID.V)
		return nil
	}
	if b.ids == nil {
		b.ids = map[string]Pos{}
	}
	if prev, dup := b.ids[rr.ID.V]; dup {
		b.errorf(file, line, "rollout %q already defined at %s:%d", rr.ID.V, prev.File, prev.Line)
		return nil
	}
	b.ids[rr.ID.V] = Pos{file, line}
	ro := &Rollout{ID: rr.ID.V, Pos: Pos{file, line}}
	if rr.Target == nil {
		b.errorf(file, line, "rollout %q: target missing (kind, name, version)", ro.ID)
	} else {
		t := rr.Target
		k, err := artifact.ParseKind(t.Kind.V)
		if err != nil || !k.Slot() {
			b.errorf(file, max(t.Kind.Line, line), "rollout %q: target kind %q: want model or runtime", ro.ID, t.Kind.V)
		}
		m := artifact.Meta{Kind: k, Name: t.Name.V, Version: t.Version.V}
		if !idRE.MatchString(t.Name.V) {
			b.errorf(file, max(t.Name.Line, line), "rollout %q: target name %q: want lower-case letters, digits, '.', '_' or '-'", ro.ID, t.Name.V)
		} else if _, err := artifact.ParseVersion(t.Version.V); err != nil {
			b.errorf(file, max(t.Version.Line, line), "rollout %q: target %v", ro.ID, err)
		}
		ro.Target = Target{Kind: m.Kind, Name: m.Name, Version: m.Version}
	}
	ro.Selector = b.selector(file, rr.Selector)
	if rr.Window.Set {
		w, ok := b.pol.Windows[rr.Window.V]
		if !ok {
			b.errorf(file, rr.Window.Line, "rollout %q: unknown window %q", ro.ID, rr.Window.V)
		}
		ro.Window = w
	}
	if rr.Gates != nil {
		g := b.gates(file, rr.Gates)
		ro.Gates = &g
	}
	ratio, minReports := DefaultMaxFailureRatio, DefaultMinReports
	if pr := rr.Pause; pr != nil {
		if pr.MaxFailureRatio.Set {
			ratio = pr.MaxFailureRatio.V
			if ratio < 0 || ratio > 1 || math.IsNaN(ratio) {
				b.errorf(file, pr.MaxFailureRatio.Line, "rollout %q: pause max_failure_ratio %v: want a value in [0, 1]", ro.ID, ratio)
			}
		}
		if pr.MinReports.Set {
			minReports = pr.MinReports.V
			if minReports < 1 {
				b.errorf(file, pr.MinReports.Line, "rollout %q: pause min_reports %d: want at least 1", ro.ID, minReports)
			}
		}
	}
	if len(rr.Waves) == 0 {
		ro.Waves = []Wave{{Percent: 100, MaxFailureRatio: ratio, MinReports: minReports}}
	}
	prev := 0.0
	// Messages number the waves from 0, as `rollout status` and `approve --wave` do
	// (they counted from 1: "wave 1" was the first wave here and the second there;
	// found from outside).
	for i, rw := range rr.Waves {
		w := Wave{Percent: rw.Percent.V, Approval: rw.Approval.V, MaxFailureRatio: ratio, MinReports: minReports}
		wl := max(rw.Percent.Line, line)
		if !rw.Percent.Set {
			b.errorf(file, max(rw.Soak.Line, rw.Approval.Line, line), "rollout %q: wave %d: percent missing", ro.ID, i)
		} else if w.Percent <= prev || w.Percent > 100 || math.IsNaN(w.Percent) {
			b.errorf(file, wl, "rollout %q: wave %d: percent %v: want more than the previous wave (%v) and at most 100", ro.ID, i, w.Percent, prev)
		} else if math.Abs(w.Percent*100-math.Round(w.Percent*100)) > 1e-9 {
			b.errorf(file, wl, "rollout %q: wave %d: percent %v: resolution is 0.01", ro.ID, i, w.Percent)
		}
		prev = max(prev, w.Percent)
		if i == 0 && w.Approval {
			// The first wave starts when the rollout is planned; an approval there was
			// silently ignored (found from outside, 2 Dec).
			b.errorf(file, max(rw.Approval.Line, line), "rollout %q: wave 0: approval: the first wave starts as soon as the rollout is created; create the rollout when it may start, or give it a small first wave and approve the second", ro.ID)
		}
		w.Soak, _ = b.duration(file, rw.Soak, fmt.Sprintf("rollout %q: wave %d: soak", ro.ID, i))
		if rw.MaxFailureRatio.Set {
			w.MaxFailureRatio = rw.MaxFailureRatio.V
			if w.MaxFailureRatio < 0 || w.MaxFailureRatio > 1 || math.IsNaN(w.MaxFailureRatio) {
				b.errorf(file, rw.MaxFailureRatio.Line, "rollout %q: wave %d: max_failure_ratio %v: want a value in [0, 1]", ro.ID, i, w.MaxFailureRatio)
			}
		}
		if rw.MinReports.Set {
			w.MinReports = rw.MinReports.V
			if w.MinReports < 1 {
				b.errorf(file, rw.MinReports.Line, "rollout %q: wave %d: min_reports %d: want at least 1", ro.ID, i, w.MinReports)
			}
		}
		ro.Waves = append(ro.Waves, w)
	}
	if len(b.errs) > nerr {
		return nil
	}
	return ro
}

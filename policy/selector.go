package policy

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/google/cel-go/cel"

	"github.com/edgeward/edgeward/internal/artifact"
)

// Selector chooses devices. Every condition that is set must hold; an unset one holds
// for every device.
type Selector struct {
	// Devices, if not empty, lists the only device IDs selected.
	Devices []string
	// Labels must all be present on the device with these exact values.
	Labels map[string]string
	// Hardware, if not empty, lists the accepted hardware classes (any of them).
	Hardware []string
	// AgentVersion and RuntimeVersion are version ranges of the agent and of the
	// runtime committed in the device's runtime slot.
	AgentVersion   Range
	RuntimeVersion Range
	// Expr is a CEL expression over the device (see CELVariables); it was compiled and
	// type-checked to bool when the policy was loaded.
	Expr string
	prg  cel.Program
}

// CELVariables documents the variables a selector expression can use.
func CELVariables() []string {
	return []string{
		"id: string — the device ID",
		"labels: map(string, string)",
		"hardware: string — e.g. x86_64, aarch64",
		"agent_version: string",
		"runtime_version: string — committed runtime, \"\" if none",
		"model: string — name of the committed model, \"\" if none",
		"model_version: string",
		"attrs: map(string, dyn) — other attributes the agent reports (numbers are doubles)",
	}
}

// maxCELCost bounds the work of one selector evaluation.
const maxCELCost = 10_000

func newCELEnv() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Variable("id", cel.StringType),
		cel.Variable("labels", cel.MapType(cel.StringType, cel.StringType)),
		cel.Variable("hardware", cel.StringType),
		cel.Variable("agent_version", cel.StringType),
		cel.Variable("runtime_version", cel.StringType),
		cel.Variable("model", cel.StringType),
		cel.Variable("model_version", cel.StringType),
		cel.Variable("attrs", cel.MapType(cel.StringType, cel.DynType)),
	)
}

// compileExpr compiles and type-checks expr; the error text is CEL's, which locates the
// problem inside the expression.
func compileExpr(env *cel.Env, expr string) (cel.Program, error) {
	ast, iss := env.Compile(expr)
	if err := iss.Err(); err != nil {
		return nil, fmt.Errorf("CEL expression: %s", strings.ReplaceAll(err.Error(), "\n", " | "))
	}
	if !ast.OutputType().IsExactType(cel.BoolType) {
		return nil, fmt.Errorf("CEL expression has type %s, want bool", ast.OutputType())
	}
	prg, err := env.Program(ast, cel.CostLimit(maxCELCost))
	if err != nil {
		return nil, fmt.Errorf("CEL expression: %w", err)
	}
	return prg, nil
}

// Match reports whether s selects d. When it does not, why says which condition failed.
// A CEL expression that fails to evaluate (a missing attribute, the cost limit) does not
// select the device, and why carries the evaluation error.
func (s *Selector) Match(d *Device) (ok bool, why string) {
	if s == nil {
		return true, ""
	}
	if len(s.Devices) > 0 && !slices.Contains(s.Devices, d.ID) {
		return false, "device not listed"
	}
	for _, k := range slices.Sorted(maps.Keys(s.Labels)) {
		if v, has := d.Labels[k]; !has || v != s.Labels[k] {
			return false, fmt.Sprintf("label %s is %q, want %q", k, v, s.Labels[k])
		}
	}
	if len(s.Hardware) > 0 && !slices.Contains(s.Hardware, d.Hardware) {
		return false, fmt.Sprintf("hardware %q not in %v", d.Hardware, s.Hardware)
	}
	if !s.AgentVersion.Contains(d.AgentVersion) {
		return false, fmt.Sprintf("agent version %q not in %q", d.AgentVersion, s.AgentVersion)
	}
	rt := d.Slots[artifact.KindRuntime].Version
	if !s.RuntimeVersion.Contains(rt) {
		return false, fmt.Sprintf("runtime version %q not in %q", rt, s.RuntimeVersion)
	}
	if s.prg != nil {
		out, _, err := s.prg.Eval(d.celVars())
		if err != nil {
			return false, fmt.Sprintf("expression %q: %v", s.Expr, err)
		}
		if b, isBool := out.Value().(bool); !isBool || !b {
			return false, fmt.Sprintf("expression %q is false", s.Expr)
		}
	}
	return true, ""
}

func (d *Device) celVars() map[string]any {
	labels := d.Labels
	if labels == nil {
		labels = map[string]string{}
	}
	attrs := d.Attrs
	if attrs == nil {
		attrs = map[string]any{}
	}
	m := d.Slots[artifact.KindModel]
	return map[string]any{
		"id":              d.ID,
		"labels":          labels,
		"hardware":        d.Hardware,
		"agent_version":   d.AgentVersion,
		"runtime_version": d.Slots[artifact.KindRuntime].Version,
		"model":           m.Name,
		"model_version":   m.Version,
		"attrs":           attrs,
	}
}

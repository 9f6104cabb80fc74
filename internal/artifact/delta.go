package artifact

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
)

// DeltaMarker separates a delta's target path from its base: a delta of target
// models/m/1.1.0.onnx from a base whose sha256 starts with 0123456789abcdef is
// models/m/1.1.0.onnx~delta-0123456789abcdef. '~' is in no version or extension, so a
// delta path never parses as a full target's (ParseTargetPath refuses it).
const DeltaMarker = "~delta-"

// DeltaPath is where the delta to target from a base with that sha256 (hex) is
// published. A device that knows its base's hash finds the delta without a listing.
func DeltaPath(target, baseSHA256 string) string {
	if len(baseSHA256) > 16 {
		baseSHA256 = baseSHA256[:16]
	}
	return target + DeltaMarker + baseSHA256
}

// IsDeltaPath reports whether p is a delta's target path.
func IsDeltaPath(p string) bool { return strings.Contains(p, DeltaMarker) }

// DeltaRef names a target by path, sha256 (hex) and length.
type DeltaRef struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
	Length int64  `json:"length"`
}

// Delta is the custom metadata of a delta target ({"delta": {...}}): applied with
// Method to the target Base names, it gives the bytes of Result. The delta is signed by
// the same role as Result; the device still checks what it built against Result's
// signed hash and length (from Result's own TUF entry, not from here) and falls back to
// the full target on any failure.
type Delta struct {
	Method string   `json:"method"`
	Base   DeltaRef `json:"base"`
	Result DeltaRef `json:"result"`
}

// DeltaCustom is the custom field of a delta target.
type DeltaCustom struct {
	Delta *Delta `json:"delta"`
}

// ParseDelta reads a delta target's custom metadata; ok is false for any other target.
func ParseDelta(custom []byte) (d Delta, ok bool) {
	var c DeltaCustom
	if json.Unmarshal(custom, &c) != nil || c.Delta == nil {
		return Delta{}, false
	}
	return *c.Delta, true
}

// Validate checks the syntax of a delta's metadata.
func (d Delta) Validate() error {
	if d.Method == "" {
		return fmt.Errorf("delta: no method")
	}
	for _, r := range []DeltaRef{d.Base, d.Result} {
		if b, err := hex.DecodeString(r.SHA256); err != nil || len(b) != 32 {
			return fmt.Errorf("delta: %s: bad sha256 %q", r.Path, r.SHA256)
		}
		if r.Length < 0 {
			return fmt.Errorf("delta: %s: negative length", r.Path)
		}
		if _, _, _, err := ParseTargetPath(r.Path); err != nil {
			return fmt.Errorf("delta: %w", err)
		}
	}
	return nil
}

// Package eventlog is Edgeward's measurement log: one event per artifact
// load, each extended into a PCR as SHA-256(kind|name|version|sha256), or
// SHA-256(kind|name|version|sha256|plain_sha256) for an encrypted artifact. It is
// pure (no I/O, no TPM) and shared by the agent, which appends events, and the
// verifier, which replays them against quoted PCR values.
package eventlog

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/edgeward/edgeward/internal/jsonstrict"
)

// PCRs used for measurements (DESIGN.md: 16 in development, 23 in production).
// Both are resettable by software, so the log is per boot: an agent must
// persist its log across restarts within a boot and start a new one after a
// reboot (the quote's reset count tells which).
const (
	PCRDevelopment = 16
	PCRProduction  = 23
)

// MaxEvents bounds a parsed log; MaxFieldLen bounds each string field.
const (
	MaxEvents   = 4096
	MaxFieldLen = 256
	// MaxLogBytes bounds the JSON encoding Parse accepts.
	MaxLogBytes = 2 << 20
)

// ErrMalformed is wrapped by every Parse and Validate error.
var ErrMalformed = errors.New("eventlog: malformed")

// Event is one measured artifact load.
type Event struct {
	// PCR is the PCR the event was extended into.
	PCR int `json:"pcr"`
	// Kind is the slot kind ("model", "runtime").
	Kind    string `json:"kind"`
	Name    string `json:"name"`
	Version string `json:"version"`
	// SHA256 is the lowercase hex SHA-256 of the bytes actually loaded: for an
	// encrypted model, of its ciphertext (the target the device verified and holds).
	SHA256 string `json:"sha256"`
	// PlainSHA256 is set for an encrypted artifact only (issue 18): the lowercase hex
	// SHA-256 of the plaintext the runtime decrypted in memory and created its session
	// from, checked there against the target's signed metadata. "" for a plaintext
	// artifact, whose SHA256 is already what runs.
	PlainSHA256 string `json:"plain_sha256,omitempty"`
	// Unloaded marks the end of a load: the artifact named (the one the log last said
	// was loaded) no longer runs, and nothing of its kind and name does (a model whose
	// trial failed on a device that serves no earlier version). Latest then leaves the
	// artifact out.
	Unloaded bool `json:"unloaded,omitempty"`
}

// unloadPrefix starts the digest of an unload event. A kind cannot contain NUL
// (Validate), so no load event's digest input starts with it.
const unloadPrefix = "\x00unloaded|"

// Digest is the value extended into the PCR:
// SHA-256(kind "|" name "|" version "|" sha256-hex), and for an encrypted
// artifact SHA-256(kind "|" name "|" version "|" sha256-hex "|" plain-sha256-hex),
// so the quote covers the plaintext's hash too. Validate rejects "|" in the
// fields and fixes the hashes' length, so the encoding is unambiguous.
// An unload event's input is the same, after "\x00unloaded|".
func (e Event) Digest() [32]byte {
	in := e.Kind + "|" + e.Name + "|" + e.Version + "|" + e.SHA256
	if e.PlainSHA256 != "" {
		in += "|" + e.PlainSHA256
	}
	if e.Unloaded {
		in = unloadPrefix + in
	}
	return sha256.Sum256([]byte(in))
}

// Validate checks the fields are well formed.
func (e Event) Validate() error {
	if e.PCR < 0 || e.PCR > 23 {
		return fmt.Errorf("%w: PCR %d out of range", ErrMalformed, e.PCR)
	}
	for _, f := range []struct{ n, v string }{{"kind", e.Kind}, {"name", e.Name}, {"version", e.Version}} {
		if f.v == "" || len(f.v) > MaxFieldLen {
			return fmt.Errorf("%w: %s must be 1..%d bytes", ErrMalformed, f.n, MaxFieldLen)
		}
		if strings.ContainsAny(f.v, "|\x00\n") {
			return fmt.Errorf("%w: %s %q contains a separator", ErrMalformed, f.n, f.v)
		}
	}
	if err := validHash("sha256", e.SHA256); err != nil {
		return err
	}
	if e.PlainSHA256 != "" {
		return validHash("plain_sha256", e.PlainSHA256)
	}
	return nil
}

func validHash(field, h string) error {
	if len(h) != 64 || strings.ToLower(h) != h {
		return fmt.Errorf("%w: %s %q is not 64 lowercase hex digits", ErrMalformed, field, h)
	}
	if _, err := hex.DecodeString(h); err != nil {
		return fmt.Errorf("%w: %s %q: %w", ErrMalformed, field, h, err)
	}
	return nil
}

// Log is a measurement log in extend order.
type Log []Event

// Parse decodes and validates a JSON log (an array of events). It rejects
// unknown fields, trailing data, oversized input and malformed events.
func Parse(b []byte) (Log, error) {
	if len(b) > MaxLogBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrMalformed, len(b), MaxLogBytes)
	}
	var l Log
	if err := jsonstrict.Decode(bytes.NewReader(b), &l); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if err := l.Validate(); err != nil {
		return nil, err
	}
	return l, nil
}

// Validate checks every event and the size bound.
func (l Log) Validate() error {
	if len(l) > MaxEvents {
		return fmt.Errorf("%w: %d events, limit %d", ErrMalformed, len(l), MaxEvents)
	}
	for i, e := range l {
		if err := e.Validate(); err != nil {
			return fmt.Errorf("event %d: %w", i, err)
		}
	}
	return nil
}

// Replay computes the SHA-256 PCR values the log produces from PCRs that
// start at zero (PCRs 16 and 23 after a reset or boot). Only PCRs the log
// touches appear in the result.
func (l Log) Replay() map[int][32]byte {
	out := map[int][32]byte{}
	for _, e := range l {
		d := e.Digest()
		cur := out[e.PCR]
		out[e.PCR] = sha256.Sum256(append(cur[:], d[:]...))
	}
	return out
}

// Artifact identifies what a slot holds.
type Artifact struct {
	Kind    string `json:"kind"`
	Name    string `json:"name"`
	Version string `json:"version"`
	SHA256  string `json:"sha256"`
	// PlainSHA256 is an encrypted artifact's plaintext hash (Event.PlainSHA256).
	PlainSHA256 string `json:"plain_sha256,omitempty"`
}

// Latest returns, per (kind, name), the last measured artifact: what the
// device loaded most recently, unless an unload event followed it.
func (l Log) Latest() map[[2]string]Artifact {
	out := map[[2]string]Artifact{}
	for _, e := range l {
		k := [2]string{e.Kind, e.Name}
		if e.Unloaded {
			delete(out, k)
			continue
		}
		out[k] = Artifact{Kind: e.Kind, Name: e.Name, Version: e.Version, SHA256: e.SHA256, PlainSHA256: e.PlainSHA256}
	}
	return out
}

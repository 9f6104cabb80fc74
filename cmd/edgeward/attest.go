package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/edgeward/edgeward/internal/reference"
)

// cmdAttestLearn drafts the boot and runtime policy from a reference device's last
// trusted verdict in an audit export: edgeward attest learn EXPORT --device ID.
func cmdAttestLearn(ctx context.Context, env *cliEnv, args []string) error {
	fs := newFlagSet("attest learn", env)
	device := fs.String("device", "", "the reference device's ID (required)")
	hardware := fs.String("hardware", "", "hardware class the boot entry applies to (default: the one the device enrolled with)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *device == "" {
		return errors.New("usage: edgeward attest learn EXPORT --device ID (EXPORT from 'edgeward audit export', verified with 'edgeward audit verify'; - for stdin)")
	}
	var r io.Reader = env.stdin
	if pos[0] != "-" {
		f, err := os.Open(pos[0])
		if err != nil {
			return err
		}
		defer f.Close()
		r = f
	}
	type verdictData struct {
		Verdict string                  `json:"verdict"`
		Boot    *reference.BootState    `json:"boot"`
		Runtime *reference.RuntimeState `json:"runtime"`
	}
	var (
		found  *verdictData
		seq    int64
		at     string
		enroll string
	)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var line struct {
			Type    string          `json:"type"`
			Seq     int64           `json:"seq"`
			At      string          `json:"at"`
			Kind    string          `json:"kind"`
			Subject string          `json:"subject"`
			Data    json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			return fmt.Errorf("audit export: %w", err)
		}
		if line.Type != "record" || line.Subject != *device {
			continue
		}
		switch line.Kind {
		case "device.enroll":
			var d struct {
				Hardware string `json:"hardware"`
			}
			if json.Unmarshal(line.Data, &d) == nil {
				enroll = d.Hardware
			}
		case "attestation.verdict":
			var d verdictData
			if err := json.Unmarshal(line.Data, &d); err != nil {
				return fmt.Errorf("audit record %d: %w", line.Seq, err)
			}
			if d.Verdict == "trusted" && (d.Boot != nil || d.Runtime != nil) {
				found, seq, at = &d, line.Seq, line.At
			}
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("audit export: %w", err)
	}
	if found == nil {
		return fmt.Errorf("no trusted verdict with boot or IMA evidence for device %q in the export", *device)
	}
	hw := *hardware
	if hw == "" {
		hw = enroll
	}
	var b *reference.Boot
	if found.Boot != nil {
		l := reference.Learn(*found.Boot, hw)
		b = &l
	}
	var rt *reference.Runtime
	if found.Runtime != nil {
		l := reference.LearnRuntime(*found.Runtime)
		rt = &l
	}
	_, err = io.WriteString(env.stdout, reference.Draft(b, rt, fmt.Sprintf("audit record %d (device %s, trusted verdict at %s)", seq, *device, at)))
	return err
}

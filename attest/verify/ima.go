package verify

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"path"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/ima"
	"github.com/edgeward/edgeward/internal/reference"
)

// Reason codes of runtime integrity (IMA).
const (
	IMALogMissing      Code = "ima_log_missing"
	IMALogMalformed    Code = "ima_log_malformed"
	IMAPCRNotQuoted    Code = "ima_pcr_not_quoted"
	IMAReplayMismatch  Code = "ima_replay_mismatch"
	IMAUntrustedFile   Code = "ima_untrusted_file"
	IMAAgentNotMeasure Code = "ima_agent_not_measured"
	// IMABootAggregate: the list's first entry, boot_aggregate, is not the digest of
	// the quoted PCRs 0-7 (0-9 on kernels from 5.8): the list is not from this boot.
	IMABootAggregate Code = "ima_boot_aggregate_mismatch"
	// IMARuntimeNotLoaded: the runtime slot's library is not in the list.
	IMARuntimeNotLoaded Code = "ima_runtime_not_loaded"
)

// maxUnknown bounds the unknown files a verdict lists.
const maxUnknown = 100

// maxListedPath bounds a file's path as a verdict lists it, in bytes.
const maxListedPath = 256

// boundPath cuts p to maxListedPath bytes on a rune boundary, marking the cut with
// the path's length.
func boundPath(p string) string {
	if len(p) <= maxListedPath {
		return p
	}
	cut := maxListedPath
	for cut > 0 && !utf8.RuneStart(p[cut]) {
		cut--
	}
	return fmt.Sprintf("%s…(%d bytes)", p[:cut], len(p))
}

// verifyIMA checks the IMA measurement list against the quoted PCR 10 and p.Runtime.
// The device reads the list after its quote and the kernel only appends, so the
// list may run past the quote: the shortest prefix that replays to the quoted PCR 10
// is what the quote covers, and only it is read. Its first entry, boot_aggregate,
// must be the digest of the quoted boot PCRs (checkBootAggregate), so a list replayed
// into PCR 10 belongs to the boot the quote shows.
func verifyIMA(v *Verdict, p Policy, ev Evidence, selected []int, pcrsQuoted bool) {
	if len(ev.IMALog) == 0 {
		if p.Runtime != nil {
			v.add(IMALogMissing, "the runtime policy requires the IMA measurement list and the device sent none")
		}
		return
	}
	var missing []int
	for _, i := range append(reference.BootPCRs(), ima.PCR) {
		if !slices.Contains(selected, i) {
			missing = append(missing, i)
		}
	}
	if len(missing) > 0 {
		v.add(IMAPCRNotQuoted, "the quote does not cover PCRs %v (IMA: PCR %d, and PCRs 0-7 for its boot_aggregate)", missing, ima.PCR)
		return
	}
	if !pcrsQuoted {
		return
	}
	entries, err := ima.Parse(ev.IMALog)
	if err != nil {
		v.add(IMALogMalformed, "%v", err)
		return
	}
	quoted := ev.Quote.PCRs[ima.PCR]
	var cur [32]byte
	covered := -1
	if bytes.Equal(quoted, cur[:]) {
		covered = 0
	}
	for i, e := range entries {
		if e.PCR != ima.PCR {
			v.add(IMALogMalformed, "entry %d (%s) extends PCR %d, not %d", i, e.Path, e.PCR, ima.PCR)
			return
		}
		if covered >= 0 {
			break
		}
		cur = sha256Extend(cur, e.ExtendDigest())
		if bytes.Equal(quoted, cur[:]) {
			covered = i + 1
		}
	}
	if covered < 0 {
		v.add(IMAReplayMismatch, "no prefix of the %d entries replays to the quoted PCR %d %x", len(entries), ima.PCR, quoted)
		return
	}
	entries = entries[:covered]
	if covered > 0 {
		checkBootAggregate(v, entries[0], ev.Quote.PCRs)
	}
	st := reference.RuntimeState{Entries: len(entries)}
	r := p.Runtime
	allowed := map[string]bool{}
	agents := slices.Clone(p.AgentBuilds[artifact.AgentBinary])
	runtimes := slices.Clone(p.AgentBuilds[artifact.RuntimeBinary])
	if r != nil {
		for _, l := range [][]string{r.Agent, r.Runtime, r.Allowed} {
			for _, d := range l {
				allowed[d] = true
			}
		}
		agents = append(agents, r.Agent...)
		runtimes = append(runtimes, r.Runtime...)
	}
	agentSeen, slotLoaded, libraries := false, false, 0
	for i, e := range entries {
		d := e.DigestHex()
		base := path.Base(e.Path)
		switch {
		case i == 0 && e.Path == "boot_aggregate":
			continue
		case base == artifact.AgentBinary:
			if !slices.Contains(st.Agent, d) && len(st.Agent) < reference.MaxListed {
				st.Agent = append(st.Agent, d)
			}
			agentSeen = true
			if r != nil && !slices.Contains(agents, d) {
				v.add(IMAUntrustedFile, "entry %d: the agent %s has digest %s, which is no published agent target (agents/%s/…)", i, e.Path, d, artifact.AgentBinary)
			}
			continue
		case base == artifact.RuntimeBinary:
			if !slices.Contains(st.Runtime, d) && len(st.Runtime) < reference.MaxListed {
				st.Runtime = append(st.Runtime, d)
			}
			if r != nil && !slices.Contains(runtimes, d) {
				v.add(IMAUntrustedFile, "entry %d: the runtime %s has digest %s, which is no published agent target (agents/%s/…)", i, e.Path, d, artifact.RuntimeBinary)
			}
			continue
		case strings.HasPrefix(base, "libonnxruntime.so"):
			libraries++
			slotLoaded = slotLoaded || d == p.RuntimeSlot
			if !slices.Contains(p.RuntimeLibraries, d) && !allowed[d] {
				v.add(IMAUntrustedFile, "entry %d: the ONNX Runtime library %s has digest %s, which is no published runtime target", i, e.Path, d)
			}
			continue
		}
		if e.Violation || !allowed[d] {
			// A listed path is cut (a device chooses them, up to ima.MaxPath each: 100
			// unknown files of 4 KB made a 410 KB audit record at every check-in of a
			// trusted device; found by an outside audit, 1 Dec).
			path := boundPath(e.Path)
			what := path + " " + d
			if e.Violation {
				what = path + " (measured while open for writing)"
			}
			if r != nil && r.Enforce {
				v.add(IMAUntrustedFile, "entry %d: %s is not allowed to run", i, what)
			} else if len(st.Unknown) < maxUnknown {
				st.Unknown = append(st.Unknown, what)
			}
		}
	}
	if r != nil && len(agents) > 0 && !agentSeen {
		v.add(IMAAgentNotMeasure, "no edgeward-agent in the %d entries the quote covers", len(entries))
	}
	if r != nil && p.RuntimeSlot != "" && !slotLoaded {
		v.add(IMARuntimeNotLoaded, "the runtime slot's library (sha256 %s) is not among the %d ONNX Runtime libraries in the %d entries the quote covers", p.RuntimeSlot, libraries, len(entries))
	}
	v.Runtime = &st
}

// checkBootAggregate checks the list's first entry, which the kernel writes before
// anything else: boot_aggregate, the SHA-256 of the boot PCRs of the bank its d-ng
// names, concatenated: PCRs 0-7, and since Linux 5.8 PCRs 0-9 (8 and 9 hold the
// kernel command line and image on GRUB systems) for banks other than SHA-1. Either
// form passes (the quote has PCRs 8 and 9 when the agent sends a list). A list
// replayed into PCR 10 by software after the boot would need the digest of PCRs it
// cannot set, so this ties the list to the boot the quote shows.
func checkBootAggregate(v *Verdict, e ima.Entry, pcrs map[int][]byte) {
	if e.Path != "boot_aggregate" || e.Template != "ima-ng" && e.Template != "ima-sig" {
		v.add(IMALogMalformed, "entry 0 is %q (template %s), not the kernel's boot_aggregate", e.Path, e.Template)
		return
	}
	if e.Alg != "sha256" {
		v.add(IMABootAggregate, "boot_aggregate is a %s digest; only the SHA-256 bank is quoted", e.Alg)
		return
	}
	d := e.DigestHex()
	to7, to9 := "(PCRs 0-7 not quoted)", "(PCRs 8-9 not quoted)"
	if a, ok := ima.BootAggregate(pcrs, 7); ok {
		to7 = hex.EncodeToString(a[:])
	}
	if a, ok := ima.BootAggregate(pcrs, 9); ok {
		to9 = hex.EncodeToString(a[:])
	}
	if d != to7 && d != to9 {
		v.add(IMABootAggregate, "entry 0: boot_aggregate %s; the quoted PCRs 0-7 digest to %s, PCRs 0-9 to %s", d, to7, to9)
	}
}

package verify

import (
	"bytes"
	"path"
	"slices"
	"strings"

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
)

// maxUnknown bounds the unknown files a verdict lists.
const maxUnknown = 100

// verifyIMA checks the IMA measurement list against the quoted PCR 10 and p.Runtime.
// The device reads the list after its quote and the kernel only appends, so the
// list may run past the quote: the shortest prefix that replays to the quoted PCR 10
// is what the quote covers, and only it is read.
func verifyIMA(v *Verdict, p Policy, ev Evidence, selected []int, pcrsQuoted bool) {
	if len(ev.IMALog) == 0 {
		if p.Runtime != nil {
			v.add(IMALogMissing, "the runtime policy requires the IMA measurement list and the device sent none")
		}
		return
	}
	if !slices.Contains(selected, ima.PCR) {
		v.add(IMAPCRNotQuoted, "the quote does not cover PCR %d (IMA)", ima.PCR)
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
	st := reference.RuntimeState{Entries: len(entries)}
	r := p.Runtime
	allowed := map[string]bool{}
	if r != nil {
		for _, l := range [][]string{r.Agent, r.Runtime, r.Allowed} {
			for _, d := range l {
				allowed[d] = true
			}
		}
	}
	agentSeen := false
	for i, e := range entries {
		d := e.DigestHex()
		base := path.Base(e.Path)
		switch {
		case e.Path == "boot_aggregate":
			continue
		case base == "edgeward-agent":
			st.Agent = append(st.Agent, d)
			agentSeen = true
			if r != nil && !slices.Contains(r.Agent, d) {
				v.add(IMAUntrustedFile, "entry %d: the agent %s has digest %s, not a trusted agent build", i, e.Path, d)
			}
			continue
		case base == "edgeward-runtime":
			st.Runtime = append(st.Runtime, d)
			if r != nil && !slices.Contains(r.Runtime, d) {
				v.add(IMAUntrustedFile, "entry %d: the runtime %s has digest %s, not a trusted runtime build", i, e.Path, d)
			}
			continue
		case strings.HasPrefix(base, "libonnxruntime.so"):
			if !slices.Contains(p.RuntimeLibraries, d) && !allowed[d] {
				v.add(IMAUntrustedFile, "entry %d: the ONNX Runtime library %s has digest %s, which is no published runtime target", i, e.Path, d)
			}
			continue
		}
		if e.Violation || !allowed[d] {
			what := e.Path + " " + d
			if e.Violation {
				what = e.Path + " (measured while open for writing)"
			}
			if r != nil && r.Enforce {
				v.add(IMAUntrustedFile, "entry %d: %s is not allowed to run", i, what)
			} else if len(st.Unknown) < maxUnknown {
				st.Unknown = append(st.Unknown, what)
			}
		}
	}
	if r != nil && len(r.Agent) > 0 && !agentSeen {
		v.add(IMAAgentNotMeasure, "no edgeward-agent in the %d entries the quote covers", len(entries))
	}
	v.Runtime = &st
}

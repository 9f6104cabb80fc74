package ima

import (
	"bytes"
	"crypto/sha256"
	"testing"
)

// FuzzParse: any measurement list a device sends parses or is refused without
// panicking, and a list of ima-ng and ima-sig entries that parses re-encodes to the same bytes
// (nothing is read that was not extended, nothing extended is dropped).
func FuzzParse(f *testing.F) {
	f.Add(Marshal([]Entry{NG("boot_aggregate", sha256.Sum256(nil)), NG("/usr/bin/edgeward-agent", sha256.Sum256([]byte("agent")))}))
	v := NG("/var/log/x", sha256.Sum256([]byte("x")))
	v.TemplateHash = [32]byte{}
	f.Add(Marshal([]Entry{v}))
	f.Add(Marshal([]Entry{Sig("/usr/bin/edgeward-agent", sha256.Sum256([]byte("agent")), []byte{3, 2, 0, 1, 2, 3}), Sig("/usr/bin/x", sha256.Sum256(nil), nil)}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		entries, err := Parse(b)
		if err != nil {
			return
		}
		Replay(entries)
		for _, e := range entries {
			if e.Template != "ima-ng" && e.Template != "ima-sig" {
				return
			}
		}
		if got := Marshal(entries); !bytes.Equal(got, b) {
			t.Fatalf("Parse then Marshal changed the list:\n%x\n%x", b, got)
		}
	})
}

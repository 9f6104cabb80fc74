package eventlog_test

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/internal/eventlog"
)

var ev = eventlog.Event{PCR: 16, Kind: "model", Name: "m", Version: "1.0.0", SHA256: strings.Repeat("a", 64)}

func TestDigest(t *testing.T) {
	want := sha256.Sum256([]byte("model|m|1.0.0|" + strings.Repeat("a", 64)))
	if got := ev.Digest(); got != want {
		t.Errorf("Digest() = %x; want %x", got, want)
	}
}

// TestDigestEncrypted: an encrypted artifact's event covers its plaintext hash too,
// so the quote does; a plaintext event's digest is unchanged.
func TestDigestEncrypted(t *testing.T) {
	enc := ev
	enc.PlainSHA256 = strings.Repeat("b", 64)
	want := sha256.Sum256([]byte("model|m|1.0.0|" + strings.Repeat("a", 64) + "|" + strings.Repeat("b", 64)))
	if got := enc.Digest(); got != want {
		t.Errorf("Digest(encrypted) = %x; want %x", got, want)
	}
	other := enc
	other.PlainSHA256 = strings.Repeat("c", 64)
	if enc.Digest() == other.Digest() || enc.Digest() == ev.Digest() {
		t.Errorf("Digest ignores the plaintext hash")
	}
	if got := (eventlog.Log{enc}).Latest()[[2]string{"model", "m"}].PlainSHA256; got != enc.PlainSHA256 {
		t.Errorf("Latest().PlainSHA256 = %q; want %q", got, enc.PlainSHA256)
	}
}

func TestReplay(t *testing.T) {
	d1, d2 := ev.Digest(), ev.Digest()
	first := sha256.Sum256(append(make([]byte, 32), d1[:]...))
	second := sha256.Sum256(append(first[:], d2[:]...))
	if got := (eventlog.Log{ev, ev}).Replay()[16]; got != second {
		t.Errorf("Replay() = %x; want %x", got, second)
	}
	if got := (eventlog.Log{}).Replay(); len(got) != 0 {
		t.Errorf("Replay(empty) = %v; want none", got)
	}
}

func TestParse(t *testing.T) {
	good, _ := json.Marshal(eventlog.Log{ev})
	tests := []struct {
		in string
		ok bool
	}{
		{string(good), true},
		{`[]`, true},
		{`null`, true},
		{`{`, false},
		{`[{"pcr":16}]`, false},
		{`[{"pcr":99,"kind":"model","name":"m","version":"1","sha256":"` + strings.Repeat("a", 64) + `"}]`, false},
		{`[{"pcr":16,"kind":"mo|del","name":"m","version":"1","sha256":"` + strings.Repeat("a", 64) + `"}]`, false},
		{`[{"pcr":16,"kind":"model","name":"m","version":"1","sha256":"` + strings.Repeat("A", 64) + `"}]`, false},
		{`[{"pcr":16,"kind":"model","name":"m","version":"1","sha256":"` + strings.Repeat("g", 64) + `"}]`, false},
		{`[{"pcr":16,"kind":"model","name":"m","version":"1","sha256":"` + strings.Repeat("a", 64) + `","extra":1}]`, false},
		{`[{"pcr":16,"kind":"model","name":"m","version":"1","sha256":"` + strings.Repeat("a", 64) + `","plain_sha256":"` + strings.Repeat("b", 64) + `"}]`, true},
		{`[{"pcr":16,"kind":"model","name":"m","version":"1","sha256":"` + strings.Repeat("a", 64) + `","plain_sha256":"` + strings.Repeat("B", 64) + `"}]`, false},
		{`[{"pcr":16,"kind":"model","name":"m","version":"1","sha256":"` + strings.Repeat("a", 64) + `","plain_sha256":"abc"}]`, false},
		{string(good) + `[]`, false},
		{string(good) + `]`, false},  // a stray ']' (json.Decoder.More let it through)
		{string(good) + " \n", true}, // trailing white space is fine
		{`[` + strings.Repeat(string(good[1:len(good)-1])+",", eventlog.MaxEvents) + string(good[1:]), false},
	}
	for _, tc := range tests {
		_, err := eventlog.Parse([]byte(tc.in))
		if (err == nil) != tc.ok {
			t.Errorf("Parse(%.60q) = %v; want ok=%v", tc.in, err, tc.ok)
		}
		if err != nil && !errors.Is(err, eventlog.ErrMalformed) {
			t.Errorf("Parse(%.60q) = %v; want ErrMalformed", tc.in, err)
		}
	}
}

// FuzzParse: Parse never panics, and what it accepts re-encodes to a log it
// accepts again with the same replay.
func FuzzParse(f *testing.F) {
	good, _ := json.Marshal(eventlog.Log{ev, ev})
	f.Add(good)
	f.Add([]byte(`[]`))
	f.Add([]byte(`[{"pcr":16,"kind":"a|b"}]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := eventlog.Parse(b)
		if err != nil {
			return
		}
		again, err := json.Marshal(l)
		if err != nil {
			t.Fatal(err)
		}
		l2, err := eventlog.Parse(again)
		if err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		r1, r2 := l.Replay(), l2.Replay()
		for k, v := range r1 {
			if r2[k] != v {
				t.Fatalf("replay differs after round trip")
			}
		}
	})
}

// TestUnload: an unload event has a digest of its own (no load event's), survives a
// parse, and leaves the artifact out of Latest until it is loaded again.
func TestUnload(t *testing.T) {
	un := ev
	un.Unloaded = true
	want := sha256.Sum256([]byte("\x00unloaded|model|m|1.0.0|" + strings.Repeat("a", 64)))
	if got := un.Digest(); got != want || got == ev.Digest() {
		t.Errorf("Digest(unload) = %x; want %x, not the load's", got, want)
	}
	b, _ := json.Marshal(eventlog.Log{ev, un})
	l, err := eventlog.Parse(b)
	if err != nil || len(l) != 2 || !l[1].Unloaded {
		t.Fatalf("Parse(load, unload) = %+v, %v", l, err)
	}
	if _, ok := l.Latest()[[2]string{"model", "m"}]; ok {
		t.Errorf("Latest after an unload names the model")
	}
	again := append(l, ev)
	if a, ok := again.Latest()[[2]string{"model", "m"}]; !ok || a.Version != "1.0.0" {
		t.Errorf("Latest after loading again = %+v, %v", a, ok)
	}
}

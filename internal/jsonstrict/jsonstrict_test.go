package jsonstrict

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

type msg struct {
	A int `json:"a"`
}

func TestDecode(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want error // nil: accepted; errAny: refused with any error
	}{
		{`{"a":1}`, nil},
		{" {\"a\":1} \n\t", nil},
		{``, io.EOF},
		{`{"a":1}}`, ErrTrailing},
		{`{"a":1}]`, ErrTrailing},
		{`{"a":1}{"a":2}`, ErrTrailing},
		{`{"a":1} 7`, ErrTrailing},
		{`{"a":1}x`, ErrTrailing},
		{`{"a":1,"b":2}`, errAny},
		{`{"a":"1"}`, errAny},
		{`{"a":1`, errAny},
	} {
		var m msg
		err := Decode(strings.NewReader(tc.in), &m)
		switch {
		case tc.want == nil && err != nil:
			t.Errorf("Decode(%q) = %v, want accepted", tc.in, err)
		case tc.want == errAny && err == nil:
			t.Errorf("Decode(%q) accepted, want refused", tc.in)
		case tc.want != nil && tc.want != errAny && !errors.Is(err, tc.want):
			t.Errorf("Decode(%q) = %v, want %v", tc.in, err, tc.want)
		case tc.want == nil && m.A != 1:
			t.Errorf("Decode(%q) decoded %+v", tc.in, m)
		}
	}
}

var errAny = errors.New("any error")

// TestDecodeKeepsMaxBytesError: a body over an http.MaxBytesReader limit found while
// looking for trailing data still reads as *http.MaxBytesError.
func TestDecodeKeepsMaxBytesError(t *testing.T) {
	body := `{"a":1}` + strings.Repeat(" ", 64) + "}"
	r := http.MaxBytesReader(httptest.NewRecorder(), io.NopCloser(strings.NewReader(body)), 16)
	err := Decode(r, &msg{})
	var mbe *http.MaxBytesError
	if !errors.As(err, &mbe) {
		t.Fatalf("Decode over the limit = %v, want a *http.MaxBytesError", err)
	}
}

// TestDecodeUniqueRefusesDuplicateKeys: an object naming a key twice, or two keys that
// encoding/json would both match to one field (differing only in case), is refused at
// any depth; the same key in sibling or nested objects is not a duplicate.
func TestDecodeUniqueRefusesDuplicateKeys(t *testing.T) {
	for _, c := range []struct {
		in  string
		dup bool
	}{
		{`{"id":"dup1","id":"dup2"}`, true},
		{`{"id":"a","ID":"b"}`, true},
		{`{"x":{"a":1,"b":{"c":[1,{"d":1,"d":2}]}}}`, true},
		{`{"sk":1,"ſk":2}`, true}, // U+017F folds to s, as encoding/json matches it
		{`[{"a":1},{"a":2}]`, false},
		{`{"a":{"b":1},"b":2}`, false},
		{`{"a":[1,{"a":2}],"b":{"a":3}}`, false},
		{`{"labels":{"site":"a","line":"b"}}`, false},
	} {
		var v any
		err := DecodeUnique(strings.NewReader(c.in), &v)
		if c.dup != errors.Is(err, ErrDuplicateKey) {
			t.Errorf("DecodeUnique(%s) = %v; want duplicate %v", c.in, err, c.dup)
		}
	}
	var v struct{ ID string }
	if err := DecodeUnique(strings.NewReader(`{"id":"a"} {`), &v); !errors.Is(err, ErrTrailing) {
		t.Errorf("trailing data: %v", err)
	}
	if err := DecodeUnique(strings.NewReader("  "), &v); err != io.EOF {
		t.Errorf("empty: %v; want io.EOF", err)
	}
}

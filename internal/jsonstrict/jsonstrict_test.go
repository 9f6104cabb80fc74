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

// Package jsonstrict decodes exactly one JSON value from untrusted input: unknown
// fields are refused and nothing but white space may follow the value. It is
// stdlib-only and shared by every decoder of hostile bodies (the device, operator, CA
// and runtime APIs, boot logs).
//
// json.Decoder.More is not a trailing-data check: it reports false before a stray '}'
// or ']', so `{"a":1}}` would pass. Decode reads one more token and requires io.EOF.
package jsonstrict

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// ErrTrailing is returned when something other than white space follows the value.
var ErrTrailing = errors.New("trailing data after the JSON value")

// Decode decodes one JSON value from r into v, refusing unknown fields and trailing
// data. An empty input returns io.EOF unwrapped (callers that accept an empty body test
// for it); a read error while looking for trailing data (e.g. *http.MaxBytesError) is
// wrapped under ErrTrailing so errors.As still finds it.
func Decode(r io.Reader, v any) error {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	switch _, err := dec.Token(); {
	case errors.Is(err, io.EOF):
		return nil
	case err != nil:
		return fmt.Errorf("%w: %w", ErrTrailing, err)
	default:
		return ErrTrailing
	}
}

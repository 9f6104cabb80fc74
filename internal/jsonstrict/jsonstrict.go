// Package jsonstrict decodes exactly one JSON value from untrusted input: unknown
// fields are refused and nothing but white space may follow the value. It is
// stdlib-only and shared by every decoder of hostile bodies (the device, operator, CA
// and runtime APIs, boot logs).
//
// json.Decoder.More is not a trailing-data check: it reports false before a stray '}'
// or ']', so `{"a":1}}` would pass. Decode reads one more token and requires io.EOF.
package jsonstrict

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
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

// ErrDuplicateKey is returned by DecodeUnique for an object that names a key twice,
// or two keys that differ only in case (encoding/json matches struct fields without
// regard to case, and the last one wins).
var ErrDuplicateKey = errors.New("duplicate key")

// DecodeUnique is Decode that also refuses an object naming one key twice (or two keys
// differing only in case) anywhere in the value: encoding/json keeps the last, other
// readers the first, so one request could mean two things (a rollout created as "dup2"
// from {"id":"dup1","id":"dup2"}). It reads r whole first: for bounded bodies
// (requests of kilobytes), not for bulk data.
func DecodeUnique(r io.Reader, v any) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrTrailing, err)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return io.EOF
	}
	if err := uniqueKeys(data); err != nil {
		return err
	}
	return Decode(bytes.NewReader(data), v)
}

// uniqueKeys walks the tokens of data, checking each object's keys; a malformed value
// is left to the decoder to report.
func uniqueKeys(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	type frame struct {
		object bool
		keys   map[string]string // folded → as written
		key    bool              // the next token of an object is a key
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err != nil {
			return nil
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.object && top.key {
			if k, ok := tok.(string); ok {
				f := strings.ToLower(strings.ToUpper(k))
				if prev, dup := top.keys[f]; dup {
					if prev == k {
						return fmt.Errorf("%w %q", ErrDuplicateKey, k)
					}
					return fmt.Errorf("%w: %q and %q differ only in case", ErrDuplicateKey, prev, k)
				}
				top.keys[f] = k
				top.key = false
				continue
			}
		}
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{':
				stack = append(stack, &frame{object: true, keys: map[string]string{}, key: true})
				continue
			case '[':
				stack = append(stack, &frame{})
				continue
			case '}', ']':
				stack = stack[:len(stack)-1]
			}
		}
		// A value ended (scalar, or a closed object or array): the enclosing object
		// expects a key next.
		if len(stack) > 0 && stack[len(stack)-1].object {
			stack[len(stack)-1].key = true
		}
	}
}

package reposerver

import (
	"errors"
	"fmt"
	"reflect"
	"strconv"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/eventlog"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/repo-server/fleet"
	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// Bounds of a check-in's collections, checked while it is decoded (checkInBounds).
const (
	// maxReports bounds the install reports one check-in carries.
	maxReports = 1000
	// maxSlots bounds the slot kinds a check-in names (there are four kinds).
	maxSlots = 16
	// maxAKChain bounds the intermediates between an AK certificate and its root.
	maxAKChain = 8
	// maxQuotePCRs bounds the PCR values a quote carries (a TPM has 24).
	maxQuotePCRs = 24
)

// errTooLarge is wrapped by every error of a bound in checkInBounds.
var errTooLarge = errors.New("too large")

// boundError says which part of a check-in exceeded its bound. It wraps errTooLarge.
type boundError struct {
	field string // JSON name: "attrs", "reports", "evidence.log"
	limit int
	unit  string // "bytes", "members", "elements"
}

func (e *boundError) Error() string {
	return fmt.Sprintf("%s: more than %d %s", e.field, e.limit, e.unit)
}

func (e *boundError) Unwrap() error { return errTooLarge }

// checkInBound is the bound of one collection type of wire.CheckInRequest. Types are
// what the decoder can tell apart, so each type below occurs once in the request
// (TestCheckInBoundsCoverTheRequest checks that every map, slice and interface of
// wire.CheckInRequest has one).
type checkInBound struct {
	typ reflect.Type
	u   *jsonv2.Unmarshalers
}

// checkInBounds bound, while a check-in is decoded, every part whose Go value can
// cost much more memory than its JSON: free-form attrs by their JSON's size (the store
// refuses more than fleet.MaxAttrsBytes encoded anyway), every other map and slice by
// its length. A check-in is decoded before its sender is authenticated, and an 8 MiB
// body of one-byte array elements or object members decoded whole into Go values cost
// about 35 times its size. With the bounds, a body costs at most a small multiple of
// its size: a bound is checked before each element is decoded, so the decoder never
// holds more than the bound's worth of a collection.
var checkInBounds = []checkInBound{
	{reflect.TypeFor[map[string]any](), jsonv2.UnmarshalFromFunc(boundedAny("attrs", fleet.MaxAttrsBytes))},
	{reflect.TypeFor[map[string]string](), jsonv2.UnmarshalFromFunc(boundedMap[string, string]("labels", fleet.MaxLabels))},
	{reflect.TypeFor[map[artifact.Kind]wire.Slot](), jsonv2.UnmarshalFromFunc(boundedMap[artifact.Kind, wire.Slot]("slots", maxSlots))},
	{reflect.TypeFor[[]wire.Report](), jsonv2.UnmarshalFromFunc(boundedSlice[wire.Report]("reports", maxReports))},
	{reflect.TypeFor[[][]byte](), jsonv2.UnmarshalFromFunc(boundedSlice[[]byte]("evidence.ak_chain", maxAKChain))},
	{reflect.TypeFor[map[int][]byte](), jsonv2.UnmarshalFromFunc(boundedMap[int, []byte]("evidence.quote.pcrs", maxQuotePCRs))},
	{reflect.TypeFor[eventlog.Log](), jsonv2.UnmarshalFromFunc(func(dec *jsontext.Decoder, l *eventlog.Log) error {
		return boundedSlice[eventlog.Event]("evidence.log", eventlog.MaxEvents)(dec, (*[]eventlog.Event)(l))
	})},
}

// checkInDecodeOptions are unmarshalStrict's options for a check-in: its bounds. An
// Options value is immutable.
var checkInDecodeOptions = checkInOptions()

func checkInOptions() jsonv2.Options {
	us := make([]*jsonv2.Unmarshalers, len(checkInBounds))
	for i, b := range checkInBounds {
		us[i] = b.u
	}
	return jsonv2.WithUnmarshalers(jsonv2.JoinUnmarshalers(us...))
}

// boundedSlice decodes a JSON array (or null) into a slice as encoding/json/v2 does,
// refusing it with a *boundError before decoding its (max+1)th element.
func boundedSlice[E any](field string, max int) func(*jsontext.Decoder, *[]E) error {
	return func(dec *jsontext.Decoder, v *[]E) error {
		switch dec.PeekKind() {
		case 'n':
			_, err := dec.ReadToken()
			*v = nil
			return err
		case '[':
		default:
			return jsonv2.SkipFunc // the default decoder reports the mismatch
		}
		if _, err := dec.ReadToken(); err != nil {
			return err
		}
		s := make([]E, 0, min(max, 16))
		for dec.PeekKind() != ']' {
			if len(s) == max {
				return &boundError{field, max, "elements"}
			}
			var e E
			if err := jsonv2.UnmarshalDecode(dec, &e); err != nil {
				return err
			}
			s = append(s, e)
		}
		if _, err := dec.ReadToken(); err != nil {
			return err
		}
		*v = s
		return nil
	}
}

// boundedMap decodes a JSON object (or null) into a map as encoding/json/v2 does
// (a name decodes into the key as v2 decodes map keys; two names that decode to the
// same key are duplicates), refusing it with a *boundError before decoding its
// (max+1)th member.
func boundedMap[K comparable, V any](field string, max int) func(*jsontext.Decoder, *map[K]V) error {
	return func(dec *jsontext.Decoder, v *map[K]V) error {
		switch dec.PeekKind() {
		case 'n':
			_, err := dec.ReadToken()
			*v = nil
			return err
		case '{':
		default:
			return jsonv2.SkipFunc
		}
		if _, err := dec.ReadToken(); err != nil {
			return err
		}
		m := make(map[K]V)
		for dec.PeekKind() != '}' {
			if len(m) == max {
				return &boundError{field, max, "members"}
			}
			var k K
			if err := jsonv2.UnmarshalDecode(dec, &k); err != nil {
				return err
			}
			if _, dup := m[k]; dup {
				return fmt.Errorf("%s: duplicate name %v", field, k)
			}
			var e V
			if err := jsonv2.UnmarshalDecode(dec, &e); err != nil {
				return err
			}
			m[k] = e
		}
		if _, err := dec.ReadToken(); err != nil {
			return err
		}
		*v = m
		return nil
	}
}

// boundedAny decodes a JSON object (or null) into a map[string]any as
// encoding/json/v2 does (objects are map[string]any, arrays []any, numbers float64),
// refusing it with a *boundError once more than max bytes of its JSON were read:
// every token is counted before the next is decoded, so the value never costs much
// more than max bytes' worth.
func boundedAny(field string, max int) func(*jsontext.Decoder, *map[string]any) error {
	return func(dec *jsontext.Decoder, v *map[string]any) error {
		switch dec.PeekKind() {
		case 'n':
			_, err := dec.ReadToken()
			*v = nil
			return err
		case '{':
		default:
			return jsonv2.SkipFunc
		}
		b := anyBudget{dec: dec, end: dec.InputOffset() + int64(max), field: field, max: max}
		x, err := b.value()
		if err != nil {
			return err
		}
		*v = x.(map[string]any)
		return nil
	}
}

// anyBudget decodes one JSON value into an any, within a budget of input bytes.
type anyBudget struct {
	dec   *jsontext.Decoder
	end   int64 // input offset past which the value is too large
	field string
	max   int
}

func (b *anyBudget) check() error {
	if b.dec.InputOffset() > b.end {
		return &boundError{b.field, b.max, "bytes"}
	}
	return nil
}

func (b *anyBudget) value() (any, error) {
	switch b.dec.PeekKind() {
	case '{':
		if _, err := b.dec.ReadToken(); err != nil {
			return nil, err
		}
		m := map[string]any{}
		for b.dec.PeekKind() != '}' {
			tok, err := b.dec.ReadToken() // the decoder refuses duplicate names
			if err != nil {
				return nil, err
			}
			name := tok.String() // valid only until the next read
			if err := b.check(); err != nil {
				return nil, err
			}
			x, err := b.value()
			if err != nil {
				return nil, err
			}
			m[name] = x
		}
		_, err := b.dec.ReadToken()
		return m, err
	case '[':
		if _, err := b.dec.ReadToken(); err != nil {
			return nil, err
		}
		a := []any{}
		for b.dec.PeekKind() != ']' {
			if err := b.check(); err != nil {
				return nil, err
			}
			x, err := b.value()
			if err != nil {
				return nil, err
			}
			a = append(a, x)
		}
		_, err := b.dec.ReadToken()
		return a, err
	}
	val, err := b.dec.ReadValue()
	if err != nil {
		return nil, err
	}
	if err := b.check(); err != nil {
		return nil, err
	}
	switch val.Kind() {
	case 'n':
		return nil, nil
	case 'f':
		return false, nil
	case 't':
		return true, nil
	case '0':
		f, err := strconv.ParseFloat(string(val), 64)
		if err != nil {
			return nil, fmt.Errorf("%s: number %s: %w", b.field, val, err)
		}
		return f, nil
	default: // '"'
		var s string
		if err := jsonv2.Unmarshal(val, &s); err != nil {
			return nil, err
		}
		return s, nil
	}
}

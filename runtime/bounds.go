package runtime

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/edgeward/edgeward/runtime/runtimeapi"
	"github.com/go-json-experiment/json/jsontext"
)

// Bounds on the parts of a JSON request that decode larger than they are written: a
// parameter of 7 bytes ("p1":1,) is a map entry of some 150, a tensor of 3 ({}) a struct
// of 100, a dimension of 2 an int64. Within --max-request-bytes they let a 14 MB request
// hold several hundred MB once decoded: four of 1.15 million parameters took the runtime
// from 46 MB to 688 MB (1 Dec), and were answered 200. The protocol's requests are far
// inside them.
const (
	maxParams  = 64   // members of one parameters object
	maxTensors = 1024 // inputs, or outputs, of one request
	maxRank    = 64   // dimensions of one shape
)

// checkRequestBounds refuses (ErrInvalid) a JSON request past maxParams, maxTensors or
// maxRank, reading its tokens without decoding them ("data" is skipped whole). Anything
// else wrong with it is left to the decoder, whose errors are the reference.
func checkRequestBounds(b []byte) error {
	dec := jsontext.NewDecoder(bytes.NewReader(b))
	err := boundsOf(dec, "")
	if errors.Is(err, errMalformed) {
		return nil
	}
	return err
}

// errMalformed stops checkRequestBounds at a syntax error, which the decoder reports.
var errMalformed = errors.New("malformed")

// boundsOf reads the value at dec, the value of member name ("" for an array element or
// the top level), checking the bounds of what it holds.
func boundsOf(dec *jsontext.Decoder, name string) error {
	switch dec.PeekKind() {
	case '{':
		if _, err := dec.ReadToken(); err != nil {
			return errMalformed
		}
		for n := 0; dec.PeekKind() != '}'; n++ {
			if dec.PeekKind() == 0 {
				return errMalformed
			}
			tok, err := dec.ReadToken()
			if err != nil {
				return errMalformed
			}
			if name == "parameters" && n == maxParams {
				return fmt.Errorf("%w: request body: a parameters object of more than %d members", runtimeapi.ErrInvalid, maxParams)
			}
			if err := boundsOf(dec, tok.String()); err != nil {
				return err
			}
		}
	case '[':
		if name == "data" {
			if dec.SkipValue() != nil {
				return errMalformed
			}
			return nil
		}
		if _, err := dec.ReadToken(); err != nil {
			return errMalformed
		}
		for n := 0; dec.PeekKind() != ']'; n++ {
			if dec.PeekKind() == 0 {
				return errMalformed
			}
			switch {
			case (name == "inputs" || name == "outputs") && n == maxTensors:
				return fmt.Errorf("%w: request body: more than %d %s", runtimeapi.ErrInvalid, maxTensors, name)
			case name == "shape" && n == maxRank:
				return fmt.Errorf("%w: request body: a shape of more than %d dimensions", runtimeapi.ErrInvalid, maxRank)
			}
			if err := boundsOf(dec, ""); err != nil {
				return err
			}
		}
	default:
		if dec.SkipValue() != nil {
			return errMalformed
		}
		return nil
	}
	if _, err := dec.ReadToken(); err != nil { // the closing '}' or ']'
		return errMalformed
	}
	return nil
}

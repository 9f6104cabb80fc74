package runtimeapi

import "encoding/json"

// Datatype is an Open Inference Protocol tensor datatype name ("FP32", "INT64", …).
type Datatype string

// The datatypes the runtime accepts as inputs and returns as outputs.
const (
	FP32   Datatype = "FP32"
	FP64   Datatype = "FP64"
	INT8   Datatype = "INT8"
	INT16  Datatype = "INT16"
	INT32  Datatype = "INT32"
	INT64  Datatype = "INT64"
	UINT8  Datatype = "UINT8"
	UINT16 Datatype = "UINT16"
	UINT32 Datatype = "UINT32"
	UINT64 Datatype = "UINT64"
	BOOL   Datatype = "BOOL"
	// FP16 is IEEE 754 half precision, BF16 bfloat16 (the upper half of an FP32): both
	// travel as numbers in JSON and as 2 little-endian bytes in binary tensor data.
	FP16 Datatype = "FP16"
	BF16 Datatype = "BF16"
	// BYTES elements are byte strings: JSON strings in "data", each a 4-byte
	// little-endian length then the bytes in binary tensor data.
	BYTES Datatype = "BYTES"
)

// Known reports whether the runtime serves dt.
func (dt Datatype) Known() bool {
	return dt.Size() > 0 || dt == BYTES
}

// Size is the bytes of one element in binary tensor data: 0 for BYTES (variable) and for
// an unknown datatype.
func (dt Datatype) Size() int {
	switch dt {
	case BOOL, INT8, UINT8:
		return 1
	case INT16, UINT16, FP16, BF16:
		return 2
	case INT32, UINT32, FP32:
		return 4
	case INT64, UINT64, FP64:
		return 8
	}
	return 0
}

// Binary tensor data extension (Triton and KServe "binary_data"): a request or response
// body is a JSON header of HeaderLengthHeader bytes followed by raw tensor data.
const (
	// HeaderLengthHeader is the HTTP header giving the JSON header's length in bytes.
	HeaderLengthHeader = "Inference-Header-Content-Length"
	// ParamBinarySize is the tensor parameter giving its binary data's length in bytes.
	ParamBinarySize = "binary_data_size"
	// ParamBinary is the output parameter asking for that output in binary.
	ParamBinary = "binary_data"
	// ParamBinaryOutput is the request parameter asking for every output in binary.
	ParamBinaryOutput = "binary_data_output"
)

// InferRequest is the Open Inference Protocol request body.
type InferRequest struct {
	ID         string                     `json:"id,omitempty"`
	Parameters map[string]json.RawMessage `json:"parameters,omitempty"`
	Inputs     []RequestTensor            `json:"inputs"`
	Outputs    []RequestOutput            `json:"outputs,omitempty"`
}

// RequestTensor is one input tensor of an InferRequest; Data is a JSON array, flat or
// nested in row-major order.
type RequestTensor struct {
	Name       string                     `json:"name"`
	Shape      []int64                    `json:"shape"`
	Datatype   Datatype                   `json:"datatype"`
	Parameters map[string]json.RawMessage `json:"parameters,omitempty"`
	Data       json.RawMessage            `json:"data"`
}

// RequestOutput names an output the client wants.
type RequestOutput struct {
	Name       string                     `json:"name"`
	Parameters map[string]json.RawMessage `json:"parameters,omitempty"`
}

// InferResponse is the Open Inference Protocol response body.
type InferResponse struct {
	ModelName    string           `json:"model_name"`
	ModelVersion string           `json:"model_version"`
	ID           string           `json:"id,omitempty"`
	Outputs      []ResponseTensor `json:"outputs"`
}

// ResponseTensor is one output tensor; Data is flat, row-major. An output sent as binary
// tensor data has no Data and its length in Parameters[ParamBinarySize].
type ResponseTensor struct {
	Name       string                     `json:"name"`
	Shape      []int64                    `json:"shape"`
	Datatype   Datatype                   `json:"datatype"`
	Parameters map[string]json.RawMessage `json:"parameters,omitempty"`
	Data       json.RawMessage            `json:"data,omitempty"`
}

// TensorMeta describes a model input or output. A dimension of -1 is dynamic.
type TensorMeta struct {
	Name     string   `json:"name"`
	Datatype Datatype `json:"datatype"`
	Shape    []int64  `json:"shape"`
}

// ModelInfo is the Open Inference Protocol model metadata of a loaded version.
type ModelInfo struct {
	Name     string       `json:"name"`
	Versions []string     `json:"versions"`
	Platform string       `json:"platform"`
	Inputs   []TensorMeta `json:"inputs"`
	Outputs  []TensorMeta `json:"outputs"`
	// SHA256 is the digest of the model file the session was created from: for an
	// encrypted model the ciphertext's (the target the device verified and measures),
	// whose plaintext the runtime checked against LoadRequest.SHA256.
	SHA256 string `json:"sha256,omitempty"`
	// PlainSHA256 is set for an encrypted model only: the digest of the plaintext the
	// runtime decrypted in memory and created the session from (equal to
	// LoadRequest.SHA256, or the load failed). The agent measures it beside SHA256.
	PlainSHA256 string `json:"plain_sha256,omitempty"`
}

// IndexEntry is one loaded model version in the repository index.
type IndexEntry struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	State   string `json:"state"`
	Default bool   `json:"default"`
	SHA256  string `json:"sha256"`
	// PlainSHA256 is an encrypted model's plaintext digest (ModelInfo.PlainSHA256).
	PlainSHA256 string `json:"plain_sha256,omitempty"`
}

// LoadRequest names a model version to load (the body of
// POST /v2/repository/models/{name}/load; Name travels in the path).
type LoadRequest struct {
	Name    string `json:"-"`
	Version string `json:"version"`
	// Path is the ONNX file, e.g. in the agent's model slot.
	Path string `json:"path"`
	// SHA256, when set, must match the file's bytes (hex); the load fails otherwise.
	// For an encrypted model it is the plaintext's.
	SHA256 string `json:"sha256,omitempty"`
	// Key, when set, is the content key of an encrypted model (issue 18): the file at
	// Path is its ciphertext (internal/segcrypt), decrypted into memory only, and
	// PlainLength is the plaintext's length from the target's signed metadata. The
	// plaintext never touches disk; the runtime never logs the key.
	Key         []byte `json:"key,omitempty"`
	PlainLength int64  `json:"plaintext_length,omitempty"`
	// Default makes the new version the default at once. The first loaded version of a
	// model always becomes its default.
	Default bool `json:"default,omitempty"`
}

// UnloadRequest is the body of POST /v2/repository/models/{name}/unload.
type UnloadRequest struct {
	Version string `json:"version"`
}

// DriftReport compares served inputs with the baseline, for the check-in.
type DriftReport struct {
	Model   string `json:"model"`
	Version string `json:"version"`
	Rows    int64  `json:"rows"`
	// SkippedRows counts the rows served but left out of the statistics for a value that
	// is not finite (NaN, an infinity) or beyond 1e100 in magnitude.
	SkippedRows int64          `json:"skipped_rows,omitempty"`
	Features    []FeatureDrift `json:"features"`
	// Drifted names the features whose |mean shift| exceeds the threshold (in baseline
	// standard deviations) or whose variance ratio is outside [1/4, 4].
	Drifted []string `json:"drifted,omitempty"`
}

// FeatureDrift is one feature's served statistics next to its baseline.
type FeatureDrift struct {
	Name         string  `json:"name"`
	Mean         float64 `json:"mean"`
	Var          float64 `json:"var"`
	BaselineMean float64 `json:"baseline_mean"`
	BaselineVar  float64 `json:"baseline_var"`
	// MeanShift is (mean - baseline mean) / baseline standard deviation.
	MeanShift float64 `json:"mean_shift"`
	// VarRatio is var / baseline var.
	VarRatio float64 `json:"var_ratio"`
}

// Package deviceapi is the wire protocol between the agent and the repo-server's
// device API, and the agent's client for it. It is shared by both sides and stays light
// (no server, policy or CA code), so the agent binary remains small.
//
// A check-in is authenticated by the device's TPM: the agent asks for a nonce, builds its
// request (facts, slots, reports), and quotes its PCRs with qualifying data
// QuoteData(nonce, request) — a hash over the nonce and every field but the evidence. The
// server recomputes it, so the AK signature covers the whole check-in: a replayed,
// altered or forged request is rejected. The AK certificate names the device (its
// permanent identifier, derived from the EK).
package deviceapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/edgeward/edgeward/attest/eventlog"
	"github.com/edgeward/edgeward/attest/protocol"
	"github.com/edgeward/edgeward/internal/artifact"
)

// Paths of the device API.
const (
	PathNonce   = "/v1/devices/nonce"
	PathCheckIn = "/v1/devices/checkin"
	// PathDeviceCA describes the device CA (GET): DeviceCA.
	PathDeviceCA = "/v1/devices/ca"
	// PathAttest is where the attestation CA's enrollment protocol is mounted
	// (POST {PathAttest}/enroll, POST {PathAttest}/activate).
	PathAttest = "/v1/attest"
)

// MaxRequestBytes bounds a check-in request (evidence, log and reports included).
const MaxRequestBytes = 4 << 20

// DeviceCA tells a device where to get its certificate: step-ca's ACME directory for
// device-attest-01 and the root of its TLS certificate and of device certificates.
type DeviceCA struct {
	DirectoryURL string `json:"acme_directory"`
	RootPEM      string `json:"root_pem"`
}

// DeviceCA fetches the server's device CA description.
func (c *Client) DeviceCA(ctx context.Context) (*DeviceCA, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(c.BaseURL, "/")+PathDeviceCA, nil)
	if err != nil {
		return nil, err
	}
	var out DeviceCA
	if err := c.do(req, PathDeviceCA, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// NonceRequest asks for a quote nonce.
type NonceRequest struct {
	DeviceID string `json:"device_id"`
}

// NonceResponse carries a single-use, short-lived nonce.
type NonceResponse struct {
	Nonce []byte `json:"nonce"`
}

// Slot is what a device reports of one slot kind: the committed version.
type Slot struct {
	Name    string `json:"name,omitempty"`
	Version string `json:"version,omitempty"`
}

// Report is the result of one install.
type Report struct {
	ID       string        `json:"id"` // unique per report, so a retried check-in is idempotent
	Kind     artifact.Kind `json:"kind"`
	Name     string        `json:"name"`
	Version  string        `json:"version"`
	Outcome  string        `json:"outcome"` // committed, probe_failed, rolled_back, install_error
	Cause    string        `json:"cause,omitempty"`
	At       time.Time     `json:"at"`
	Bytes    int64         `json:"bytes,omitempty"`
	Accuracy float64       `json:"accuracy,omitempty"`
	P99Ms    float64       `json:"p99_ms,omitempty"`
}

// Evidence is the TPM's proof: the AK certificate, a quote and the measurement log.
type Evidence struct {
	AKCert  []byte         `json:"ak_cert"`
	AKChain [][]byte       `json:"ak_chain,omitempty"`
	Quote   protocol.Quote `json:"quote"`
	Log     eventlog.Log   `json:"log"`
}

// CheckInRequest is what a device sends at a check-in.
type CheckInRequest struct {
	DeviceID     string                 `json:"device_id"`
	Labels       map[string]string      `json:"labels,omitempty"` // used when the device is first seen
	Hardware     string                 `json:"hardware,omitempty"`
	AgentVersion string                 `json:"agent_version,omitempty"`
	Slots        map[artifact.Kind]Slot `json:"slots,omitempty"`
	Attrs        map[string]any         `json:"attrs,omitempty"`
	Reports      []Report               `json:"reports,omitempty"`
	Nonce        []byte                 `json:"nonce"`
	Evidence     Evidence               `json:"evidence"`
}

// QuoteData is the qualifying data the device's quote must carry for this request:
// SHA-256 over a domain tag, the nonce and the JSON of every field but the evidence.
func QuoteData(nonce []byte, r *CheckInRequest) ([]byte, error) {
	body := *r
	body.Nonce = nil
	body.Evidence = Evidence{}
	b, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("check-in digest: %w", err)
	}
	h := sha256.New()
	h.Write([]byte("edgeward-checkin-v1\x00"))
	h.Write(nonce)
	h.Write([]byte{0})
	h.Write(b)
	return h.Sum(nil), nil
}

// SlotDecision is the server's desired state for one slot kind.
type SlotDecision struct {
	Kind   artifact.Kind `json:"kind"`
	Action string        `json:"action"` // install, download, hold
	Reason string        `json:"reason"`
	// Target is the TUF target path to install or download ("" when the action is hold
	// and nothing is named). The agent installs it only if TUF verifies it.
	Target  string          `json:"target,omitempty"`
	Name    string          `json:"name,omitempty"`
	Version string          `json:"version,omitempty"`
	Revert  bool            `json:"revert,omitempty"`
	Rollout string          `json:"rollout,omitempty"`
	Gates   *artifact.Gates `json:"gates,omitempty"`
	Detail  string          `json:"detail,omitempty"`
}

// CheckInResponse is the server's answer.
type CheckInResponse struct {
	DeviceID    string         `json:"device_id"`
	Trusted     bool           `json:"trusted"`
	Reasons     []string       `json:"reasons,omitempty"`
	Quarantined bool           `json:"quarantined,omitempty"`
	Slots       []SlotDecision `json:"slots"`
	// ReportsAccepted counts the reports stored (duplicates of stored ones included).
	ReportsAccepted int `json:"reports_accepted"`
	// NextCheckIn is when the server would like to hear from the device again.
	NextCheckIn time.Duration `json:"next_check_in"`
}

// Error is the JSON error body of the device API.
type Error struct {
	Status  int    `json:"-"`
	Message string `json:"error"`
}

func (e *Error) Error() string { return fmt.Sprintf("device API: %d: %s", e.Status, e.Message) }

// Client talks to the device API. The zero HTTP means http.DefaultClient.
type Client struct {
	BaseURL string
	HTTP    *http.Client
}

// Nonce asks for a quote nonce for device.
func (c *Client) Nonce(ctx context.Context, device string) ([]byte, error) {
	var out NonceResponse
	if err := c.post(ctx, PathNonce, NonceRequest{DeviceID: device}, &out); err != nil {
		return nil, err
	}
	return out.Nonce, nil
}

// CheckIn sends a check-in whose evidence already quotes QuoteData(nonce, req).
func (c *Client) CheckIn(ctx context.Context, req *CheckInRequest) (*CheckInResponse, error) {
	var out CheckInResponse
	if err := c.post(ctx, PathCheckIn, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

func (c *Client) post(ctx context.Context, path string, in, out any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(c.BaseURL, "/")+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	return c.do(req, path, out)
}

func (c *Client) do(req *http.Request, path string, out any) error {
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("device API %s: %w", path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxRequestBytes))
	if err != nil {
		return fmt.Errorf("device API %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		e := &Error{Status: resp.StatusCode}
		if json.Unmarshal(data, e) != nil || e.Message == "" {
			e.Message = strings.TrimSpace(string(data))
		}
		return e
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("device API %s: bad answer: %w", path, err)
	}
	return nil
}

// IsRetryable tells transient errors (network, 5xx, 429) from final refusals (4xx).
func IsRetryable(err error) bool {
	var e *Error
	if errors.As(err, &e) {
		return e.Status >= 500 || e.Status == http.StatusTooManyRequests
	}
	return err != nil
}

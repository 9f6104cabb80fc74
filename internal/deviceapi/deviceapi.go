// Package deviceapi is the agent's client for the repo-server's device API. What it
// sends and receives is defined once, in internal/wire.
package deviceapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/edgeward/edgeward/internal/printable"
	"github.com/edgeward/edgeward/internal/wire"
)

// DeviceCA fetches the server's device CA description.
func (c *Client) DeviceCA(ctx context.Context) (*wire.DeviceCA, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(c.BaseURL, "/")+wire.PathDeviceCA, nil)
	if err != nil {
		return nil, err
	}
	var out wire.DeviceCA
	if err := c.do(req, wire.PathDeviceCA, &out); err != nil {
		return nil, err
	}
	return &out, nil
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
	var out wire.NonceResponse
	if err := c.post(ctx, wire.PathNonce, wire.NonceRequest{DeviceID: device}, &out); err != nil {
		return nil, err
	}
	return out.Nonce, nil
}

// CheckIn sends a check-in whose evidence already quotes QuoteData(nonce, req).
func (c *Client) CheckIn(ctx context.Context, req *wire.CheckInRequest) (*wire.CheckInResponse, error) {
	var out wire.CheckInResponse
	if err := c.post(ctx, wire.PathCheckIn, req, &out); err != nil {
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
	data, err := io.ReadAll(io.LimitReader(resp.Body, wire.MaxRequestBytes))
	if err != nil {
		return fmt.Errorf("device API %s: %w", path, err)
	}
	return DecodeAnswer(path, resp.StatusCode, data, out)
}

// maxErrorMessage bounds the server's message kept in an *Error.
const maxErrorMessage = 1024

// DecodeAnswer decodes the server's answer data to a request on path: into out when
// status is 200, else an *Error with the status and the server's message (its JSON
// error, or the body's text).
func DecodeAnswer(path string, status int, data []byte, out any) error {
	if status != http.StatusOK {
		e := &Error{Status: status}
		if json.Unmarshal(data, e) != nil || e.Message == "" {
			e.Message = strings.TrimSpace(string(data))
		}
		// The server's words end up in logs and in 'edgeward-agent status': bounded,
		// and unable to drive a terminal (a hostile server sent 2 MiB of escape
		// sequences, found from outside, 2 Dec).
		e.Message = printable.Text(e.Message, maxErrorMessage)
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

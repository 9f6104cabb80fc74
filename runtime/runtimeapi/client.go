// Package runtimeapi is the contract between Edgeward's inference runtime and its callers:
// the wire types of the runtime's control API and of the Open Inference Protocol, the
// probe set a model version is judged by, the gates decision, and the client the agent
// drives a runtime with.
//
// It imports only the standard library and internal/artifact (itself stdlib-only), so a
// program that talks to a runtime — the device agent — links neither ONNX Runtime nor
// Prometheus. The package runtime serves this contract; it is the only place that
// knows how a probe is run. Everything here is pure or plain HTTP: no package state, no
// I/O other than the Client's requests.
package runtimeapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/edgeward/edgeward/internal/artifact"
)

// Client calls a runtime's control API (ControlHandler); the agent uses it to load,
// probe, promote and unload model versions. The zero value is not usable: set BaseURL.
// A Client is safe for concurrent use.
type Client struct {
	// BaseURL is the control API's root, e.g. "http://127.0.0.1:8081" or, with
	// NewUnixClient, "http://runtime".
	BaseURL string
	// HTTPClient sends the requests. Nil means http.DefaultClient.
	HTTPClient *http.Client
}

// NewUnixClient returns a Client for a control API served on a unix socket.
func NewUnixClient(socket string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}
	return &Client{BaseURL: "http://runtime", HTTPClient: &http.Client{Transport: tr}}
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("runtime %s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.BaseURL, "/")+path, body)
	if err != nil {
		return fmt.Errorf("runtime %s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := c.HTTPClient
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("runtime %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("runtime %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct{ Error string }
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		return fmt.Errorf("runtime %s %s: %w", method, path, &APIError{Code: resp.StatusCode, Message: e.Error})
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("runtime %s %s: decode answer: %w", method, path, err)
	}
	return nil
}

func esc(s string) string { return url.PathEscape(s) }

// Ready reports whether the runtime is ready to serve (GET /v2/health/ready).
func (c *Client) Ready(ctx context.Context) (bool, error) {
	err := c.do(ctx, http.MethodGet, "/v2/health/ready", nil, nil)
	var ae *APIError
	if errors.As(err, &ae) && ae.Code == http.StatusServiceUnavailable {
		return false, nil
	}
	return err == nil, err
}

// Load loads a model version beside the loaded ones. The answer carries the sha256 of
// the bytes the runtime loaded, for the measurement log.
func (c *Client) Load(ctx context.Context, req LoadRequest) (ModelInfo, error) {
	var info ModelInfo
	err := c.do(ctx, http.MethodPost, "/v2/repository/models/"+esc(req.Name)+"/load", req, &info)
	return info, err
}

// Unload removes a version once its in-flight requests are done.
func (c *Client) Unload(ctx context.Context, name, version string) error {
	return c.do(ctx, http.MethodPost, "/v2/repository/models/"+esc(name)+"/unload", UnloadRequest{Version: version}, nil)
}

// SetDefault makes a loaded version the one unversioned requests reach.
func (c *Client) SetDefault(ctx context.Context, name, version string) error {
	return c.do(ctx, http.MethodPost, "/v2/repository/models/"+esc(name)+"/versions/"+esc(version)+"/default", nil, nil)
}

// Index lists the loaded versions.
func (c *Client) Index(ctx context.Context) ([]IndexEntry, error) {
	var idx []IndexEntry
	err := c.do(ctx, http.MethodPost, "/v2/repository/index", nil, &idx)
	return idx, err
}

// Probe runs a probe set against a loaded version and applies gates.
func (c *Client) Probe(ctx context.Context, name, version string, ps *ProbeSet, gates *artifact.Gates) (ProbeReport, error) {
	var rep ProbeReport
	if ps == nil {
		return rep, fmt.Errorf("probe %s %s: no probe set", name, version)
	}
	err := c.do(ctx, http.MethodPost, "/v2/models/"+esc(name)+"/versions/"+esc(version)+"/probe",
		ProbeRequest{Probe: *ps, Gates: gates}, &rep)
	return rep, err
}

// Drift reports a version's served inputs against its training baseline ("" for the
// default version), for the check-in.
func (c *Client) Drift(ctx context.Context, name, version string) (DriftReport, error) {
	path := "/v2/models/" + esc(name)
	if version != "" {
		path += "/versions/" + esc(version)
	}
	var rep DriftReport
	err := c.do(ctx, http.MethodGet, path+"/drift", nil, &rep)
	return rep, err
}

// Trial loads a new version beside the serving one and probes it. The new version does
// not serve unversioned traffic yet: on rep.Pass the agent calls Promote, otherwise
// Abort. A load or probe error leaves nothing loaded. With no probe set (ps nil, a
// target published without one) the version is loaded and not probed: the report
// passes unless gates are given, which cannot be judged without one.
func (c *Client) Trial(ctx context.Context, load LoadRequest, ps *ProbeSet, gates *artifact.Gates) (ModelInfo, ProbeReport, error) {
	if ps == nil && gates != nil {
		return ModelInfo{}, ProbeReport{}, fmt.Errorf("trial %s %s: gates without a probe set", load.Name, load.Version)
	}
	load.Default = false
	info, err := c.Load(ctx, load)
	if err != nil {
		return info, ProbeReport{}, err
	}
	if ps == nil {
		return info, ProbeReport{Model: load.Name, Version: load.Version, Pass: true}, nil
	}
	rep, err := c.Probe(ctx, load.Name, load.Version, ps, gates)
	if err != nil {
		return info, rep, errors.Join(err, c.Abort(ctx, load.Name, load.Version))
	}
	return info, rep, nil
}

// Promote makes version the default and unloads old ("" when there is none); requests
// in flight on old finish there first.
func (c *Client) Promote(ctx context.Context, name, version, old string) error {
	if err := c.SetDefault(ctx, name, version); err != nil {
		return err
	}
	if old == "" || old == version {
		return nil
	}
	return c.Unload(ctx, name, old)
}

// Abort unloads a version that failed its trial. The serving version is untouched.
func (c *Client) Abort(ctx context.Context, name, version string) error {
	err := c.Unload(ctx, name, version)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

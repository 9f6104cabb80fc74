package operatorapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/fleet"
)

// Client calls a server's operator API (/v1), as internal/deviceapi.Client calls the
// device API. Its methods are typed; Do reaches any endpoint. A Client is not modified
// by its methods and is safe for concurrent use.
type Client struct {
	// Server is the server's base URL ("https://edgeward.example:8443"). Required.
	Server string
	// Token is the operator API token sent as a bearer token. Required unless
	// Certificate is set.
	Token string
	// Certificate says that HTTP presents an operator client certificate (issued with
	// 'edgeward token create --cert'), which then authenticates instead of a token.
	Certificate bool
	// HTTP sends the requests. nil: http.DefaultClient.
	HTTP *http.Client
}

// APIError is an error answer of the operator API; errors.As finds it in every error a
// Client returns for a non-2xx answer.
type APIError struct {
	Status int
	Msg    string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%d %s: %s", e.Status, http.StatusText(e.Status), e.Msg)
}

// maxAnswer bounds a JSON answer read into memory.
const maxAnswer = 64 << 20

func (c *Client) send(ctx context.Context, method, path string, body any) (*http.Response, error) {
	if c.Server == "" {
		return nil, errors.New("no server: give --server URL or set EDGEWARD_SERVER")
	}
	if c.Token == "" && !c.Certificate {
		return nil, errors.New("no token: give --token or set EDGEWARD_TOKEN (issued by 'edgeward token create'), or an operator certificate ($EDGEWARD_CLIENT_CERT, $EDGEWARD_CLIENT_KEY)")
	}
	if err := CheckTransport(c.Server); err != nil && c.Token != "" {
		return nil, err
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.Server, "/")+path, rd)
	if err != nil {
		return nil, err
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	if hc.CheckRedirect == nil {
		safe := *hc
		safe.CheckRedirect = RefuseInsecureRedirects
		hc = &safe
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, c.Server, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var e struct{ Error string }
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(data))
		}
		return nil, fmt.Errorf("%s %s: %w", method, path, &APIError{Status: resp.StatusCode, Msg: e.Error})
	}
	return resp, nil
}

// Do sends body (JSON, unless nil) to path and decodes the JSON answer into out (unless
// nil); it returns the raw answer too.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) ([]byte, error) {
	resp, err := c.send(ctx, method, path, body)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if len(data) > maxAnswer {
		return nil, fmt.Errorf("%s %s: answer larger than %d bytes", method, path, maxAnswer)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return nil, fmt.Errorf("%s %s: bad answer: %w", method, path, err)
		}
	}
	return data, nil
}

func get[T any](ctx context.Context, c *Client, method, path string, body any) (T, []byte, error) {
	var v T
	raw, err := c.Do(ctx, method, path, body, &v)
	return v, raw, err
}

// DevicePath is the path of a device's resource.
func DevicePath(id string) string { return "/v1/devices/" + url.PathEscape(id) }

// RolloutPath is the path of a rollout's resource.
func RolloutPath(id string) string { return "/v1/rollouts/" + url.PathEscape(id) }

// Each typed method returns the decoded answer and the raw JSON (for callers that
// print it as the server sent it).

// CreateRollout adds a rollout to the server's policy (POST /v1/rollouts).
func (c *Client) CreateRollout(ctx context.Context, spec policy.RolloutSpec) (RolloutCreated, []byte, error) {
	return get[RolloutCreated](ctx, c, "POST", "/v1/rollouts", spec)
}

// Rollouts lists the rollouts of the policy in force (GET /v1/rollouts), and says
// whether the policy directory holds a rejected change.
func (c *Client) Rollouts(ctx context.Context) (RolloutList, []byte, error) {
	return get[RolloutList](ctx, c, "GET", "/v1/rollouts", nil)
}

// Rollout is one rollout's status (GET /v1/rollouts/{id}).
func (c *Client) Rollout(ctx context.Context, id string) (RolloutDetail, []byte, error) {
	return get[RolloutDetail](ctx, c, "GET", RolloutPath(id), nil)
}

// RolloutAction pauses, resumes, approves or aborts a rollout
// (POST /v1/rollouts/{id}/{action}); body carries the action's options (nil: none).
func (c *Client) RolloutAction(ctx context.Context, id, action string, body map[string]any) (RolloutChanged, []byte, error) {
	return get[RolloutChanged](ctx, c, "POST", RolloutPath(id)+"/"+action, body)
}

// KPIs is the fleet summary (GET /v1/kpis).
func (c *Client) KPIs(ctx context.Context) (FleetSummary, []byte, error) {
	return get[FleetSummary](ctx, c, "GET", "/v1/kpis", nil)
}

// Devices is one page of the device list (GET /v1/devices); q holds its filters and
// after= (DeviceList.Next of the previous page).
func (c *Client) Devices(ctx context.Context, q url.Values) (DeviceList, []byte, error) {
	return get[DeviceList](ctx, c, "GET", "/v1/devices?"+q.Encode(), nil)
}

// Device is one device with its history since the given time ago (0: the server's
// default window) (GET /v1/devices/{id}).
func (c *Client) Device(ctx context.Context, id string, since time.Duration) (DeviceDetail, []byte, error) {
	path := DevicePath(id)
	if since > 0 {
		path += "?since=" + since.String()
	}
	return get[DeviceDetail](ctx, c, "GET", path, nil)
}

// DeviceAction releases, quarantines or otherwise acts on a device
// (POST /v1/devices/{id}/{action}); body carries the action's options (nil: none).
func (c *Client) DeviceAction(ctx context.Context, id, action string, body any) (DeviceView, []byte, error) {
	return get[DeviceView](ctx, c, "POST", DevicePath(id)+"/"+action, body)
}

// ClearFailed forgets a device's failed version of kind, so it may be offered again.
func (c *Client) ClearFailed(ctx context.Context, id string, kind artifact.Kind) (DeviceView, []byte, error) {
	return c.DeviceAction(ctx, id, "clear-failed", map[string]string{"kind": string(kind)})
}

// SetLabels replaces a device's labels (PUT /v1/devices/{id}/labels).
func (c *Client) SetLabels(ctx context.Context, id string, labels map[string]string) (DeviceView, []byte, error) {
	return get[DeviceView](ctx, c, "PUT", DevicePath(id)+"/labels", map[string]any{"labels": labels})
}

// Tokens lists the operator tokens (GET /v1/tokens).
func (c *Client) Tokens(ctx context.Context) ([]fleet.TokenInfo, []byte, error) {
	v, raw, err := get[struct{ Tokens []fleet.TokenInfo }](ctx, c, "GET", "/v1/tokens", nil)
	return v.Tokens, raw, err
}

// CreateToken issues a token (POST /v1/tokens); it is shown this once.
func (c *Client) CreateToken(ctx context.Context, operator string, role fleet.Role, ttl time.Duration) (TokenCreated, error) {
	v, _, err := get[TokenCreated](ctx, c, "POST", "/v1/tokens", map[string]string{"operator": operator, "role": string(role), "ttl": ttl.String()})
	return v, err
}

// RevokeToken revokes a token by its ID (DELETE /v1/tokens/{id}).
func (c *Client) RevokeToken(ctx context.Context, id string) error {
	_, err := c.Do(ctx, "DELETE", "/v1/tokens/"+url.PathEscape(id), nil, nil)
	return err
}

// AuditExport streams the audit log's export (GET /v1/audit/export) into w.
func (c *Client) AuditExport(ctx context.Context, w io.Writer) error {
	return c.auditExport(ctx, "/v1/audit/export", w)
}

// AuditExportCosigned is AuditExport up to the newest checkpoint a witness has
// cosigned (for a verify that requires a witness quorum).
func (c *Client) AuditExportCosigned(ctx context.Context, w io.Writer) error {
	return c.auditExport(ctx, "/v1/audit/export?cosigned=1", w)
}

func (c *Client) auditExport(ctx context.Context, path string, w io.Writer) error {
	resp, err := c.send(ctx, "GET", path, nil)
	if err != nil {
		return fmt.Errorf("audit export: %w", err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("audit export from %s: %w", c.Server, err)
	}
	return nil
}

// StagedPath is the path of a role's staged change.
func StagedPath(role string) string { return "/v1/staged/" + url.PathEscape(role) }

// StagedSignatures is the answer to a signed copy of a staged change: the key IDs whose
// signatures it added and how far the change now is from its threshold.
type StagedSignatures struct {
	Role       string   `json:"role"`
	Version    int64    `json:"version"`
	Added      []string `json:"added"`
	Signatures int      `json:"signatures"`
	Threshold  int      `json:"threshold"`
}

// Staged returns the staged version of role, as its key holders sign it.
func (c *Client) Staged(ctx context.Context, role string) ([]byte, error) {
	return c.Do(ctx, http.MethodGet, StagedPath(role), nil, nil)
}

// SignStaged sends a copy of role's staged version signed away from the repository.
func (c *Client) SignStaged(ctx context.Context, role string, signed []byte) (StagedSignatures, []byte, error) {
	return get[StagedSignatures](ctx, c, http.MethodPost, StagedPath(role)+"/signatures", json.RawMessage(signed))
}

// PublishStaged publishes role's staged change once its threshold is met.
func (c *Client) PublishStaged(ctx context.Context, role string) (StagedPublished, []byte, error) {
	return get[StagedPublished](ctx, c, http.MethodPost, StagedPath(role)+"/publish", nil)
}

// StagedPublished is the answer to a staged change's publication: the role versions
// published and who signed them.
type StagedPublished struct {
	Roles []struct {
		Role      string   `json:"role"`
		Version   int64    `json:"version"`
		SignedBy  []string `json:"signed_by"`
		Threshold int      `json:"threshold"`
	} `json:"roles"`
}

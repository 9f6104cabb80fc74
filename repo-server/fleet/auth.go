package fleet

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Role is an operator's role.
type Role string

const (
	// RoleSecurityAdmin holds the keys: root and role keys, attestation policy, device
	// quarantine, operator tokens. Also reads everything and exports the audit log.
	RoleSecurityAdmin Role = "security-admin"
	// RoleReleaseManager publishes targets and runs rollouts; reads fleet state.
	RoleReleaseManager Role = "release-manager"
	// RoleAuditor reads everything and exports the audit log; changes nothing.
	RoleAuditor Role = "auditor"
)

// ParseRole checks s.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case RoleSecurityAdmin, RoleReleaseManager, RoleAuditor:
		return r, nil
	}
	return "", invalid("role", "%q: want security-admin, release-manager or auditor", s)
}

// Action is an operator API operation; the server maps each endpoint to one:
//
//	GET  devices, devices/{id}, rollouts, rollouts/{id} (Status), kpis, policy  fleet.read
//	POST publish                                                               publish
//	POST rollouts/{id}/pause|resume|abort|approve                              rollout.write
//	PUT  devices/{id}/labels, POST devices/{id}/clear-failed                   device.label
//	POST devices/{id}/quarantine|release                                       device.quarantine
//	POST devices/{id}/decommission                                             device.decommission
//	POST keys/…, root/…                                                        keys
//	PUT  attestation policy, manufacturer roots                                attestation.policy
//	POST/GET/DELETE tokens                                                     tokens
//	GET  audit/export                                                          audit.export
//
// A request is handled as: principal from the credential (Authenticate for a bearer
// token, OperatorFromCert for a client certificate verified against the operator CA
// only), then Authorize(principal, action), then the write, attributed to
// principal.Name in the audit log.
type Action string

const (
	ActionFleetRead    Action = "fleet.read"    // devices list/show, rollout status, KPIs, policy status
	ActionPublish      Action = "publish"       // publish a model, probe set or runtime
	ActionRolloutWrite Action = "rollout.write" // rollout create, pause, resume, abort, approve
	ActionDeviceLabel  Action = "device.label"  // set device labels, clear a failed mark
	ActionQuarantine   Action = "device.quarantine"
	ActionDecommission Action = "device.decommission" // take a device out of service for good
	ActionKeys         Action = "keys"                // root, role keys, rotation, delegation
	ActionAttestPolicy Action = "attestation.policy"  // attestation requirements, manufacturer roots
	ActionTokens       Action = "tokens"              // create, list, revoke operator tokens
	ActionAuditExport  Action = "audit.export"
)

// allowed says which roles may do what. Anything absent is denied.
func allowed(a Action, r Role) bool {
	switch a {
	case ActionFleetRead:
		return r == RoleSecurityAdmin || r == RoleReleaseManager || r == RoleAuditor
	case ActionPublish, ActionRolloutWrite, ActionDeviceLabel:
		return r == RoleReleaseManager
	case ActionQuarantine, ActionDecommission, ActionKeys, ActionAttestPolicy, ActionTokens:
		return r == RoleSecurityAdmin
	case ActionAuditExport:
		return r == RoleSecurityAdmin || r == RoleAuditor
	}
	return false
}

// Actions lists every action, for tests and documentation.
func Actions() []Action {
	return []Action{ActionFleetRead, ActionPublish, ActionRolloutWrite, ActionDeviceLabel, ActionQuarantine, ActionDecommission,
		ActionKeys, ActionAttestPolicy, ActionTokens, ActionAuditExport}
}

// PrincipalKind tells operators from devices.
type PrincipalKind string

const (
	PrincipalOperator PrincipalKind = "operator"
	PrincipalDevice   PrincipalKind = "device"
)

// Principal is who makes a request, as authenticated by the server: an operator (by
// API token or operator client certificate) or a device (by its TPM-backed device
// certificate). Name is the operator's name or the device ID; it attributes writes in
// the audit log.
type Principal struct {
	Kind PrincipalKind
	Name string
	Role Role // operators only
	// TokenID is the ID of the operator's token (operators only). Names need not be
	// unique; the token ID is, so Actor names both.
	TokenID string
}

// Actor is how the audit log names the principal: "operator:<name>@<token ID>" (a
// second token named like an existing operator is told apart), or "device:<id>".
func (p Principal) Actor() string {
	if p.Kind == PrincipalDevice {
		return "device:" + p.Name
	}
	if p.TokenID == "" {
		return "operator:" + p.Name
	}
	return "operator:" + p.Name + "@" + p.TokenID
}

// Authorization errors.
var (
	ErrUnauthenticated = errors.New("unauthenticated")
	ErrForbidden       = errors.New("forbidden")
)

// Authorize decides whether p may perform a on the operator API. It is pure. A device
// is never allowed an operator action, whatever else it claims; an unknown action or
// role is denied. The error matches ErrForbidden.
func Authorize(p Principal, a Action) error {
	if p.Kind != PrincipalOperator {
		return fmt.Errorf("%s %q may not use the operator API: %w", p.Kind, p.Name, ErrForbidden)
	}
	if allowed(a, p.Role) {
		return nil
	}
	return fmt.Errorf("operator %q (role %q) may not %s: %w", p.Name, p.Role, a, ErrForbidden)
}

// AuthorizeDevice decides whether p may use the device API as device id: only that
// device itself. An operator credential can never act as a device.
func AuthorizeDevice(p Principal, id string) error {
	if p.Kind != PrincipalDevice {
		return fmt.Errorf("%s %q may not use the device API: %w", p.Kind, p.Name, ErrForbidden)
	}
	if p.Name != id {
		return fmt.Errorf("device %q may not act as device %q: %w", p.Name, id, ErrForbidden)
	}
	return nil
}

// OperatorFromCert maps an operator client certificate to a Principal: its Subject
// CommonName is the operator's name, and exactly one Subject OrganizationalUnit is a
// role. The caller must already have verified the chain against the operator CA pool,
// which must not be the device CA: that separation is what keeps a device certificate
// out of the operator API.
func OperatorFromCert(cert *x509.Certificate) (Principal, error) {
	if cert == nil {
		return Principal{}, fmt.Errorf("operator certificate: none: %w", ErrUnauthenticated)
	}
	name := cert.Subject.CommonName
	if err := validShort("operator", name); err != nil || name == "" {
		return Principal{}, fmt.Errorf("operator certificate: bad common name %q: %w", truncate(name), ErrUnauthenticated)
	}
	var roles []Role
	for _, ou := range cert.Subject.OrganizationalUnit {
		if r, err := ParseRole(ou); err == nil {
			roles = append(roles, r)
		}
	}
	if len(roles) != 1 {
		return Principal{}, fmt.Errorf("operator certificate %q: want exactly one role in OU, found %d: %w", name, len(roles), ErrUnauthenticated)
	}
	return Principal{Kind: PrincipalOperator, Name: name, Role: roles[0]}, nil
}

// Token errors; both match ErrUnauthenticated too.
var (
	ErrTokenExpired = fmt.Errorf("token expired: %w", ErrUnauthenticated)
	ErrTokenRevoked = fmt.Errorf("token revoked: %w", ErrUnauthenticated)
)

// MaxTokenTTL bounds the lifetime of an operator token.
const MaxTokenTTL = 366 * 24 * time.Hour

const tokenPrefix = "ewo_"

// TokenInfo describes a token; the secret itself is never stored, only its SHA-256.
type TokenInfo struct {
	ID        string    `json:"id"`
	Operator  string    `json:"operator"`
	Role      Role      `json:"role"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	RevokedAt time.Time `json:"revoked_at,omitzero"`
}

// CreateToken issues an API token for operator with role, valid for ttl from now. The
// returned token string is shown once to the caller and never again.
//
// recs are appended to the audit log in the same transaction; a record without a
// Subject gets the token's ID.
func (s *Store) CreateToken(ctx context.Context, operator string, role Role, ttl time.Duration, now time.Time, recs ...AuditRecord) (string, TokenInfo, error) {
	if err := validShort("operator", operator); err != nil || operator == "" {
		return "", TokenInfo{}, fmt.Errorf("create token: %w", invalid("operator", "%q: want 1-%d printable characters", truncate(operator), maxShortString))
	}
	if _, err := ParseRole(string(role)); err != nil {
		return "", TokenInfo{}, fmt.Errorf("create token: %w", err)
	}
	if ttl <= 0 || ttl > MaxTokenTTL {
		return "", TokenInfo{}, fmt.Errorf("create token: %w", invalid("ttl", "%v: want more than 0 and at most %v", ttl, MaxTokenTTL))
	}
	var idb [8]byte
	var secret [32]byte
	rand.Read(idb[:]) // never fails (crypto/rand)
	rand.Read(secret[:])
	id := hex.EncodeToString(idb[:])
	tok := tokenPrefix + id + "_" + base64.RawURLEncoding.EncodeToString(secret[:])
	info := TokenInfo{ID: id, Operator: operator, Role: role, CreatedAt: now.UTC(), ExpiresAt: now.Add(ttl).UTC()}
	h := sha256.Sum256([]byte(tok))
	for i := range recs {
		if recs[i].Subject == "" {
			recs[i].Subject = id
		}
	}
	err := s.tx(ctx, func(tx *txn) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO tokens (id, hash, operator, role, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)`,
			id, h[:], operator, string(role), ns(info.CreatedAt), ns(info.ExpiresAt))
		if err != nil {
			return err
		}
		return s.record(ctx, tx, recs...)
	})
	if err != nil {
		return "", TokenInfo{}, fmt.Errorf("create token: %w", err)
	}
	return tok, info, nil
}

// Authenticate returns the operator a bearer token belongs to. Errors match
// ErrUnauthenticated (and ErrTokenExpired or ErrTokenRevoked when that is the case);
// their text never contains the token.
func (s *Store) Authenticate(ctx context.Context, token string, now time.Time) (Principal, error) {
	if len(token) > 128 || !strings.HasPrefix(token, tokenPrefix) {
		return Principal{}, fmt.Errorf("authenticate: malformed token: %w", ErrUnauthenticated)
	}
	h := sha256.Sum256([]byte(token))
	return authenticateHash(ctx, s.db, h[:], now)
}

// AuthenticateID returns the principal of the token with this ID, for an operator who
// proved it otherwise than with the secret: a client certificate issued for the token
// (see OperatorCertURI). Revocation and expiry apply as for the secret.
func (s *Store) AuthenticateID(ctx context.Context, id string, now time.Time) (Principal, error) {
	if id == "" || len(id) > 64 {
		return Principal{}, fmt.Errorf("authenticate: malformed token ID: %w", ErrUnauthenticated)
	}
	return authenticateWhere(ctx, s.db, "id", id, now)
}

// authenticateHash checks the token whose SHA-256 is h.
func authenticateHash(ctx context.Context, q dbtx, h []byte, now time.Time) (Principal, error) {
	return authenticateWhere(ctx, q, "hash", h, now)
}

// authenticateWhere checks the token whose column (id or hash, never user input) is v.
func authenticateWhere(ctx context.Context, q dbtx, column string, v any, now time.Time) (Principal, error) {
	var info TokenInfo
	var created, expires, revoked int64
	err := q.QueryRowContext(ctx, `SELECT id, operator, role, created_at, expires_at, revoked_at FROM tokens WHERE `+column+` = ?`, v).
		Scan(&info.ID, &info.Operator, &info.Role, &created, &expires, &revoked)
	if errors.Is(err, sql.ErrNoRows) {
		return Principal{}, fmt.Errorf("authenticate: unknown token: %w", ErrUnauthenticated)
	}
	if err != nil {
		return Principal{}, fmt.Errorf("authenticate: %w", err)
	}
	switch {
	case revoked != 0:
		return Principal{}, fmt.Errorf("authenticate: token %s of %q: %w", info.ID, info.Operator, ErrTokenRevoked)
	case !now.Before(fromNS(expires)):
		return Principal{}, fmt.Errorf("authenticate: token %s of %q: %w", info.ID, info.Operator, ErrTokenExpired)
	}
	return Principal{Kind: PrincipalOperator, Name: info.Operator, Role: info.Role, TokenID: info.ID}, nil
}

// RevokeToken revokes a token by ID (ErrNotFound if unknown). Revoking twice is not
// an error; the first revocation time is kept.
func (s *Store) RevokeToken(ctx context.Context, id string, now time.Time, recs ...AuditRecord) error {
	return s.update(ctx, "revoke token", id, recs, `UPDATE tokens SET revoked_at = CASE WHEN revoked_at = 0 THEN ? ELSE revoked_at END WHERE id = ?`, ns(now), id)
}

// Tokens lists every token (without secrets), oldest first.
func (s *Store) Tokens(ctx context.Context) ([]TokenInfo, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, operator, role, created_at, expires_at, revoked_at FROM tokens ORDER BY created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("tokens: %w", err)
	}
	defer rows.Close()
	var out []TokenInfo
	for rows.Next() {
		var t TokenInfo
		var c, e, r int64
		if err := rows.Scan(&t.ID, &t.Operator, &t.Role, &c, &e, &r); err != nil {
			return nil, fmt.Errorf("tokens: %w", err)
		}
		t.CreatedAt, t.ExpiresAt, t.RevokedAt = fromNS(c), fromNS(e), fromNS(r)
		out = append(out, t)
	}
	return out, rows.Err()
}

// operatorCertPrefix starts the URI SAN of an operator client certificate; the rest is
// the ID of the token it stands for.
const operatorCertPrefix = "urn:edgeward:operator:"

// OperatorCertURI is the URI SAN of a client certificate issued for token ID id.
func OperatorCertURI(id string) *url.URL {
	u, _ := url.Parse(operatorCertPrefix + id)
	return u
}

// OperatorCertTokenID returns the token ID an operator client certificate stands for,
// if it is one (exactly one such URI SAN).
func OperatorCertTokenID(c *x509.Certificate) (string, bool) {
	id, n := "", 0
	for _, u := range c.URIs {
		if s, ok := strings.CutPrefix(u.String(), operatorCertPrefix); ok {
			id, n = s, n+1
		}
	}
	return id, n == 1 && id != ""
}

package fleet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestAuthorize(t *testing.T) {
	allowed := map[Role][]Action{
		RoleSecurityAdmin:  {ActionFleetRead, ActionQuarantine, ActionDecommission, ActionKeys, ActionAttestPolicy, ActionTokens, ActionAuditExport},
		RoleReleaseManager: {ActionFleetRead, ActionPublish, ActionRolloutWrite, ActionDeviceLabel},
		RoleAuditor:        {ActionFleetRead, ActionAuditExport},
	}
	for _, role := range []Role{RoleSecurityAdmin, RoleReleaseManager, RoleAuditor, "root", ""} {
		for _, a := range append(Actions(), "unknown") {
			want := false
			for _, ok := range allowed[role] {
				want = want || ok == a
			}
			err := Authorize(Principal{Kind: PrincipalOperator, Name: "op", Role: role}, a)
			if (err == nil) != want || (err != nil && !errors.Is(err, ErrForbidden)) {
				t.Errorf("Authorize(%s, %s) = %v; want allowed=%v", role, a, err, want)
			}
		}
	}
	// A device is denied every operator action, even with a role set.
	for _, a := range Actions() {
		if err := Authorize(Principal{Kind: PrincipalDevice, Name: "dev-1", Role: RoleSecurityAdmin}, a); !errors.Is(err, ErrForbidden) {
			t.Errorf("Authorize(device, %s) = %v; want ErrForbidden", a, err)
		}
		if err := Authorize(Principal{Name: "anon", Role: RoleSecurityAdmin}, a); !errors.Is(err, ErrForbidden) {
			t.Errorf("Authorize(no kind, %s) = %v; want ErrForbidden", a, err)
		}
	}
	// Device API: only the device itself; never an operator.
	if err := AuthorizeDevice(Principal{Kind: PrincipalDevice, Name: "dev-1"}, "dev-1"); err != nil {
		t.Errorf("AuthorizeDevice(self) = %v", err)
	}
	if err := AuthorizeDevice(Principal{Kind: PrincipalDevice, Name: "dev-1"}, "dev-2"); !errors.Is(err, ErrForbidden) {
		t.Errorf("AuthorizeDevice(other device) = %v; want ErrForbidden", err)
	}
	if err := AuthorizeDevice(Principal{Kind: PrincipalOperator, Name: "dev-1", Role: RoleSecurityAdmin}, "dev-1"); !errors.Is(err, ErrForbidden) {
		t.Errorf("AuthorizeDevice(operator) = %v; want ErrForbidden", err)
	}
}

func testTokens(t *testing.T, db opener) {
	ctx := context.Background()
	s, _ := openStore(t, db)
	tok, info, err := s.CreateToken(ctx, "alice", RoleReleaseManager, time.Hour, t0)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok, "ewo_"+info.ID+"_") || len(tok) < 50 {
		t.Errorf("token = %q", tok)
	}
	var stored []byte
	if err := s.db.QueryRowContext(ctx, `SELECT hash FROM tokens WHERE id = ?`, info.ID).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if want := sha256.Sum256([]byte(tok)); !bytes.Equal(stored, want[:]) {
		t.Errorf("stored %x; want the token's SHA-256, not the token", stored)
	}
	p, err := s.Authenticate(ctx, tok, t0.Add(59*time.Minute))
	if err != nil || p != (Principal{Kind: PrincipalOperator, Name: "alice", Role: RoleReleaseManager, TokenID: info.ID}) || p.Actor() != "operator:alice@"+info.ID {
		t.Errorf("Authenticate = %+v, %v", p, err)
	}
	if err := Authorize(p, ActionRolloutWrite); err != nil {
		t.Errorf("release manager token cannot write rollouts: %v", err)
	}
	if _, err := s.Authenticate(ctx, tok, t0.Add(time.Hour)); !errors.Is(err, ErrTokenExpired) || !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("Authenticate(expired) = %v; want ErrTokenExpired", err)
	}
	for _, bad := range []string{"", "ewo_", tok + "x", strings.Replace(tok, "ewo_", "xyz_", 1), strings.Repeat("a", 10000)} {
		_, err := s.Authenticate(ctx, bad, t0)
		if !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("Authenticate(%.20q) = %v; want ErrUnauthenticated", bad, err)
		}
		if err != nil && len(bad) > 10 && strings.Contains(err.Error(), bad) {
			t.Errorf("error contains the token")
		}
	}
	if err := s.RevokeToken(ctx, info.ID, t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeToken(ctx, info.ID, t0.Add(2*time.Minute)); err != nil {
		t.Errorf("second revoke = %v", err)
	}
	if _, err := s.Authenticate(ctx, tok, t0.Add(2*time.Minute)); !errors.Is(err, ErrTokenRevoked) {
		t.Errorf("Authenticate(revoked) = %v; want ErrTokenRevoked", err)
	}
	if err := s.RevokeToken(ctx, "nope", t0); !errors.Is(err, ErrNotFound) {
		t.Errorf("RevokeToken(unknown) = %v; want ErrNotFound", err)
	}
	list, err := s.Tokens(ctx)
	if err != nil || len(list) != 1 || !list[0].RevokedAt.Equal(t0.Add(time.Minute)) {
		t.Errorf("Tokens = %+v, %v", list, err)
	}
	for _, c := range []struct {
		op   string
		role Role
		ttl  time.Duration
	}{{"", RoleAuditor, time.Hour}, {"bob", "root", time.Hour}, {"bob", RoleAuditor, 0}, {"bob", RoleAuditor, 2 * MaxTokenTTL}} {
		if _, _, err := s.CreateToken(ctx, c.op, c.role, c.ttl, t0); !errors.Is(err, ErrInvalid) {
			t.Errorf("CreateToken(%q, %q, %v) = %v; want ErrInvalid", c.op, c.role, c.ttl, err)
		}
	}
}

func TestOperatorFromCert(t *testing.T) {
	cert := func(cn string, ous ...string) *x509.Certificate {
		return &x509.Certificate{Subject: pkix.Name{CommonName: cn, OrganizationalUnit: ous}}
	}
	tests := []struct {
		c    *x509.Certificate
		want Principal
		ok   bool
	}{
		{cert("alice", "release-manager"), Principal{Kind: PrincipalOperator, Name: "alice", Role: RoleReleaseManager}, true},
		{cert("sam", "platform", "security-admin"), Principal{Kind: PrincipalOperator, Name: "sam", Role: RoleSecurityAdmin}, true},
		{cert("eve", "release-manager", "security-admin"), Principal{}, false},
		{cert("dev-0001"), Principal{}, false},
		{cert("", "auditor"), Principal{}, false},
		{nil, Principal{}, false},
	}
	for _, tt := range tests {
		got, err := OperatorFromCert(tt.c)
		if (err == nil) != tt.ok || got != tt.want || (err != nil && !errors.Is(err, ErrUnauthenticated)) {
			t.Errorf("OperatorFromCert(%v) = %+v, %v; want %+v, ok=%v", tt.c, got, err, tt.want, tt.ok)
		}
	}
}

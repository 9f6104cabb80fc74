package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"database/sql"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/repo-server/audit"
	"golang.org/x/mod/sumdb/note"
	_ "modernc.org/sqlite"
)

// TestAuditVerifyMaxAge: 'audit verify' says when a quorum of the witnesses cosigned the
// checkpoint it verified and how long ago, and with --max-age refuses one cosigned
// longer ago: the export a server rolled back to an earlier prefix of its log (or
// frozen) shows, which verified before with nothing to tell it apart.
func TestAuditVerifyMaxAge(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "audit.db")+"?_pragma=journal_mode(WAL)&_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_, key, _ := ed25519.GenerateKey(nil)
	l, err := audit.Open(ctx, audit.Config{DB: db, Key: key, Every: 1000})
	if err != nil {
		t.Fatal(err)
	}
	then := time.Now().Add(-72 * time.Hour)
	var clients []*audit.WitnessClient
	var flags []string
	for _, name := range []string{"w1.example", "w2.example"} {
		_, wk, _ := ed25519.GenerateKey(nil)
		w, err := audit.NewWitness(audit.WitnessConfig{Signer: audit.Cosigner(name, wk, func() time.Time { return then }), Logs: []note.Verifier{l.Verifier()}, State: filepath.Join(dir, name+".json")})
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(w)
		defer srv.Close()
		clients = append(clients, &audit.WitnessClient{URL: srv.URL})
		flags = append(flags, "--witness", audit.CosignerKey(name, wk.Public().(ed25519.PublicKey)))
	}
	for i := range 3 {
		if _, err := l.Append(ctx, "server", "attestation.verdict", "dev", map[string]any{"i": i}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Cosign(ctx, clients); err != nil {
		t.Fatal(err)
	}
	var export bytes.Buffer
	if err := l.ExportCosigned(ctx, &export); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "audit.jsonl")
	if err := os.WriteFile(file, export.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newCLI(t)
	args := append([]string{"audit", "verify", file, "--key", l.VerifierKey(), "--quorum", "2"}, flags...)
	out := c.must(args...)
	if !regexp.MustCompile(`cosigned by at least 2 of 2 witnesses \(the quorum by \S+, 72h0m\d+s ago\)`).MatchString(out) {
		t.Errorf("audit verify = %q; want it to say the quorum cosigned 72h ago", out)
	}
	_, _, err = c.run(append(args, "--max-age", "24h")...)
	if err == nil || !strings.Contains(err.Error(), "stale checkpoint") || !strings.Contains(err.Error(), "longer than the maximum age 24h0m0s") {
		t.Errorf("audit verify --max-age 24h of a checkpoint cosigned 72h ago = %v; want it refused as stale", err)
	}
	if out := c.must(append(args, "--max-age", "96h")...); !strings.HasPrefix(out, "ok: 3 records") {
		t.Errorf("audit verify --max-age 96h = %q; want ok", out)
	}
	if _, _, err := c.run("audit", "verify", file, "--key", l.VerifierKey(), "--max-age", "24h"); err == nil || !strings.Contains(err.Error(), "--max-age needs --witness") {
		t.Errorf("audit verify --max-age without witnesses = %v; want it refused", err)
	}
}

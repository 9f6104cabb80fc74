package reposerver

import (
	"os"
	"testing"

	"github.com/edgeward/edgeward/internal/pgtest"
)

// pg is the test binary's PostgreSQL cluster, started by the first test that needs it
// (tests that run on both fleet store backends).
var pg = pgtest.New()

func TestMain(m *testing.M) {
	code := m.Run()
	if err := pg.Stop(); err != nil && code == 0 {
		code = 1
	}
	os.Exit(code)
}

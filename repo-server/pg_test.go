package reposerver

import (
	"os"
	"testing"

	"github.com/edgeward/edgeward/internal/pgtest"
)

// pg is the test binary's PostgreSQL cluster, started by the first test that needs it
// (tests that run on both fleet store backends).
var pg = pgtest.New()

// pgDurable is a cluster with PostgreSQL's durability settings, for benchmarks.
var pgDurable = pgtest.NewWith(pgtest.Options{Durable: true})

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, pg, pgDurable)) }

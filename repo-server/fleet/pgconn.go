package fleet

import (
	"database/sql"
	"fmt"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// PostgreSQL session and socket settings every connection of a server gets, so that a
// replica cut off from the database mid-transaction cannot stop the others' writes for
// long. Every write transaction takes one advisory lock (writerLock); a replica whose
// link to the database went dark while it held it kept it until the database's TCP
// stack gave up on the connection (hours by Linux's defaults), and every replica's
// check-ins waited behind it (found from outside, 2 Dec).
const (
	// IdleInTransactionTimeout ends, on the database's side, a session that leaves a
	// transaction open with nothing to do for this long: its locks are released. The
	// server's transactions do their work between statements in microseconds.
	IdleInTransactionTimeout = 30 * time.Second
	// tcpUserTimeout closes a connection whose sent data stays unacknowledged this long
	// (a statement to a database that no longer answers fails, not hangs), and the
	// keepalive probes find an idle connection's peer gone in about as long.
	tcpUserTimeout = 30 * time.Second
	// connectTimeout bounds opening a connection, PostgreSQL's startup included.
	connectTimeout = 10 * time.Second
)

// OpenPostgres opens a connection pool on the PostgreSQL database at url with the
// settings above. A URL that sets idle_in_transaction_session_timeout itself keeps it.
func OpenPostgres(url string) (*sql.DB, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("fleet store %s: %w", redactURL(url), err)
	}
	if _, set := cfg.RuntimeParams["idle_in_transaction_session_timeout"]; !set && !strings.Contains(cfg.RuntimeParams["options"], "idle_in_transaction_session_timeout") {
		cfg.RuntimeParams["idle_in_transaction_session_timeout"] = fmt.Sprint(IdleInTransactionTimeout.Milliseconds())
	}
	d := &net.Dialer{
		Timeout:         10 * time.Second,
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 10 * time.Second, Interval: 5 * time.Second, Count: 4},
		Control: func(network, address string, c syscall.RawConn) error {
			if !strings.HasPrefix(network, "tcp") {
				return nil
			}
			var serr error
			if err := c.Control(func(fd uintptr) { serr = setTCPUserTimeout(fd, tcpUserTimeout) }); err != nil {
				return err
			}
			return serr
		},
	}
	cfg.DialFunc = d.DialContext
	if cfg.ConnectTimeout == 0 {
		// The dialer's timeout covers the TCP handshake; this, PostgreSQL's startup
		// too (a peer that accepts and never answers). connect_timeout in the URL wins.
		cfg.ConnectTimeout = connectTimeout
	}
	return stdlib.OpenDB(*cfg), nil
}

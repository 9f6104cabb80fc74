package tlshint

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestExplain: a real handshake against a server whose certificate the client does not
// trust is explained; a refused connection and nil are left alone.
func TestExplain(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, tlsErr := http.DefaultClient.Do(req)
	if tlsErr == nil {
		t.Fatal("an untrusted self-signed server was accepted")
	}
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	_, refused := http.Get(closed.URL)
	if refused == nil {
		t.Fatal("a closed server answered")
	}

	for _, tc := range []struct {
		name string
		err  error
		hint bool
	}{
		{"untrusted certificate", tlsErr, true},
		{"wrapped with %w", fmt.Errorf("devices list: %w", tlsErr), true},
		{"flattened with %v", fmt.Errorf("devices list: %v", tlsErr), true},
		{"connection refused", refused, false},
		{"plain error", errors.New("boom"), false},
		{"nil", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Explain(tc.err, "set EDGEWARD_SERVER_CA")
			if got == nil {
				if tc.err != nil || tc.hint {
					t.Fatalf("Explain(%v) = nil", tc.err)
				}
				return
			}
			if has := strings.Contains(got.Error(), "set EDGEWARD_SERVER_CA"); has != tc.hint {
				t.Fatalf("Explain(%v) = %q: hint present %v, want %v", tc.err, got, has, tc.hint)
			}
			if !errors.Is(got, tc.err) {
				t.Fatalf("Explain lost the cause: %v", got)
			}
		})
	}
}

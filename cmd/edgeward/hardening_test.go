package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/repo-server/operatorapi"
)

// `--listen ""` used to bind every interface; it is an error, and 'off' without TLS
// leaves nothing to serve on.
func TestServerListenFlag(t *testing.T) {
	c := newCLI(t)
	for _, args := range [][]string{{"--listen", ""}, {"--listen", " "}} {
		_, _, err := c.run(append([]string{"server"}, args...)...)
		if err == nil || !strings.Contains(err.Error(), "empty address") {
			t.Errorf("server %q = %v; want an error about the empty address", args, err)
		}
	}
	_, _, err := c.run("server", "--listen", "off")
	if err == nil || !strings.Contains(err.Error(), "--tls-listen") {
		t.Errorf("server --listen off = %v; want an error asking for --tls-listen", err)
	}
}

// The CLI refuses to send a token over plain HTTP to another machine, for the operator
// API and for publishing.
func TestCLIRefusesTokensInClear(t *testing.T) {
	c := newCLI(t)
	model := writeTemp(t, "m.onnx", "model")
	for _, args := range [][]string{
		{"devices", "list", "--server", "http://203.0.113.7:8440", "--token", "ewo_x_y"},
		{"rollout", "status", "--server", "http://edgeward.example", "--token", "ewo_x_y"},
		{"publish", "--server", "http://203.0.113.7:8440", "--token", "ewo_x_y", "--kind", "model", "--name", "m", "--version", "1.0.0", model},
	} {
		_, _, err := c.run(args...)
		if !errors.Is(err, operatorapi.ErrPlainHTTP) {
			t.Errorf("edgeward %s = %v; want ErrPlainHTTP", strings.Join(args, " "), err)
		}
	}
}

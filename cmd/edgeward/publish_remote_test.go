package main

import (
	"bytes"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/edgeward/edgeward/internal/artifact"
)

// countingListener counts the bytes its connections read.
type countingListener struct {
	net.Listener
	read *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return countingConn{Conn: c, read: l.read}, nil
}

type countingConn struct {
	net.Conn
	read *atomic.Int64
}

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

// A publish the server refuses before reading its body (here: for a bad token)
// costs the upload nothing: the CLI asks first (Expect: 100-continue) and sends no
// byte of a refused 16 MiB body. Before, the CLI sent no Expect header and put the
// body on the wire at once, however soon the answer came.
func TestPublishAsksBeforeSending(t *testing.T) {
	var read atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Expect") != "100-continue" {
			t.Errorf("Expect = %q; want 100-continue", r.Header.Get("Expect"))
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		w.Write([]byte(`{"error":"unknown token"}`))
	}))
	srv.Listener = countingListener{Listener: srv.Listener, read: &read}
	srv.Start()
	defer srv.Close()

	env := &cliEnv{getenv: func(string) string { return "" }}
	body := bytes.Repeat([]byte{0x5a}, 16<<20)
	meta := artifact.Meta{Kind: artifact.KindModel, Name: "vib", Version: "1.0.0"}
	_, err := publishRemote(t.Context(), env, srv.URL, "bad-token", meta, "onnx", bytes.NewReader(body), int64(len(body)), 0, false)
	if err == nil || !strings.Contains(err.Error(), "unknown token") {
		t.Fatalf("publish = %v; want the server's refusal", err)
	}
	if n := read.Load(); n > 64<<10 {
		t.Errorf("the server read %d bytes of a refused 16 MiB publish; want only the request head", n)
	}
}

// publish --server asks the server to stage a change its keys cannot sign alone
// (stage=1) and takes its 202 for the staged result, as a publish on the repository
// directory stages it. Before, the CLI took the 202 for an error (and sent no stage=1,
// so the server refused with 409).
func TestPublishRemoteStages(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("stage") != "1" {
			w.WriteHeader(http.StatusConflict)
			w.Write([]byte(`{"error":"the role needs more signatures than the keys at hand make"}`))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		w.Write([]byte(`{"Path":"models/vib/1.0.0.onnx","Role":"models","Version":3,"Staged":{"roles":[{"role":"models","version":3,"path":"/srv/repo/staged/models/3.models.json","signed_by":[],"threshold":2}]}}`))
	}))
	defer srv.Close()
	env := &cliEnv{getenv: func(string) string { return "" }}
	meta := artifact.Meta{Kind: artifact.KindModel, Name: "vib", Version: "1.0.0"}
	res, err := publishRemote(t.Context(), env, srv.URL, "tok", meta, "onnx", strings.NewReader("m"), 1, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Staged == nil || res.Staged.Version("models") != 3 || res.Staged.Roles[0].Threshold != 2 {
		t.Fatalf("publish --server to a role needing more signatures = %+v; want its staged version", res)
	}
}

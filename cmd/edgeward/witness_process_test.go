package main

import (
	"bufio"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestWitnessProcess: a witness run by someone else cosigns the server's checkpoints; the
// auditor's verify demands its cosignature (quorum 1 of 1) and keeps the last checkpoint.
func TestWitnessProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "edgeward")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	repo := filepath.Join(dir, "repo")
	env := append(os.Environ(), "EDGEWARD_PASSPHRASE=pw", "EDGEWARD_REPO="+repo)
	runBin := func(args ...string) (string, error) {
		cmd := exec.Command(bin, args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	must := func(args ...string) string {
		t.Helper()
		out, err := runBin(args...)
		if err != nil {
			t.Fatalf("edgeward %v: %v\n%s", args, err, out)
		}
		return out
	}
	must("repo", "init", repo)
	logKey := filepath.Join(dir, "log.vkey")
	os.WriteFile(logKey, []byte(must("audit", "pubkey")), 0o644)

	wargs := []string{"audit", "witness", "--name", "witness.example.org", "--key", filepath.Join(dir, "w.key"), "--state", filepath.Join(dir, "w.state")}
	wkey := strings.TrimSpace(must(append(wargs, "--print-key")...))
	w := exec.Command(bin, append(wargs, "--log", logKey, "--listen", "127.0.0.1:0")...)
	w.Env = env
	stdout, _ := w.StdoutPipe()
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Process.Kill(); w.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.Contains(line, wkey) {
		t.Fatalf("witness said %q, %v", line, err)
	}
	wurl := strings.Fields(line[strings.Index(line, "http://"):])[0]

	url := startServerProcess(t, bin, env, "--witness", wurl, "--checkpoint-interval", "100ms")
	must("publish", "--kind", "model", "--name", "m", "--version", "1.0.0", writeTemp(t, "m.onnx", "bytes"))
	// Wait for the newest checkpoint to be cosigned and to stay the newest for a while
	// (checkpoints come every 100 ms while the log grows): the export then ends with it.
	// Its size is the number of records, whatever the server audits besides the publish.
	deadline := time.Now().Add(20 * time.Second)
	var size string
	var stableSince time.Time
	for {
		resp, err := http.Get(url + "/v1/audit/checkpoint")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		lines := strings.Split(string(body), "\n")
		cosigned := strings.Contains(string(body), "— witness.example.org ")
		switch {
		case len(lines) < 2 || !cosigned || lines[1] == "1":
			size, stableSince = "", time.Time{}
		case lines[1] != size:
			size, stableSince = lines[1], time.Now()
		}
		if size != "" && time.Since(stableSince) > time.Second {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("checkpoint never cosigned: %s", body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	export, state := filepath.Join(dir, "audit.jsonl"), filepath.Join(dir, "last-seen")
	must("audit", "export", "-o", export)
	out := must("audit", "verify", export, "--key", logKey, "--witness", wkey, "--quorum", "1", "--state", state)
	if !strings.Contains(out, "ok: "+size+" records") || !strings.Contains(out, "cosigned by at least 1 of 1 witnesses") {
		t.Fatalf("audit verify: %s", out)
	}
	// Through the server, as a remote auditor: a plain export ends at a checkpoint signed
	// for it, which no witness has seen yet; --cosigned stops at the newest cosigned one.
	// (Found by an outside operator journey: every verify requiring a quorum failed.)
	tokOut := strings.Fields(must("token", "create", "--name", "aud", "--role", "auditor")) // stderr's note, then the token
	tok := tokOut[len(tokOut)-1]
	remote := filepath.Join(dir, "remote.jsonl")
	must("audit", "export", "--server", url, "--token", tok, "--cosigned", "-o", remote)
	verify := exec.Command(bin, "audit", "verify", "-", "--key", logKey, "--witness", wkey, "--quorum", "1")
	verify.Env = env
	verify.Stdin, _ = os.Open(remote)
	if out, err := verify.CombinedOutput(); err != nil || !strings.Contains(string(out), "cosigned by at least 1 of 1 witnesses") {
		t.Fatalf("audit verify - of the cosigned export through the server = %v\n%s", err, out)
	}
	proof := filepath.Join(dir, "proof.json")
	must("audit", "prove", "1", "--server", url, "--token", tok, "--cosigned", "-o", proof)
	if out := must("audit", "verify", "--proof", proof, "--key", logKey, "--witness", wkey, "--quorum", "1"); !strings.Contains(out, "ok: record 1") {
		t.Fatalf("audit verify --proof of a cosigned proof: %s", out)
	}
	// A witness the checkpoint does not carry cannot make the quorum.
	other := strings.TrimSpace(must("audit", "witness", "--name", "other.example.org", "--key", filepath.Join(dir, "o.key"), "--print-key"))
	if out, err := runBin("audit", "verify", export, "--key", logKey, "--witness", wkey, "--witness", other, "--quorum", "2"); err == nil || !strings.Contains(out, "cosigned by 1 of the trusted witnesses") {
		t.Fatalf("audit verify with quorum 2 = %v\n%s", err, out)
	}
}

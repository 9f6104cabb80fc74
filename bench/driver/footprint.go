package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/edgeward/edgeward/lab"
)

// FootprintResult is row 6 (MiB).
type FootprintResult struct {
	AgentBinaryMiB         float64 `json:"agent_binary_mib"`
	AgentBinaryStrippedMiB float64 `json:"agent_binary_stripped_mib"`
	RuntimeBinaryMiB       float64 `json:"runtime_binary_mib"`
	ORTLibraryMiB          float64 `json:"onnxruntime_library_mib"`
	ServerBinaryMiB        float64 `json:"server_binary_mib"`
	AgentIdleRSSMiB        float64 `json:"agent_idle_rss_mib"`
	AgentIdleHWMMiB        float64 `json:"agent_idle_peak_rss_mib"`
	AgentMode              string  `json:"agent_mode"`
	RuntimeIrisRSSMiB      float64 `json:"runtime_iris_rss_mib"`
	RuntimeIrisLoadedMiB   float64 `json:"runtime_iris_rss_after_load_mib"`
	RuntimeIrisHWMMiB      float64 `json:"runtime_iris_peak_rss_mib"`
	NodeIrisRSSMiB         float64 `json:"node_peer_iris_rss_mib"`
	// The whole device (`edgeward-agent device`: swtpm, attested check-ins every second
	// over mTLS, its own edgeward-runtime), via internal/lab.
	DeviceAgentRSSMiB float64 `json:"device_agent_idle_rss_mib"`
	DeviceAgentHWMMiB float64 `json:"device_agent_idle_peak_rss_mib"`
	DeviceRuntimeMiB  float64 `json:"device_runtime_rss_mib"`
	DeviceNote        string  `json:"device_note,omitempty"`
	Requests          int     `json:"requests_before_rss"`
}

func fileMiB(path string) float64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return round(mib(fi.Size()), 1)
}

// rssAfter returns the median of three VmRSS samples a second apart, and VmHWM.
func rssAfter(pid int) (rss, hwm float64, err error) {
	var xs []float64
	for range 3 {
		time.Sleep(time.Second)
		v, err := procStatus(pid, "VmRSS")
		if err != nil {
			return 0, 0, err
		}
		xs = append(xs, mib(v))
	}
	h, err := procStatus(pid, "VmHWM")
	return round(median(xs), 1), round(mib(h), 1), err
}

func irisRequests(base, model string, n int) error {
	body := []byte(`{"inputs":[{"name":"X","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}],"outputs":[{"name":"output_label"}]}`)
	for range n {
		resp, err := http.Post(base+"/v2/models/"+model+"/infer", "application/json", bytes.NewReader(body))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("infer: status %d", resp.StatusCode)
		}
	}
	return nil
}

func benchFootprint(ctx context.Context, cfg *config) (*FootprintResult, error) {
	agent := filepath.Join(cfg.bin, "edgeward-agent")
	res := &FootprintResult{AgentBinaryMiB: fileMiB(agent), RuntimeBinaryMiB: fileMiB(filepath.Join(cfg.bin, "edgeward-runtime")),
		ServerBinaryMiB: fileMiB(filepath.Join(cfg.bin, "edgeward")), Requests: 2000,
		AgentMode: "edgeward-agent run --interval 1h (main loop, enrolled, nothing to install), 3-6 s after start"}
	stripped := filepath.Join(cfg.work, "bin", "edgeward-agent.stripped")
	if _, err := runChild(ctx, "go", []string{"build", "-ldflags=-s -w", "-o", stripped, "./cmd/edgeward-agent"}, nil); err != nil {
		return nil, err
	}
	res.AgentBinaryStrippedMiB = fileMiB(stripped)
	res.ORTLibraryMiB = fileMiB(cfg.ortLib) // os.Stat follows the symlink

	// The agent's main loop, idle.
	repo, err := ensureRepo(ctx, cfg)
	if err != nil {
		return nil, err
	}
	srv, base, err := startRepoServer(cfg, repo)
	if err != nil {
		return nil, err
	}
	defer srv.stop()
	state, err := os.MkdirTemp(cfg.work, "agent-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(state)
	if _, err := runChild(ctx, agent, []string{"enroll", "--state-dir", state, "--root", repo.rootFile(),
		"--metadata-url", base + "/metadata", "--targets-url", base + "/targets"}, nil); err != nil {
		return nil, err
	}
	a, err := startService("edgeward-agent", filepath.Join(cfg.work, "edgeward-agent.log"), nil, agent,
		"run", "--state-dir", state, "--interval", "1h", "--device-id", "bench-device")
	if err != nil {
		return nil, err
	}
	time.Sleep(2 * time.Second)
	if res.AgentIdleRSSMiB, res.AgentIdleHWMMiB, err = rssAfter(a.pid()); err != nil {
		a.stop()
		return nil, fmt.Errorf("agent (see %s): %w", a.log.Name(), err)
	}
	a.stop()
	logf("footprint: agent %.1f MiB (stripped %.1f), idle RSS %.1f MiB (peak %.1f)", res.AgentBinaryMiB, res.AgentBinaryStrippedMiB, res.AgentIdleRSSMiB, res.AgentIdleHWMMiB)

	if err := deviceFootprint(ctx, cfg, res); err != nil {
		res.DeviceNote = "not measured: " + err.Error()
		logf("footprint: device mode: %v", err)
	}

	// The runtime with the Iris model, idle after load and after requests; the Node.js
	// peer beside it.
	models, err := prepareModels(ctx, filepath.Join(cfg.work, "models"))
	if err != nil {
		return nil, err
	}
	iris := models[0]
	port := freePort()
	rt, err := startService("edgeward-runtime", filepath.Join(cfg.work, "edgeward-runtime-iris.log"), nil, filepath.Join(cfg.bin, "edgeward-runtime"),
		"--listen", fmt.Sprintf("127.0.0.1:%d", port), "--control", fmt.Sprintf("127.0.0.1:%d", freePort()), "--ort-lib", cfg.ortLib,
		"--model", "iris=1.0.0="+iris.path)
	if err != nil {
		return nil, err
	}
	defer rt.stop()
	rb := fmt.Sprintf("http://127.0.0.1:%d", port)
	if err := waitHTTP(rb+"/v2/health/ready", 30*time.Second); err != nil {
		return nil, err
	}
	if res.RuntimeIrisLoadedMiB, _, err = rssAfter(rt.pid()); err != nil {
		return nil, err
	}
	if err := irisRequests(rb, "iris", res.Requests); err != nil {
		return nil, err
	}
	if res.RuntimeIrisRSSMiB, res.RuntimeIrisHWMMiB, err = rssAfter(rt.pid()); err != nil {
		return nil, err
	}
	np := freePort()
	node, err := startService("node", filepath.Join(cfg.work, "node-iris.log"), nil, "node",
		filepath.Join(cfg.benchDir, "node", "server.js"), fmt.Sprint(np), "iris="+iris.path)
	if err != nil {
		return nil, err
	}
	defer node.stop()
	nb := fmt.Sprintf("http://127.0.0.1:%d", np)
	if err := waitHTTP(nb+"/v2/health/ready", 30*time.Second); err != nil {
		return nil, err
	}
	if err := irisRequests(nb, "iris", res.Requests); err != nil {
		return nil, err
	}
	if res.NodeIrisRSSMiB, _, err = rssAfter(node.pid()); err != nil {
		return nil, err
	}
	logf("footprint: runtime %.1f MiB, Iris RSS %.1f MiB after load, %.1f MiB after %d requests (peak %.1f); Node.js peer %.1f MiB",
		res.RuntimeBinaryMiB, res.RuntimeIrisLoadedMiB, res.RuntimeIrisRSSMiB, res.Requests, res.RuntimeIrisHWMMiB, res.NodeIrisRSSMiB)
	return res, nil
}

// deviceFootprint runs one device the way `edgeward demo` does (a swtpm with an EK
// certificate, `edgeward server --tls-listen`, `edgeward-agent device` with its runtime)
// and samples the agent's RSS after it enrolled and has checked in for a few seconds.
func deviceFootprint(ctx context.Context, cfg *config, res *FootprintResult) error {
	if err := lab.CheckDeps(); err != nil {
		return err
	}
	dir, err := os.MkdirTemp(cfg.work, "device-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bins := lab.Bins{Edgeward: filepath.Join(cfg.bin, "edgeward"), Agent: filepath.Join(cfg.bin, "edgeward-agent"), Runtime: filepath.Join(cfg.bin, "edgeward-runtime")}
	lb, err := lab.New(dir, bins)
	if err != nil {
		return err
	}
	defer lb.Close()
	lb.Env = append(lb.Env, "ONNXRUNTIME_LIB="+cfg.ortLib)
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	repo, err := lab.InitRepo(ctx, filepath.Join(dir, "repo"), benchPassphrase, "version: 1\nattestation: {required: true, max_age: 5m}\n")
	if err != nil {
		return fmt.Errorf("repository: %w", err)
	}
	srv, err := lb.StartServer(ctx, lab.ServerConfig{Repo: filepath.Join(dir, "repo"), CheckIn: time.Second, TLS: true})
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	dev, err := lb.NewDevice(ctx, "bench-device", map[string]string{"line": "press"}, srv, repo.RootJSON())
	if err != nil {
		return fmt.Errorf("device: %w", err)
	}
	if err := dev.StartAgent(ctx); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	time.Sleep(5 * time.Second) // a few attested check-ins
	if res.DeviceAgentRSSMiB, res.DeviceAgentHWMMiB, err = rssAfter(dev.Agent.Pid()); err != nil {
		return err
	}
	// The runtime is the agent's child.
	if pid := childOf(dev.Agent.Pid()); pid > 0 {
		if v, err := procStatus(pid, "VmRSS"); err == nil {
			res.DeviceRuntimeMiB = round(mib(v), 1)
		}
	}
	res.DeviceNote = "edgeward-agent device: enrolled through the attestation CA with a swtpm EK certificate, mTLS check-ins every 1 s, no model installed; sampled 8-11 s after enrollment"
	logf("footprint: device agent idle RSS %.1f MiB (peak %.1f), its runtime %.1f MiB", res.DeviceAgentRSSMiB, res.DeviceAgentHWMMiB, res.DeviceRuntimeMiB)
	return nil
}

// childOf returns a child process of ppid (0 if none), from /proc/*/stat.
func childOf(ppid int) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces, so parse after the last ')'.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		var state string
		var pp int
		if _, err := fmt.Sscan(s[i+1:], &state, &pp); err == nil && pp == ppid {
			return pid
		}
	}
	return 0
}

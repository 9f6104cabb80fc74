package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/agent"
	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/deviceapi"
	"github.com/edgeward/edgeward/internal/nginxtest"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/lab"
	"github.com/edgeward/edgeward/policy"
	reposerver "github.com/edgeward/edgeward/repo-server"
	"github.com/edgeward/edgeward/repo-server/audit"
	"github.com/edgeward/edgeward/repo-server/fleet"
)

// TestMTLSDevicesBehindStreamProxy (issue 12): two `edgeward server --tls-listen`
// replicas (embedded step-ca, one PostgreSQL database) behind Debian's nginx as a TCP
// stream proxy that passes TLS through, so each device's certificate reaches the
// replica that answers. Two swtpm devices enroll, obtain their TPM-backed device
// certificates (ACME device-attest-01) and check in with mTLS, all through nginx; a
// rollout reaches both although the replica that served some of their sessions is
// SIGKILLed in the middle of it (the devices reconnect through nginx to the other).
// Then, with one device's own TPM and a certificate for it obtained through nginx:
// the device API accepts that certificate for its device, refuses it for the other
// device (identity_mismatch) and leaves the other device's record untouched; without a
// certificate it refuses (mTLS required), and the first device's certificate presented
// with another key does not get past the TLS handshake. The replicas read the PROXY
// protocol from nginx only: the refusal is audited with the test client's address, and
// a PROXY header sent by anyone else is not believed.
func TestMTLSDevicesBehindStreamProxy(t *testing.T) {
	start := time.Now()
	// The replicas read the PROXY protocol from nginx (127.0.0.1) on their TLS
	// listeners, so that they see each device's address, not the proxy's.
	rl := startReplicas(t, 2, lab.ServerConfig{TLS: true, Args: []string{"--checkpoint-interval", "2s", "--log-format", "text",
		"--trusted-proxy", "127.0.0.1", "--proxy-protocol"}})
	ctx := context.Background()
	replicas := rl.replicas

	// nginx passes TCP through (no TLS termination), prefixed with a PROXY protocol
	// header naming the client: round robin per connection, and a connection a replica
	// refuses goes to the next one.
	var upstream strings.Builder
	for _, r := range replicas {
		fmt.Fprintf(&upstream, "    server %s max_fails=1 fail_timeout=2s;\n", strings.TrimPrefix(r.TLSURL, "https://"))
	}
	ng := nginxtest.StartStream(t, func(port int) string {
		return fmt.Sprintf(`upstream edgeward_tls {
%s}
server {
    listen 127.0.0.1:%d;
    proxy_pass edgeward_tls;
    proxy_protocol on;
    proxy_connect_timeout 2s;
}`, upstream.String(), port)
	})
	// Devices reach the device API through nginx (TLS, pinning the replicas' shared
	// server certificate) and TUF metadata and targets at the second replica's plain
	// listener (static files: a mirror or CDN in production, see TestMirror).
	front := &lab.Server{URL: replicas[1].URL, TLSURL: fmt.Sprintf("https://127.0.0.1:%d", ng.Port), TLSCert: replicas[0].TLSCert}
	var devs []*lab.Device
	for i := range 2 {
		d, err := rl.lab.NewDevice(ctx, fmt.Sprintf("device-%d", i+1), nil, front, rl.repo.RootJSON())
		if err != nil {
			t.Fatal(err)
		}
		devs = append(devs, d)
	}
	errs := make(chan error, len(devs))
	for _, d := range devs {
		go func() { errs <- d.StartAgent(ctx) }()
	}
	for range devs {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if err := replicas[1].WaitTrusted(ctx, wait, devs, start); err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		if d.DeviceCert() == "" {
			t.Fatalf("%s checked in without a device certificate", d.Name)
		}
	}

	// A rollout to both; once a device is in its trial, SIGKILL the first replica.
	const rollout, version = "vib-1.0.0", "1.0.0"
	if _, err := rl.repo.PublishModelRuns(ctx, version, gates, 20000); err != nil {
		t.Fatal(err)
	}
	if _, err := rl.repo.CreateRollout(policy.RolloutSpec{ID: rollout, Target: policy.TargetSpec{Kind: artifact.KindModel, Name: lab.Model, Version: version}}); err != nil {
		t.Fatal(err)
	}
	inTrial(t, devs)
	committed := countCommitted(t, replicas[1], devs)
	replicas[0].Kill()
	killedAt := time.Now()
	t.Logf("SIGKILLed replica-1 with %d of %d devices committed", committed, len(devs))
	if err := replicas[1].WaitCommitted(ctx, 2*wait, devs, artifact.KindModel, version); err != nil {
		t.Fatal(err)
	}
	err := lab.WaitFor(ctx, wait, "the rollout to complete", func(ctx context.Context) (bool, string, error) {
		st, err := replicas[1].RolloutState(ctx, rollout)
		return err == nil && st.Status == policy.StatusCompleted, string(st.Status), err
	})
	if err != nil {
		t.Fatal(err)
	}
	reps := map[string]int{}
	all, err := replicas[1].Reports(ctx, fleet.ReportFilter{RolloutID: rollout})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range all {
		if r.Outcome == "committed" {
			reps[r.DeviceID]++
		}
	}
	for _, d := range devs {
		if reps[d.ID] != 1 {
			t.Errorf("%s: %d committed reports for %s; want 1", d.Name, reps[d.ID], rollout)
		}
	}

	// The first device's own TPM, used by the test once its agent is stopped: enrolled
	// again and given a device certificate, all through nginx.
	a, b := devs[0], devs[1]
	for _, d := range devs {
		if err := d.StopAgent(ctx); err != nil {
			t.Fatal(err)
		}
	}
	serverPEM, err := os.ReadFile(front.TLSCert)
	if err != nil {
		t.Fatal(err)
	}
	serverRoots := x509.NewCertPool()
	serverRoots.AppendCertsFromPEM(serverPEM)
	// The test's connections come from 127.0.0.2, which is not a trusted proxy: through
	// nginx the replicas see that address in the PROXY header.
	const testAddr = "127.0.0.2"
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(testAddr)}, Timeout: 10 * time.Second}
	client := func(cert func(*tls.CertificateRequestInfo) (*tls.Certificate, error)) *deviceapi.Client {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: serverRoots, GetClientCertificate: cert}, DialContext: dialer.DialContext}
		t.Cleanup(tr.CloseIdleConnections)
		return &deviceapi.Client{BaseURL: front.TLSURL, HTTP: &http.Client{Timeout: time.Minute, Transport: tr}}
	}
	noCert := client(nil)
	tpm, err := attest.Open(ctx, a.TPMURL())
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	ak, err := (&attest.EnrollClient{URL: front.TLSURL + wire.PathAttest, HTTP: noCert.HTTP}).Enroll(ctx, tpm)
	if err != nil {
		t.Fatalf("enroll %s's TPM through nginx: %v", a.Name, err)
	}
	if ak.PermanentIdentifier != a.ID {
		t.Fatalf("%s's TPM enrolled as %s; want %s", a.Name, ak.PermanentIdentifier, a.ID)
	}
	info, err := noCert.DeviceCA(ctx)
	if err != nil {
		t.Fatalf("device CA through nginx: %v", err)
	}
	dc, err := agent.NewDeviceCert(ctx, tpm, ak, info, "edgeward-e2e-tls")
	if err != nil {
		t.Fatalf("device certificate for %s: %v", a.Name, err)
	}
	defer dc.Close()
	withCert := client(dc.GetClientCertificate)
	before, err := replicas[1].Devices(ctx, []*lab.Device{b})
	if err != nil {
		t.Fatal(err)
	}

	// Accepted for its own device: the certificate reached the replica through nginx
	// and names the device the request names.
	if _, err := withCert.Nonce(ctx, a.ID); err != nil {
		t.Errorf("%s's nonce with its own certificate through nginx: %v; want one issued", a.Name, err)
	}
	// Refused for the other device, for a nonce and for a check-in.
	var apiErr *deviceapi.Error
	if _, err := withCert.Nonce(ctx, b.ID); !errors.As(err, &apiErr) || apiErr.Status != http.StatusForbidden || !strings.Contains(apiErr.Message, "identity_mismatch") {
		t.Errorf("%s's nonce with %s's certificate = %v; want 403 identity_mismatch", b.Name, a.Name, err)
	}
	if _, err := withCert.CheckIn(ctx, &wire.CheckInRequest{DeviceID: b.ID, Nonce: make([]byte, 32)}); !errors.As(err, &apiErr) || apiErr.Status != http.StatusForbidden || !strings.Contains(apiErr.Message, "identity_mismatch") {
		t.Errorf("%s's check-in with %s's certificate = %v; want 403 identity_mismatch", b.Name, a.Name, err)
	}
	// Without a certificate (what a proxy terminating TLS would pass on): refused.
	if _, err := noCert.Nonce(ctx, a.ID); !errors.As(err, &apiErr) || apiErr.Status != http.StatusForbidden || !strings.Contains(apiErr.Message, "mTLS") {
		t.Errorf("%s's nonce without a certificate = %v; want 403 mTLS required", a.Name, err)
	}
	// The certificate copied, with a key that is not the TPM's: no TLS session.
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	stolen, err := dc.GetClientCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	copied := &tls.Certificate{Certificate: stolen.Certificate, Leaf: stolen.Leaf, PrivateKey: other}
	if _, err := client(func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return copied, nil }).Nonce(ctx, a.ID); err == nil || errors.As(err, &apiErr) {
		t.Errorf("%s's certificate with another key: %v; want the TLS handshake refused", a.Name, err)
	}
	// A PROXY header from a peer that is not a trusted proxy is not read: the TLS
	// handshake that follows it fails, at a replica's TLS listener reached directly.
	raw, err := dialer.DialContext(ctx, "tcp", strings.TrimPrefix(replicas[1].TLSURL, "https://"))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(raw, "PROXY TCP4 10.6.6.6 127.0.0.1 4711 443\r\n")
	raw.SetDeadline(time.Now().Add(30 * time.Second))
	forged := tls.Client(raw, &tls.Config{RootCAs: serverRoots, ServerName: "127.0.0.1", GetClientCertificate: dc.GetClientCertificate})
	if err := forged.HandshakeContext(ctx); err == nil {
		t.Errorf("a TLS handshake after a PROXY header from %s (not a trusted proxy) succeeded; want it refused", testAddr)
	}
	forged.Close()
	// The refused check-in was audited with the test's address, which only the PROXY
	// header told the replica (its TCP peer was nginx, 127.0.0.1).
	auditLog, adb, err := reposerver.OpenAuditAt(ctx, rl.repo.Repo, rl.db)
	if err != nil {
		t.Fatal(err)
	}
	defer adb.Close()
	recs, err := auditLog.Records(ctx, audit.Query{Kind: "attestation.rejected"})
	if err != nil {
		t.Fatal(err)
	}
	var sources []string
	for _, r := range recs {
		var data struct{ Reason, Source string }
		json.Unmarshal(r.Data, &data)
		if r.Subject == b.ID && strings.Contains(data.Reason, "identity_mismatch") {
			sources = append(sources, data.Source)
		}
		if data.Source == "10.6.6.6" {
			t.Errorf("audit record %d names the forged source 10.6.6.6", r.Seq)
		}
	}
	if len(sources) != 1 || sources[0] != testAddr {
		t.Errorf("attestation.rejected records of %s's refused check-in came from %q; want one from %s", b.Name, sources, testAddr)
	}

	after, err := replicas[1].Devices(ctx, []*lab.Device{b})
	if err != nil {
		t.Fatal(err)
	}
	if fb, fa := before[b.Name], after[b.Name]; !fa.LastCheckIn.Equal(fb.LastCheckIn) || fa.Verdict != fb.Verdict || fa.Quarantined {
		t.Errorf("%s after the refused requests: last check-in %v, verdict %s, quarantined %v; want as before (%v, %s)",
			b.Name, fa.LastCheckIn, fa.Verdict, fa.Quarantined, fb.LastCheckIn, fb.Verdict)
	}

	// nginx passed sessions to both replicas, and to the second one after the kill.
	var ss []nginxtest.StreamSession
	err = lab.WaitFor(ctx, 10*time.Second, "nginx to log the devices' sessions", func(context.Context) (bool, string, error) {
		var err error
		ss, err = ng.StreamSessions()
		return len(ss) >= 4, fmt.Sprint(len(ss), " sessions"), err
	})
	if err != nil {
		t.Fatal(err)
	}
	per := map[string]int{}
	for _, s := range ss {
		if len(s.Upstreams) > 0 {
			per[s.Upstreams[len(s.Upstreams)-1]]++
		}
	}
	for i, r := range replicas {
		if per[strings.TrimPrefix(r.TLSURL, "https://")] == 0 {
			t.Errorf("no session through nginx ended at replica-%d: %v", i+1, per)
		}
	}
	t.Logf("%d TLS sessions through nginx (%v by upstream); rollout completed %.0f s after the kill, %.0f s in all",
		len(ss), per, time.Since(killedAt).Seconds(), time.Since(start).Seconds())
}

package attest_test

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/attest/attesttest"
)

// holderEnv names the TPM a re-executed test binary holds (TestTPMHolder).
const holderEnv = "EDGEWARD_TEST_TPM_HOLDER"

// TestTPMHolder is not a test: run by TestSIGKILLLeavesNoTPMLeftovers in a
// child process, it does what an agent does with its TPM (enroll: EK, AK,
// ActivateCredential with a policy session; a TLS key; quotes and
// signatures) in a loop until it is killed.
func TestTPMHolder(t *testing.T) {
	url, caURL := os.Getenv(holderEnv), os.Getenv(holderEnv+"_CA")
	if url == "" {
		t.Skip("run by TestSIGKILLLeavesNoTPMLeftovers")
	}
	ctx := context.Background()
	tpm, err := attest.Open(ctx, url)
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(3)
	}
	l := tpm.Leftovers()
	fmt.Println("ready", l.Objects, l.Sessions)
	d := sha256.Sum256([]byte("x"))
	for i := 0; ; i++ {
		if _, err := (&attest.EnrollClient{URL: caURL}).Enroll(ctx, tpm); err != nil {
			fmt.Println("enroll:", err)
			os.Exit(4)
		}
		k, err := tpm.CreateKey(ctx, fmt.Appendf(nil, "key-%d", i%2))
		if err != nil {
			fmt.Println("create key:", err)
			os.Exit(5)
		}
		if _, err := k.Sign(nil, d[:], crypto.SHA256); err != nil {
			fmt.Println("sign:", err)
			os.Exit(6)
		}
		if _, err := tpm.Quote(ctx, d[:], []int{16}); err != nil {
			fmt.Println("quote:", err)
			os.Exit(7)
		}
		if i%2 == 0 {
			k.Close() // the other key stays loaded, as the TLS key does
		}
	}
}

// transientCount is what `tpm2_getcap handles-transient` shows.
func transientCount(t *testing.T, tpm *attest.TPM) int {
	t.Helper()
	var n int
	err := tpm.Exec(context.Background(), func(tp transport.TPM) error {
		rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(tpm2.TPMHTTransient) << 24, PropertyCount: 64}.Execute(tp)
		if err != nil {
			return err
		}
		h, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			return err
		}
		n = len(h.Handle)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestSIGKILLLeavesNoTPMLeftovers: a process holding TPM objects and sessions
// is SIGKILLed at random points ten times in a row on one swtpm; every start
// after a kill, and a final open, must still enroll and quote (issue 14: two
// kills used to leave TPM_RC_OBJECT_MEMORY for good).
func TestSIGKILLLeavesNoTPMLeftovers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts swtpm and child processes")
	}
	ctx := context.Background()
	sw := attesttest.StartSwtpm(t, true)
	signer, root, err := attestca.NewRoot("Edgeward Attestation CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := attestca.New(attestca.Config{Signer: signer, Certificate: root,
		ManufacturerRoots: sw.CARoots, ManufacturerIntermediates: sw.CAIntermediates})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(ca.Handler())
	defer srv.Close()

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 14))
	const kills = 10
	flushed := 0
	for i := range kills {
		cmd := exec.Command(os.Args[0], "-test.run=^TestTPMHolder$", "-test.v=false")
		cmd.Env = append(os.Environ(), holderEnv+"="+sw.URL, holderEnv+"_CA="+srv.URL)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		var objs, sess int
		if !sc.Scan() || func() bool { _, err := fmt.Sscanf(sc.Text(), "ready %d %d", &objs, &sess); return err != nil }() {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("kill %d: holder did not open the TPM: %q", i, sc.Text())
		}
		lines := make(chan string, 8)
		go func() {
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		delay := time.Duration(rng.IntN(1500)) * time.Millisecond
		select {
		case l := <-lines:
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("kill %d: holder failed before its kill (after %d leftover kills): %s", i, i, l)
		case <-time.After(delay):
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		err = cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("kill %d: holder exited with %v before the SIGKILL at %v", i, err, delay)
		}
		t.Logf("kill %d after %v (its start flushed %d objects, %d sessions)", i, delay, objs, sess)
		flushed += objs
	}

	tpm, err := attest.Open(ctx, sw.URL)
	if err != nil {
		t.Fatalf("Open after %d kills = %v", kills, err)
	}
	defer tpm.Close()
	if l := tpm.Leftovers(); l.Objects+flushed == 0 {
		t.Errorf("no start found leftovers after %d kills: the test did not kill while objects were loaded", kills)
	}
	if n := transientCount(t, tpm); n != 0 {
		t.Errorf("transient objects after Open = %d; want 0 (leftovers flushed)", n)
	}
	if _, err := (&attest.EnrollClient{URL: srv.URL}).Enroll(ctx, tpm); err != nil {
		t.Fatalf("Enroll after %d kills = %v", kills, err)
	}
	if _, err := tpm.Quote(ctx, []byte("nonce"), []int{16}); err != nil {
		t.Fatalf("Quote after %d kills = %v", kills, err)
	}
}

// TestLoadedObjectsBounded: more keys than the TPM has object slots all keep
// working (flushed and re-created as the same key), and no more than
// MaxLoaded objects are ever loaded.
func TestLoadedObjectsBounded(t *testing.T) {
	ctx := context.Background()
	tpm := openSim(t)
	var keys []*attest.Key
	for i := range 5 {
		k, err := tpm.CreateKey(ctx, fmt.Appendf(nil, "key-%d", i))
		if err != nil {
			t.Fatalf("CreateKey(%d) with %d keys open = %v", i, len(keys), err)
		}
		keys = append(keys, k)
	}
	d := sha256.Sum256([]byte("x"))
	for round := range 2 {
		for i, k := range keys {
			sig, err := k.Sign(nil, d[:], crypto.SHA256)
			if err != nil {
				t.Fatalf("round %d: key %d Sign() = %v", round, i, err)
			}
			if !ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), d[:], sig) {
				t.Fatalf("round %d: key %d: signature does not verify with its public key (re-created as another key?)", round, i)
			}
			if _, err := k.Certify(ctx, d[:]); err != nil {
				t.Fatalf("round %d: key %d Certify() = %v", round, i, err)
			}
			if _, err := tpm.EK(ctx, attest.RSA); err != nil {
				t.Fatalf("round %d: EK() with %d keys = %v", round, len(keys), err)
			}
			if n := transientCount(t, tpm); n > attest.MaxLoaded {
				t.Fatalf("round %d: %d transient objects loaded; want <= %d", round, n, attest.MaxLoaded)
			}
		}
	}
	for _, k := range keys {
		if err := k.Close(); err != nil {
			t.Errorf("Close() = %v", err)
		}
	}
	if _, err := tpm.Quote(ctx, d[:], []int{16}); err != nil {
		t.Fatal(err)
	}
	if n := transientCount(t, tpm); n != 1 {
		t.Errorf("%d transient objects after closing every key; want 1 (the AK)", n)
	}
}

package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/updater"
	"github.com/edgeward/edgeward/updater/tuftest"
)

// TestServerRootsCoverTUF: a repository served over HTTPS with a certificate only the
// configured roots trust (the server's CA, --server-ca) is refreshed and its target
// installed; without those roots the refresh fails with an error that names the fix.
func TestServerRootsCoverTUF(t *testing.T) {
	ctx := context.Background()
	r := tuftest.NewTLS(t)
	p, _ := r.AddModel("vibration-anomaly", "1.0.0", 0)
	dir := StateDir(t.TempDir())
	if err := Enroll(dir, r.RootBytes(1), Enrollment{MetadataURL: r.MetadataURL(), TargetsURL: r.TargetsURL()}); err != nil {
		t.Fatal(err)
	}

	t.Run("without the CA", func(t *testing.T) {
		st, err := OpenState(ctx, StateConfig{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		err = st.TUF.Refresh(ctx)
		if !errors.Is(err, updater.ErrUntrustedServer) || !strings.Contains(err.Error(), "--server-ca") {
			t.Fatalf("Refresh() = %v; want ErrUntrustedServer naming --server-ca", err)
		}
		if !updater.Transient(err) {
			t.Errorf("Transient(%v) = false; want true (the version is not at fault)", err)
		}
	})

	t.Run("with the CA", func(t *testing.T) {
		roots := x509.NewCertPool()
		roots.AddCert(r.Certificate())
		st, err := OpenState(ctx, StateConfig{Dir: dir, Roots: roots})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if err := st.Slots.Recover(ctx); err != nil {
			t.Fatal(err)
		}
		s, err := st.Install(ctx, artifact.KindModel, p)
		if err != nil {
			t.Fatalf("Install(%q) over https with the CA = %v; want nil", p, err)
		}
		if n := r.Hits("/targets/"); n == 0 {
			t.Errorf("Install(%q) fetched no target (state %+v)", p, s)
		}
	})
}

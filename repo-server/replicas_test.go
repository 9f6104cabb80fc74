package reposerver

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/deviceapi"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repository"
)

// Two replicas on one fleet database: a device gets its nonce from one and checks in
// at the other, and the nonce cannot be replayed at either (nonces live in the
// database, not in a replica's memory).
func TestNonceFromOneReplicaCheckInAtAnother(t *testing.T) {
	f, d := newDeviceFixture(t)
	ctx := context.Background()
	replica2 := secondReplica(t, f, d, ServerConfig{Repo: f.repo})

	req := d.request() // the nonce comes from replica 1
	resp, err := replica2.CheckIn(ctx, req)
	if err != nil || !resp.Trusted {
		t.Fatalf("check-in at replica 2 with replica 1's nonce = %+v, %v; want trusted", resp, err)
	}
	for name, c := range map[string]*deviceapi.Client{"replica 1": d.api, "replica 2": replica2} {
		_, err := c.CheckIn(ctx, req)
		var apiErr *deviceapi.Error
		if !errors.As(err, &apiErr) || apiErr.Status != 401 {
			t.Fatalf("replayed check-in at %s = %v; want 401", name, err)
		}
	}
	if _, err := f.store.Device(ctx, d.id); err != nil {
		t.Fatalf("device enrolled through replica 2 not seen by replica 1: %v", err)
	}
}

// routeActivate sends enrollment's second step (activate) to another server.
type routeActivate struct{ to *url.URL }

func (r routeActivate) RoundTrip(req *http.Request) (*http.Response, error) {
	if strings.HasSuffix(req.URL.Path, "/activate") {
		req = req.Clone(req.Context())
		req.URL.Scheme, req.URL.Host, req.Host = r.to.Scheme, r.to.Host, r.to.Host
	}
	return http.DefaultTransport.RoundTrip(req)
}

// Two replicas on one fleet database: a TPM gets its enrollment challenge from one
// and answers it at the other (challenges live in the database, not in a replica's
// memory), and the answered challenge is gone from the database.
func TestChallengeFromOneReplicaAnsweredAtAnother(t *testing.T) {
	f := newFixture(t, repository.KeyEd25519)
	f.clock.useReal()
	ctx := context.Background()
	maker, err := attesttest.NewManufacturer("Acme TPM")
	if err != nil {
		t.Fatal(err)
	}
	signer, root, err := attestca.NewRoot("Edgeward Attestation CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	inter.AddCert(maker.Intermediate)
	var urls []string
	for i := 0; i < 2; i++ {
		store, err := fleet.Open(ctx, DBLocation(f.repo.Dir(), f.db))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { store.Close() })
		srv := f.srv
		if i > 0 {
			if srv, err = NewServer(ServerConfig{Repo: f.repo}); err != nil {
				t.Fatal(err)
			}
		}
		ca, err := attestca.New(attestca.Config{Signer: signer, Certificate: root, ManufacturerRoots: maker.Roots(), ManufacturerIntermediates: inter,
			Challenges: Challenges{Fleet: store}})
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.EnableDeviceAPI(DeviceConfig{Fleet: store, AttestCA: ca}); err != nil {
			t.Fatal(err)
		}
		hs := httptest.NewServer(srv.Handler())
		t.Cleanup(hs.Close)
		urls = append(urls, hs.URL)
	}
	tpm, err := attest.Open(ctx, "sim")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpm.Close() })
	if _, err := maker.Provision(ctx, tpm, attest.RSA); err != nil {
		t.Fatal(err)
	}
	to, _ := url.Parse(urls[1])
	client := &attest.EnrollClient{URL: urls[0] + wire.PathAttest, HTTP: &http.Client{Transport: routeActivate{to}}}
	ak, err := client.Enroll(ctx, tpm)
	if err != nil {
		t.Fatalf("Enroll(challenge from replica 1, answer at replica 2) = %v; want an AK certificate", err)
	}
	if ak.PermanentIdentifier == "" {
		t.Fatal("no permanent identifier")
	}
	var n int
	if err := f.srv.devices.cfg.Fleet.DB().QueryRowContext(ctx, `SELECT count(*) FROM challenges`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("pending challenges after enrollment = %d, %v; want 0 (answered once)", n, err)
	}
}

// Two server replicas on one fleet database: one leads (planner, checkpoints,
// metadata refresh); when it dies the other takes over within the lease's TTL, without
// the test sleeping (the leases' clock is the fixture's); a clean shutdown hands over
// at once; and the publish lock is held by one replica at a time, a dead holder's
// released by its expiry.
func TestLeaderLeaseTakeover(t *testing.T) {
	f := newFixture(t, repository.KeyEd25519)
	ctx := context.Background()
	ttl := 6 * time.Second
	logs := map[string]*lockedBuffer{}
	replica := func(name string) *Server {
		store, err := fleet.Open(ctx, DBPath(f.repo.Dir()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { store.Close() })
		logs[name] = &lockedBuffer{}
		s, err := NewServer(ServerConfig{Repo: f.repo, Replica: name, LeaseTTL: ttl, Now: f.clock.Now,
			Logger: slog.New(slog.NewTextHandler(logs[name], nil))})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.attachFleet(ctx, store); err != nil {
			t.Fatal(err)
		}
		return s
	}
	a, b := replica("a"), replica("b")
	leads := func(s *Server) bool { _, ok := s.Leader(ctx); return ok }
	tick := func(servers ...*Server) {
		t.Helper()
		for _, s := range servers {
			if _, err := s.LeaseOnce(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	tick(a, b)
	if !leads(a) || leads(b) {
		t.Fatalf("after a then b asked: a leads %v, b leads %v; want only a", leads(a), leads(b))
	}
	// Renewals every TTL/3 keep a in the lead.
	for i := 0; i < 6; i++ {
		f.clock.Add(ttl / 3)
		tick(a, b)
		if !leads(a) || leads(b) {
			t.Fatalf("renewal %d: a leads %v, b leads %v; want only a", i, leads(a), leads(b))
		}
	}
	// a dies: b takes over at its next tick after the lease ran out, within TTL + TTL/3.
	died := f.clock.Now()
	for !leads(b) {
		f.clock.Add(ttl / 3)
		tick(b)
		if f.clock.Now().Sub(died) > ttl+ttl/3 {
			t.Fatalf("b had not taken over %v after a died (TTL %v)", f.clock.Now().Sub(died), ttl)
		}
	}
	if leads(a) {
		t.Fatal("a still believes it leads after its lease ran out")
	}
	lb, _ := b.Leader(ctx)
	if lb.Token != 2 {
		t.Fatalf("b's lease token = %d; want 2 (a new grant)", lb.Token)
	}
	// a, back from a pause, cannot take the lease from the live leader, and says that
	// it lost it (its lease ran out while it was paused: it was no longer "held").
	tick(a)
	if leads(a) {
		t.Fatal("a took the lease back from a live leader")
	}
	if got := logs["a"].String(); !strings.Contains(got, `msg="leader lease lost" replica=a holder=b token=2 held_token=1`) {
		t.Fatalf("a's log after finding its lease gone:\n%s", got)
	}
	if got := logs["b"].String(); !strings.Contains(got, `msg="this replica leads`) || strings.Contains(got, "lost") {
		t.Fatalf("b's log after taking over:\n%s", got)
	}

	// A clean shutdown releases the lease: a takes over at its next tick.
	bctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { b.runLeases(bctx); close(done) }()
	stop()
	<-done
	tick(a)
	if !leads(a) {
		t.Fatal("a did not take over after b shut down cleanly")
	}
	// a pauses past its lease and nobody takes it meanwhile: it is granted again under
	// a new token (its fenced writes in flight are refused), and the log says so.
	la, _ := a.Leader(ctx)
	f.clock.Add(2 * ttl)
	tick(a)
	if now, _ := a.Leader(ctx); !leads(a) || now.Token != la.Token+1 {
		t.Fatalf("after a pause with no other replica: a leads %v with token %d; want the lease again under %d", leads(a), now.Token, la.Token+1)
	}
	if got := logs["a"].String(); !strings.Contains(got, `msg="leader lease ran out and was taken again" replica=a token=4 held_token=3`) {
		t.Fatalf("a's log after retaking its expired lease:\n%s", got)
	}

	// The publish lock: one replica at a time.
	unlock, err := a.lockPublish(ctx)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	if _, err := b.lockPublish(short); err == nil {
		t.Fatal("b took the publish lock while a held it")
	}
	cancel()
	// Every change through a server's repository holds it (NewServer), and so does a
	// CLI process given the database (PublishLock): neither publishes while a holds it.
	cli := f.repo.WithLock(PublishLock(a.leases(), "cli:test", ttl, f.clock.Now, nil))
	for name, repo := range map[string]*repository.Repo{"replica b": b.cfg.Repo, "the CLI": cli} {
		short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		_, err := repo.Publish(short, repository.PublishRequest{Meta: artifact.Meta{Kind: artifact.KindModel, Name: "m", Version: "9.0.0", Format: "onnx"},
			Ext: ".onnx", Content: strings.NewReader("blocked")}, f.keyring())
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%s published while replica a held the publish lock: %v", name, err)
		}
	}
	unlock()
	if _, err := cli.Publish(ctx, repository.PublishRequest{Meta: artifact.Meta{Kind: artifact.KindModel, Name: "m", Version: "9.0.0", Format: "onnx"},
		Ext: ".onnx", Content: strings.NewReader("after")}, f.keyring()); err != nil {
		t.Fatalf("the CLI publishing once the lock was free: %v", err)
	}
	if l, err := a.leases().AcquireLease(ctx, LeasePublish, "probe", ttl, f.clock.Now()); err != nil || l.Holder != "probe" {
		t.Fatalf("the CLI's publish left the lock held: %+v, %v", l, err)
	} else if err := a.leases().ReleaseLease(ctx, l); err != nil {
		t.Fatal(err)
	}
	unlockB, err := b.lockPublish(ctx)
	if err != nil {
		t.Fatalf("b waiting for the publish lock after a released it: %v", err)
	}
	unlockB()
	// A publisher that died holding it: the lock is free once its lease ran out.
	st := a.leases()
	if l, err := st.AcquireLease(ctx, LeasePublish, "dead-replica/1", ttl, f.clock.Now()); err != nil || l.Holder != "dead-replica/1" {
		t.Fatalf("dead publisher's lock = %+v, %v", l, err)
	}
	f.clock.Add(ttl)
	short, cancel = context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	unlockB, err = b.lockPublish(short)
	if err != nil {
		t.Fatalf("publish lock after its dead holder's lease ran out: %v", err)
	}
	unlockB()
}

// secondReplica starts another server, configured by cfg, on f's fleet database with
// the device API enabled as f's (d's attestation root, the test policy), and returns a
// device API client of it. Everything is closed when the test ends.
func secondReplica(t *testing.T, f *deviceFixture, d *device, cfg ServerConfig) *deviceapi.Client {
	t.Helper()
	store, err := fleet.Open(context.Background(), DBLocation(f.repo.Dir(), f.db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(d.ak.Chain[len(d.ak.Chain)-1])
	pol, err := policy.Parse(policy.File{Name: "fleet.yaml", Data: []byte(testPolicy)})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.EnableDeviceAPI(DeviceConfig{Fleet: store, AttestRoots: roots, Policy: func() *policy.Policy { return pol }}); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	return &deviceapi.Client{BaseURL: hs.URL}
}

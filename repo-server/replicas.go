package reposerver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/internal/protocol"
	"github.com/edgeward/edgeward/repo-server/fleet"
)

// Challenges keeps the attestation CA's pending enrollment challenges in the fleet
// database (attestca.Config.Challenges), so that a device may answer at any replica
// the challenge another replica issued, and the bounds on pending challenges hold
// across replicas.
type Challenges struct{ Fleet *fleet.Store }

// AddChallenge implements attestca.ChallengeStore.
func (c Challenges) AddChallenge(ctx context.Context, ch attestca.Challenge, b attestca.Bounds, now time.Time) error {
	err := c.Fleet.AddChallenge(ctx, fleet.Challenge{ID: ch.ID, EKID: ch.EKID, Source: ch.Source, Secret: ch.Secret, AKPublic: ch.AKPublic,
		Manufacturer: ch.TPM.Manufacturer, Model: ch.TPM.Model, Version: ch.TPM.Version, Expires: ch.Expires}, b.MaxPending, b.MaxPendingPerSource, now)
	if errors.Is(err, fleet.ErrChallengesFull) {
		return attestca.ErrBusy
	}
	return caUnavailable(err)
}

// caUnavailable is err, of the fleet store, marked attestca.ErrUnavailable (503 with
// Retry-After) when it says the database cannot do the work for now
// (fleet.Unavailable), and syscall.ENOSPC too when its disk is full: an enrollment on
// a full disk was answered 500 "internal error".
func caUnavailable(err error) error {
	switch {
	case err == nil || !fleet.Unavailable(err):
		return err
	case fleet.NoSpace(err):
		return fmt.Errorf("%w: %w: %w", attestca.ErrUnavailable, syscall.ENOSPC, err)
	default:
		return fmt.Errorf("%w: %w", attestca.ErrUnavailable, err)
	}
}

// TakeChallenge implements attestca.ChallengeStore.
func (c Challenges) TakeChallenge(ctx context.Context, id string) (*attestca.Challenge, error) {
	ch, err := c.Fleet.TakeChallenge(ctx, id)
	if ch == nil || err != nil {
		return nil, caUnavailable(err)
	}
	return &attestca.Challenge{ID: ch.ID, EKID: ch.EKID, Source: ch.Source, Secret: ch.Secret, AKPublic: ch.AKPublic,
		TPM: protocol.TPMInfo{Manufacturer: ch.Manufacturer, Model: ch.Model, Version: ch.Version}, Expires: ch.Expires}, nil
}

// LeaseLeader is the lease whose holder runs the rollout planner's ticker, signs audit
// checkpoints (and collects the witnesses' cosignatures) and re-signs expiring online
// metadata. LeasePublish serialises publishing (and those re-signings) across replicas.
const (
	LeaseLeader  = "leader"
	LeasePublish = "publish"
	// LeaseStepCA is held while the embedded step-ca's root and intermediate are read
	// or created, so that replicas starting together create one CA.
	LeaseStepCA = "stepca"
)

// DefaultLeaseTTL is how long a lease lasts unrenewed unless configured
// (ServerConfig.LeaseTTL).
const DefaultLeaseTTL = 6 * time.Second

// DBPublishLock is PublishLock for a process that keeps no fleet store open, the CLI on
// a directory that server replicas share: each take opens the fleet database db and its
// release closes it. holder names the process in the lease (e.g. cli:alice@host:pid).
func DBPublishLock(db, holder string) func(ctx context.Context) (func(), error) {
	lock, _ := DBPublishLease(db, holder)
	return lock
}

// publishHeld is the repository's check that the publish lease the change under way
// took is still held (repository.Config.Held); nil without a fleet store (no lease).
func (s *Server) publishHeld(ctx context.Context) error {
	if h := s.publishing.Load(); h != nil {
		return h.Held(ctx)
	}
	return nil
}

// DBPublishLease is DBPublishLock with the repository's check that the lease is still
// held (repository.Config.Held).
func DBPublishLease(db, holder string) (lock func(ctx context.Context) (func(), error), held func(ctx context.Context) error) {
	var mu sync.Mutex
	var cur *LeaseHolder
	lock = func(ctx context.Context) (func(), error) {
		st, err := fleet.Open(ctx, db)
		if err != nil {
			return nil, fmt.Errorf("publish lock: %w", err)
		}
		h := NewLeaseLock(st, LeasePublish, holder, DefaultLeaseTTL, nil, nil)
		unlock, err := h.Lock(ctx)
		if err != nil {
			st.Close()
			return nil, err
		}
		mu.Lock()
		cur = h
		mu.Unlock()
		return func() {
			mu.Lock()
			cur = nil
			mu.Unlock()
			unlock()
			st.Close()
		}, nil
	}
	held = func(ctx context.Context) error {
		mu.Lock()
		h := cur
		mu.Unlock()
		if h == nil {
			return fmt.Errorf("%w: %s is not held", fleet.ErrLeaseLost, LeasePublish)
		}
		return h.Held(ctx)
	}
	return lock, held
}

// replicaName is a replica's default name: host, process and a random suffix, so that
// a restarted process is a new holder.
func replicaName() string {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	rand.Read(b)
	return fmt.Sprintf("%s:%d:%s", host, os.Getpid(), hex.EncodeToString(b))
}

// Replica is this server's name as a lease holder (ServerConfig.Replica).
func (s *Server) Replica() string { return s.cfg.Replica }

// leases is the fleet store the leases live in; nil when no fleet store is attached
// (a server alone with its repository: it runs every job itself).
func (s *Server) leases() *fleet.Store {
	s.auditMu.Lock()
	defer s.auditMu.Unlock()
	return s.fleet
}

// LeaseOnce takes or renews the leader lease for this replica and returns it as it
// stands (held by this replica or another). Serve calls it every LeaseTTL/3; tests call
// it with their clock.
func (s *Server) LeaseOnce(ctx context.Context) (fleet.Lease, error) {
	st := s.leases()
	if st == nil {
		return fleet.Lease{}, errors.New("no fleet store: no leases")
	}
	l, err := st.AcquireLease(ctx, LeaseLeader, s.cfg.Replica, s.cfg.LeaseTTL, s.cfg.Now())
	if err != nil {
		return fleet.Lease{}, err
	}
	s.leaseMu.Lock()
	before := s.lease
	s.lease = l
	s.leaseMu.Unlock()
	s.logLeaseChange(before, l)
	return l, nil
}

// logLeaseChange says when this replica starts leading, and when a lease it held was
// found gone: taken by another replica, or run out while this process was paused
// (stopped, swapped, starved) and granted again under a new token. Either way the jobs
// it ran as leader stopped at that moment (their writes are fenced by the token), which
// an operator reading the log of a slow replica must be able to see.
func (s *Server) logLeaseChange(before, l fleet.Lease) {
	ours := func(x fleet.Lease) bool { return x.Holder == s.cfg.Replica && x.Token != 0 }
	switch {
	case ours(before) && !ours(l):
		s.log.Warn("leader lease lost", "replica", s.cfg.Replica, "holder", l.Holder, "token", l.Token,
			"held_token", before.Token, "expired", before.Expires.Format(time.RFC3339Nano))
	case ours(before) && l.Token != before.Token:
		s.log.Warn("leader lease ran out and was taken again", "replica", s.cfg.Replica, "token", l.Token,
			"held_token", before.Token, "expired", before.Expires.Format(time.RFC3339Nano))
	case ours(l) && !ours(before):
		s.log.Info("this replica leads: rollout planner, audit checkpoints, metadata refresh", "replica", s.cfg.Replica, "token", l.Token)
	}
}

// Leader returns the leader lease and true when this replica holds it now (as last
// taken or renewed; the first call tries to take it). A server without a fleet store
// always leads (it is alone), with a zero lease.
func (s *Server) Leader(ctx context.Context) (fleet.Lease, bool) {
	if s.leases() == nil {
		return fleet.Lease{}, true
	}
	s.leaseMu.Lock()
	l := s.lease
	s.leaseMu.Unlock()
	if l.Name == "" {
		var err error
		if l, err = s.LeaseOnce(ctx); err != nil {
			s.log.Error("leader lease", "err", err)
			return fleet.Lease{}, false
		}
	}
	return l, l.Held(s.cfg.Replica, s.cfg.Now())
}

// runLeases renews (or tries to take) the leader lease every LeaseTTL/3 until ctx
// ends, then releases it so that another replica takes over at once.
func (s *Server) runLeases(ctx context.Context) {
	t := time.NewTicker(s.cfg.LeaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if l, ok := s.Leader(ctx); ok && s.leases() != nil {
				rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				if err := s.leases().ReleaseLease(rctx, l); err != nil {
					s.log.Warn("release leader lease", "err", err)
				}
				cancel()
			}
			return
		case <-t.C:
		}
		if _, err := s.LeaseOnce(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("leader lease", "err", err)
		}
	}
}

// lockPublish takes the publish lease for one change to the repository (a publish
// through the operator API, a re-signing of online metadata), waiting while another
// replica or a CLI process holds it (PublishLock). NewServer gives the server's
// repository this lock (Repo.WithLock), so every change it makes holds it. Without a
// fleet store it takes no lease: the repository's file lock serialises the processes of
// one machine. Its unlock tells the metadata cache that files changed.
func (s *Server) lockPublish(ctx context.Context) (func(), error) {
	unlock := func() {}
	if st := s.leases(); st != nil {
		h := NewLeaseLock(st, LeasePublish, s.cfg.Replica, s.cfg.LeaseTTL, s.cfg.Now, s.log)
		u, err := h.Lock(ctx)
		if err != nil {
			return nil, err
		}
		s.publishing.Store(h)
		unlock = func() { s.publishing.CompareAndSwap(h, nil); u() }
	}
	// The change is on disk: the metadata cache looks at its files again before this
	// server's next answer, without waiting for its directory watcher.
	return func() { s.meta.changed(); unlock() }, nil
}

// PublishLock returns a repository lock (repository.Config.Lock) held as the publish
// lease (LeasePublish) in the fleet database st, under a holder named after holder and
// a random suffix for each take: it waits while anyone else holds the lease, renews it
// every ttl/3 while held, and releases it at unlock. A holder that dies loses it after
// ttl. Server replicas and CLI processes on one database (a directory shared by several
// machines) thus write the repository one at a time, whatever the file system's locks
// do. now nil: time.Now; log nil: discard.
func PublishLock(st *fleet.Store, holder string, ttl time.Duration, now func() time.Time, log *slog.Logger) func(ctx context.Context) (func(), error) {
	return LeaseLock(st, LeasePublish, holder, ttl, now, log)
}

// LeaseLock is PublishLock for any lease: a lock held as lease in st.
func LeaseLock(st *fleet.Store, lease, holder string, ttl time.Duration, now func() time.Time, log *slog.Logger) func(ctx context.Context) (func(), error) {
	return NewLeaseLock(st, lease, holder, ttl, now, log).Lock
}

// A LeaseHolder is a lock held as a lease in a fleet store (LeaseLock), which can also
// say whether the take under way still holds it (Held): a repository checks that just
// before a change becomes visible (repository.Config.Held). One take at a time: the
// repository's file lock serialises the changes of one process.
type LeaseHolder struct {
	st          *fleet.Store
	lease, name string
	ttl         time.Duration
	now         func() time.Time
	log         *slog.Logger
	mu          sync.Mutex
	cur         *fleet.Lease // the take under way; nil when none, or lost
}

// NewLeaseLock returns the lease lock of LeaseLock, with Held.
func NewLeaseLock(st *fleet.Store, lease, holder string, ttl time.Duration, now func() time.Time, log *slog.Logger) *LeaseHolder {
	if ttl <= 0 {
		ttl = DefaultLeaseTTL
	}
	if now == nil {
		now = time.Now
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &LeaseHolder{st: st, lease: lease, name: holder, ttl: ttl, now: now, log: log}
}

// Held renews the take under way and returns nil if it still holds the lease, or an
// error wrapping fleet.ErrLeaseLost if the lease has passed to another holder (this one
// stalled past its time, and someone else may have written since).
func (k *LeaseHolder) Held(ctx context.Context) error {
	k.mu.Lock()
	cur := k.cur
	k.mu.Unlock()
	if cur == nil {
		return fmt.Errorf("%w: %s is not held", fleet.ErrLeaseLost, k.lease)
	}
	l, err := k.st.AcquireLease(ctx, k.lease, cur.Holder, k.ttl, k.now())
	if err != nil {
		return err
	}
	if l.Holder != cur.Holder || l.Token != cur.Token {
		k.lost(cur)
		return fmt.Errorf("%w: %s is held by %s (token %d), not %s (token %d)", fleet.ErrLeaseLost, k.lease, l.Holder, l.Token, cur.Holder, cur.Token)
	}
	return nil
}

// lost forgets the take cur (if it is still the one under way).
func (k *LeaseHolder) lost(cur *fleet.Lease) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cur == cur {
		k.cur = nil
	}
}

// Lock takes the lease (waiting while anyone else holds it), renews it every ttl/3
// while held, and releases it at unlock.
func (k *LeaseHolder) Lock(ctx context.Context) (func(), error) {
	st, lease, ttl, now, log := k.st, k.lease, k.ttl, k.now, k.log
	b := make([]byte, 4)
	rand.Read(b)
	holder := k.name + "/" + hex.EncodeToString(b)
	wait := 20 * time.Millisecond
	var taken fleet.Lease
	for {
		l, err := st.AcquireLease(ctx, lease, holder, ttl, now())
		if err != nil {
			return nil, err
		}
		if l.Holder == holder {
			taken = l
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for the %s lock (held by %s): %w", lease, l.Holder, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, ttl/3)
	}
	cur := &taken
	k.mu.Lock()
	k.cur = cur
	k.mu.Unlock()
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(ttl / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				l, err := st.AcquireLease(context.Background(), lease, holder, ttl, now())
				if err != nil {
					log.Error("renew lock", "lease", lease, "err", err)
				} else if l.Holder != cur.Holder || l.Token != cur.Token {
					// Lost (this process stalled past the lease's time): Held now fails,
					// so the change under way does not become visible.
					log.Error("lock lost to another holder", "lease", lease, "holder", l.Holder, "token", l.Token)
					k.lost(cur)
					return
				}
			}
		}
	}()
	return func() {
		close(done)
		<-stopped
		k.lost(cur)
		rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if l, err := st.AcquireLease(rctx, lease, holder, ttl, now()); err == nil && l.Holder == holder {
			if err := st.ReleaseLease(rctx, l); err != nil {
				log.Warn("release lock", "lease", lease, "err", err)
			}
		}
	}, nil
}

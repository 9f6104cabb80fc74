package attestca

import (
	"context"
	"sync"
	"time"
)

// MemoryChallenges is a ChallengeStore in this process's memory: one server only.
// Safe for concurrent use.
type MemoryChallenges struct {
	mu       sync.Mutex
	pending  map[string]*Challenge // by challenge ID
	byEK     map[string]string     // EK ID and source (ekSource) → their one pending challenge ID
	bySource map[string]int        // source → pending challenges
}

// NewMemoryChallenges returns an empty MemoryChallenges.
func NewMemoryChallenges() *MemoryChallenges {
	return &MemoryChallenges{pending: map[string]*Challenge{}, byEK: map[string]string{}, bySource: map[string]int{}}
}

// AddChallenge implements ChallengeStore.
func (m *MemoryChallenges) AddChallenge(_ context.Context, c Challenge, b Bounds, now time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.admitLocked(now, c.Source, c.EKID, b); err != nil {
		return err
	}
	m.pending[c.ID] = &c
	m.byEK[ekSource(c.EKID, c.Source)] = c.ID
	m.bySource[c.Source]++
	return nil
}

// TakeChallenge implements ChallengeStore.
func (m *MemoryChallenges) TakeChallenge(_ context.Context, id string) (*Challenge, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.removeLocked(id), nil
}

// admitLocked makes room for a new challenge for ekID from source (see
// ChallengeStore.AddChallenge). ErrBusy only when every source holds as much as
// this one.
func (m *MemoryChallenges) admitLocked(now time.Time, source, ekID string, b Bounds) error {
	for k, p := range m.pending {
		if now.After(p.Expires) {
			m.removeLocked(k)
		}
	}
	if id, ok := m.byEK[ekSource(ekID, source)]; ok {
		m.removeLocked(id)
	}
	for m.bySource[source] >= b.MaxPendingPerSource {
		m.removeLocked(m.oldestLocked(source))
	}
	if len(m.pending) < b.MaxPending {
		return nil
	}
	top, n := "", 0
	for s, c := range m.bySource {
		if c > n || (c == n && s < top) {
			top, n = s, c
		}
	}
	if n <= m.bySource[source] {
		return ErrBusy
	}
	m.removeLocked(m.oldestLocked(top))
	return nil
}

// oldestLocked returns the ID of source's challenge that expires first.
func (m *MemoryChallenges) oldestLocked(source string) string {
	id, first := "", time.Time{}
	for k, p := range m.pending {
		if p.Source == source && (id == "" || p.Expires.Before(first)) {
			id, first = k, p.Expires
		}
	}
	return id
}

// removeLocked removes challenge id, if pending, and returns it.
func (m *MemoryChallenges) removeLocked(id string) *Challenge {
	p := m.pending[id]
	if p == nil {
		return nil
	}
	delete(m.pending, id)
	if k := ekSource(p.EKID, p.Source); m.byEK[k] == id {
		delete(m.byEK, k)
	}
	if m.bySource[p.Source]--; m.bySource[p.Source] <= 0 {
		delete(m.bySource, p.Source)
	}
	return p
}

// ekSource keys an EK's pending challenge from one source: a new one from the same source
// replaces it, one from another source does not.
func ekSource(ekID, source string) string { return ekID + "\x00" + source }

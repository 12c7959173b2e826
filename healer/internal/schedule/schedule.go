// Package schedule is how the healer paces its work per replica, shared by the probes
// (external view) and the heartbeat reader (internal view): a Queue of due times (a heap,
// pure, on a fake clock in tests) instead of a ticker per replica; the Scheduler that drives
// one with a single goroutine and timer for every replica however many there are; the Set
// of per-replica workers it fires; a Mailbox that hands results to the engine without ever
// blocking the one who produced them. Also here: the adaptive timeout and the "late" rule
// that both views share.
package schedule

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/dnspulse/dnspulse/healer/internal/ewma"
)

// Scheduler calls fire(key) for every key when it is due: every interval, a boosted key
// more often, or at the time the last fire asked for (see Queue.Requeue).
type Scheduler struct {
	fire func(key string) time.Time

	mu   sync.Mutex
	q    *Queue[string]
	wake chan struct{}
}

// New makes a scheduler; Run drives it. fire must not block: it starts the key's work (in
// its own goroutine if the work waits) and returns when the key is next due, zero for its
// cadence.
func New(interval time.Duration, fire func(key string) time.Time) *Scheduler {
	return &Scheduler{fire: fire, q: NewQueue[string](interval), wake: make(chan struct{}, 1)}
}

// Add schedules key (a no-op when it is scheduled already) at a random phase within one
// interval, so that many replicas' work spreads over the interval.
func (s *Scheduler) Add(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	iv := s.q.Interval()
	if s.q.Add(key, time.Now().Add(time.Duration(rand.Int64N(int64(max(iv, 1)))))) {
		s.poke()
	}
}

// Remove unschedules key.
func (s *Scheduler) Remove(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.q.Remove(key)
}

// Boost runs key factor times as often for d, starting now.
func (s *Scheduler) Boost(key string, factor int, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.q.Boost(key, factor, d, time.Now()) {
		s.poke()
	}
}

// Boosted says whether key is boosted now.
func (s *Scheduler) Boosted(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.q.Boosted(key, time.Now())
}

func (s *Scheduler) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// minPass is the least time between two passes of Run: a key fires up to this late, and
// a thousand keys due at a thousand different times (the heartbeat streams' stall checks,
// one per line) cost at most a thousand wake-ups a second, not one per key.
const minPass = time.Millisecond

// Run fires due keys until ctx ends.
func (s *Scheduler) Run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var due []string
	var next []time.Time
	for {
		now := time.Now()
		s.mu.Lock()
		due = s.q.PopDue(now, due[:0])
		s.mu.Unlock()
		next = next[:0]
		for _, k := range due {
			next = append(next, s.fire(k)) // outside the lock: fire may call Boost
		}
		s.mu.Lock()
		for i, k := range due {
			s.q.Requeue(k, next[i], now)
		}
		wait := time.Hour
		if t, ok := s.q.Next(); ok {
			wait = max(time.Until(t), time.Until(now.Add(minPass)), 0)
		}
		s.mu.Unlock()
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-s.wake:
			timer.Stop()
		}
	}
}

// Timeout is an adaptive timeout: clamp(8 x the average latency, Min, Max), so that a hung
// replica is noticed in tens of milliseconds while a slow network still gets Max.
type Timeout struct {
	Min, Max time.Duration
	avg      ewma.Duration
}

// Observe adds the latency of an answered request.
func (t *Timeout) Observe(d time.Duration) { t.avg.Observe(d) }

// Get is the timeout for the next request.
func (t *Timeout) Get() time.Duration {
	return min(max(8*t.avg.Value(), t.Min), t.Max)
}

// LateSlack is how late a deadline may fire before what timed out is inconclusive.
const LateSlack = 10 * time.Millisecond

// Late says whether a request that timed out after elapsed, with the given timeout, was
// cut off late: the healer itself was not running (an overloaded node, a long GC), so an
// answer may well have been waiting unread. Such a result proves nothing about the replica.
func Late(elapsed, timeout time.Duration) bool { return elapsed > timeout+LateSlack }

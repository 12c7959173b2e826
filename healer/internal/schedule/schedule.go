// Package schedule is the healer's one scheduler of periodic work per replica, shared by
// the probes (external view) and the heartbeat reader (internal view): one goroutine and
// one timer serve every replica, however many there are, through a heap of due times.
// When a replica is due, fire starts its work (it must not block: the work runs in its own
// goroutine) and the replica is due again one interval later; Boost shortens one replica's
// interval for a while. Also here: the adaptive timeout and the "late" rule that both
// views share.
package schedule

import (
	"container/heap"
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/dnspulse/dnspulse/healer/internal/ewma"
)

// Scheduler calls fire(key) for every key every interval (a boosted key more often).
type Scheduler struct {
	interval time.Duration
	fire     func(key string)

	mu    sync.Mutex
	items map[string]*item
	due   dueHeap
	wake  chan struct{}
}

type item struct {
	key        string
	next       time.Time
	index      int
	boostUntil time.Time
	boostEvery time.Duration
}

// New makes a scheduler; Run drives it.
func New(interval time.Duration, fire func(key string)) *Scheduler {
	return &Scheduler{interval: interval, fire: fire, items: map[string]*item{}, wake: make(chan struct{}, 1)}
}

// Add schedules key (a no-op when it is scheduled already) at a random phase within one
// interval, so that many replicas' work spreads over the interval.
func (s *Scheduler) Add(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.items[key]; ok {
		return
	}
	it := &item{key: key, next: time.Now().Add(time.Duration(rand.Int64N(int64(s.interval))))}
	s.items[key] = it
	heap.Push(&s.due, it)
	s.poke()
}

// Remove unschedules key.
func (s *Scheduler) Remove(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if it, ok := s.items[key]; ok {
		heap.Remove(&s.due, it.index)
		delete(s.items, key)
	}
}

// Boost runs key factor times as often for d, starting now.
func (s *Scheduler) Boost(key string, factor int, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	it, ok := s.items[key]
	if !ok || factor <= 1 {
		return
	}
	now := time.Now()
	it.boostUntil = now.Add(d)
	it.boostEvery = max(s.interval/time.Duration(factor), time.Millisecond)
	if next := now.Add(it.boostEvery); next.Before(it.next) {
		it.next = next
		heap.Fix(&s.due, it.index)
		s.poke()
	}
}

func (s *Scheduler) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Run fires due keys until ctx ends.
func (s *Scheduler) Run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var fire []string
	for {
		fire = fire[:0]
		now := time.Now()
		s.mu.Lock()
		for len(s.due) > 0 && !s.due[0].next.After(now) {
			it := s.due[0]
			fire = append(fire, it.key)
			every := s.interval
			if now.Before(it.boostUntil) {
				every = it.boostEvery
			}
			// Steady cadence; but after a stall, resume from now rather than catch up in a burst.
			it.next = it.next.Add(every)
			if it.next.Before(now) {
				it.next = now.Add(every)
			}
			heap.Fix(&s.due, 0)
		}
		wait := time.Hour
		if len(s.due) > 0 {
			wait = s.due[0].next.Sub(now)
		}
		s.mu.Unlock()
		for _, k := range fire {
			s.fire(k)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-s.wake:
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		}
	}
}

type dueHeap []*item

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].next.Before(h[j].next) }
func (h dueHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i]; h[i].index = i; h[j].index = j }
func (h *dueHeap) Push(x any)        { it := x.(*item); it.index = len(*h); *h = append(*h, it) }
func (h *dueHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return it
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

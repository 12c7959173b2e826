package schedule

import (
	"context"
	"sync"
	"time"

	"github.com/dnspulse/dnspulse/healer/internal/replica"
)

// Set keeps one worker per replica and address, and fires each on the schedule: what the
// probes and the heartbeat reader share. A replica whose address changes gets a new
// worker (a new address is a new process); a replica that is gone loses its worker. A
// worker's context ends when it is replaced or removed, or when the Set's does.
type Set[W any] struct {
	sched     *Scheduler
	boost     int
	timeout   Timeout // the bounds every worker's adaptive timeout starts from
	newWorker func(*Worker) W
	fire      func(W) time.Time

	start   sync.Once
	ctx     context.Context
	mu      sync.Mutex
	workers map[string]*entry[W]
}

type entry[W any] struct {
	addr   string
	w      W
	cancel context.CancelFunc
}

// Worker is what every replica's worker has: the replica's name and address, a context
// that ends when the replica is gone or moved, and an adaptive timeout within the Set's
// bounds.
type Worker struct {
	Name, Addr string
	Ctx        context.Context
	Timeout    Timeout
}

// NewSet makes a Set that fires every interval, boost times as often for a boosted
// replica, with adaptive timeouts between minTimeout and maxTimeout; newWorker makes a
// replica's worker around its Worker, fire starts one round of its work (it must not
// block) and returns when the worker is next due, zero for the interval (Queue.Requeue).
func NewSet[W any](interval time.Duration, boost int, minTimeout, maxTimeout time.Duration, newWorker func(*Worker) W, fire func(W) time.Time) *Set[W] {
	if minTimeout <= 0 || minTimeout > maxTimeout {
		minTimeout = maxTimeout
	}
	s := &Set[W]{boost: boost, timeout: Timeout{Min: minTimeout, Max: maxTimeout}, newWorker: newWorker, fire: fire, workers: map[string]*entry[W]{}}
	s.sched = New(interval, s.fireKey)
	return s
}

// Sync makes the workers those of targets, at the address addr picks ("" means none).
// The first call starts the Set, which runs until ctx ends.
func (s *Set[W]) Sync(ctx context.Context, targets []replica.Target, addr func(replica.Target) string) {
	addrs := make(map[string]string, len(targets))
	for _, t := range targets {
		addrs[t.Name] = addr(t)
	}
	s.start.Do(func() {
		s.ctx = ctx
		go s.sched.Run(ctx)
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, e := range s.workers {
		if addr, ok := addrs[name]; !ok || addr != e.addr {
			s.removeLocked(name)
		}
	}
	for name, addr := range addrs {
		if _, ok := s.workers[name]; ok || addr == "" {
			continue
		}
		wctx, cancel := context.WithCancel(s.ctx)
		w := &Worker{Name: name, Addr: addr, Ctx: wctx, Timeout: Timeout{Min: s.timeout.Min, Max: s.timeout.Max}}
		s.workers[name] = &entry[W]{addr: addr, w: s.newWorker(w), cancel: cancel}
		s.sched.Add(name)
	}
}

func (s *Set[W]) removeLocked(name string) {
	s.sched.Remove(name)
	s.workers[name].cancel()
	delete(s.workers, name)
}

// Boost fires one replica more often for d: the engine asks for it when a replica turns
// suspect, so that the evidence for or against a judgment arrives sooner.
func (s *Set[W]) Boost(name string, d time.Duration) { s.sched.Boost(name, s.boost, d) }

// Boosted says whether a replica is boosted now.
func (s *Set[W]) Boosted(name string) bool { return s.sched.Boosted(name) }

func (s *Set[W]) fireKey(name string) time.Time {
	s.mu.Lock()
	e := s.workers[name]
	s.mu.Unlock()
	if e == nil {
		return time.Time{}
	}
	return s.fire(e.w)
}

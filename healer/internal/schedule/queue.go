package schedule

import (
	"time"
)

// Queue holds when each key is next due: a heap of due times, pure (the time is passed in,
// so the cadence, the boost and the catch-up after a stall are tested on a fake clock). A
// key is due every interval, or every interval/factor while boosted; the work done when it
// is due may ask for another time instead (Requeue). Not safe for concurrent use: the
// Scheduler wraps it with a lock and a goroutine; the probes drive one from their own loop.
type Queue[K comparable] struct {
	interval time.Duration
	items    map[K]*qitem[K]
	due      []*qitem[K] // a binary heap by at
	// epoch: times are kept as nanoseconds since the first one seen (monotonic when the
	// times passed in are), which the heap compares cheaply.
	epoch time.Time
}

type qitem[K comparable] struct {
	key K
	// at is when the key is due (since epoch); index its place in the heap, -1 while
	// popped (due, its work running, not yet requeued).
	at         int64
	index      int
	boostUntil time.Time
	boostEvery time.Duration
}

// NewQueue makes a queue whose keys are due every interval.
func NewQueue[K comparable](interval time.Duration) *Queue[K] {
	return &Queue[K]{interval: interval, items: map[K]*qitem[K]{}}
}

func (q *Queue[K]) ns(t time.Time) int64 {
	if q.epoch.IsZero() {
		q.epoch = t
	}
	return int64(t.Sub(q.epoch))
}

func (q *Queue[K]) time(ns int64) time.Time { return q.epoch.Add(time.Duration(ns)) }

// Interval is the cadence of a key that is not boosted.
func (q *Queue[K]) Interval() time.Duration { return q.interval }

// SetInterval changes the cadence; each key keeps its next due time and follows the new
// cadence from then on.
func (q *Queue[K]) SetInterval(d time.Duration) { q.interval = d }

// Len is the number of keys.
func (q *Queue[K]) Len() int { return len(q.items) }

// Has says whether k is in the queue.
func (q *Queue[K]) Has(k K) bool { _, ok := q.items[k]; return ok }

// Add makes k due at first; it reports false (and changes nothing) when k is there already.
func (q *Queue[K]) Add(k K, first time.Time) bool {
	if _, ok := q.items[k]; ok {
		return false
	}
	it := &qitem[K]{key: k, at: q.ns(first)}
	q.items[k] = it
	q.push(it)
	return true
}

// Remove forgets k.
func (q *Queue[K]) Remove(k K) {
	it, ok := q.items[k]
	if !ok {
		return
	}
	if it.index >= 0 {
		q.remove(it.index)
	}
	delete(q.items, k)
}

// Boost makes k due factor times as often for d from now, and, unless it is boosted
// already, due at once: a boost is the engine asking for evidence now (a suspicion), and
// the first boosted probe or poll is what shortens a detection. (A boost renewed while it
// runs only extends it: a flapping suspicion must not buy a replica more than its boosted
// rate.) It reports whether k's next due time moved earlier.
func (q *Queue[K]) Boost(k K, factor int, d time.Duration, now time.Time) bool {
	it, ok := q.items[k]
	if !ok || factor <= 1 {
		return false
	}
	wasBoosted := now.Before(it.boostUntil)
	it.boostUntil = now.Add(d)
	it.boostEvery = max(q.interval/time.Duration(factor), time.Millisecond)
	next := q.ns(now)
	if wasBoosted {
		next = q.ns(now.Add(it.boostEvery))
	}
	if it.index >= 0 && next < it.at {
		it.at = next
		q.fix(it.index)
		return true
	}
	return false
}

// Boosted says whether k is boosted at now.
func (q *Queue[K]) Boosted(k K, now time.Time) bool {
	it, ok := q.items[k]
	return ok && now.Before(it.boostUntil)
}

// Next is the earliest due time, false when no key is queued.
func (q *Queue[K]) Next() (time.Time, bool) {
	if len(q.due) == 0 {
		return time.Time{}, false
	}
	return q.time(q.due[0].at), true
}

// PopDue appends to dst every key due at now and takes them off the heap until Requeue
// puts them back.
func (q *Queue[K]) PopDue(now time.Time, dst []K) []K {
	n := q.ns(now)
	for len(q.due) > 0 && q.due[0].at <= n {
		it := q.due[0]
		q.remove(0)
		dst = append(dst, it.key)
	}
	return dst
}

// Requeue puts back a key PopDue returned. With at zero, it is due again on its cadence:
// one interval (boosted or not) after it was due, or one interval from now if that is
// already past (after a stall the work resumes from now rather than catching up in a
// burst). A key asks for another time with at; a boosted key gets the earlier of the two.
func (q *Queue[K]) Requeue(k K, at, now time.Time) {
	it, ok := q.items[k]
	if !ok || it.index >= 0 {
		return // removed meanwhile, or not popped
	}
	every := q.interval
	boosted := now.Before(it.boostUntil)
	if boosted {
		every = it.boostEvery
	}
	n := q.ns(now)
	next := it.at + int64(every)
	if next < n {
		next = n + int64(every)
	}
	if !at.IsZero() {
		if a := q.ns(at); !boosted || a < next {
			next = a
		}
	}
	it.at = next
	q.push(it)
}

// Due pops every key due at now, calls fn for each (fn returns the time it asks for, or
// zero for the cadence) and requeues it.
func (q *Queue[K]) Due(now time.Time, fn func(K) time.Time) {
	n := q.ns(now)
	for len(q.due) > 0 && q.due[0].at <= n {
		it := q.due[0]
		q.remove(0)
		q.Requeue(it.key, fn(it.key), now)
	}
}

// The heap, by hand: container/heap's interface boxing costs more than the work per key.

func (q *Queue[K]) push(it *qitem[K]) {
	it.index = len(q.due)
	q.due = append(q.due, it)
	q.up(it.index)
}

func (q *Queue[K]) remove(i int) {
	last := len(q.due) - 1
	q.due[i].index = -1
	if i != last {
		q.due[i] = q.due[last]
		q.due[i].index = i
	}
	q.due[last] = nil
	q.due = q.due[:last]
	if i != last {
		q.fix(i)
	}
}

func (q *Queue[K]) fix(i int) {
	if !q.down(i) {
		q.up(i)
	}
}

func (q *Queue[K]) less(i, j int) bool { return q.due[i].at < q.due[j].at }

func (q *Queue[K]) swap(i, j int) {
	q.due[i], q.due[j] = q.due[j], q.due[i]
	q.due[i].index, q.due[j].index = i, j
}

func (q *Queue[K]) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !q.less(i, p) {
			return
		}
		q.swap(i, p)
		i = p
	}
}

func (q *Queue[K]) down(i int) bool {
	start, n := i, len(q.due)
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		c := l
		if r := l + 1; r < n && q.less(r, l) {
			c = r
		}
		if !q.less(c, i) {
			break
		}
		q.swap(i, c)
		i = c
	}
	return i > start
}

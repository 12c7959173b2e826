package pulse

import (
	"sync"
	"sync/atomic"
	"time"
)

// In-flight queries: a query that entered pulse and has not returned is invisible to the
// latency histogram, which only sees completed queries; an upstream black hole would look
// healthy from inside for the forward's whole timeout. So each shard also counts the
// queries in flight by the epoch (8-16 ms, see clock) they entered in, in a ring of
// packed words:
//
//	word = epoch<<countBits | count
//
// Entry adds one to the word of its epoch's slot, exit takes one away from the same slot
// of the same shard (the recorder remembers both), each with one compare-and-swap: no
// lock, no allocation. A slot whose word still carries an older epoch is taken over by
// the first entry of the newer one, which moves the older count, queries that entered
// a whole ring ago and are still running, to the shard's overflow counter; an exit that
// finds its slot taken over takes its one from the overflow. The epoch and the count move
// together in one word, so no exit can take one from a count it was never added to.
//
// The reader sums every slot and the overflow; the oldest non-empty slot's epoch gives the
// age of the oldest query in flight, to one epoch. The overflow has no epoch: its queries
// are known to be at least a ring old, and the tracker reports them as that plus the time
// since the overflow was first seen non-empty.
const (
	inflightSlots = 1024 // a ring of 8-16 s
	countBits     = 24   // 16 M queries in flight per slot and shard: more goroutines than memory allows
	countMask     = 1<<countBits - 1
)

type inflight struct {
	slots    [inflightSlots]atomic.Uint64
	overflow atomic.Int64
}

// enter counts a query that entered in epoch e.
func (f *inflight) enter(e uint64) {
	sl := &f.slots[e%inflightSlots]
	for {
		old := sl.Load()
		tag := old >> countBits
		var next uint64
		switch {
		case tag == e:
			next = old + 1
		case tag < e: // the slot's queries are a ring old, or it is empty
			next = e<<countBits | 1
		default: // this goroutine was descheduled for a whole ring since it read the time
			f.overflow.Add(1)
			return
		}
		if sl.CompareAndSwap(old, next) {
			if n := old & countMask; tag < e && n != 0 {
				f.overflow.Add(int64(n))
			}
			return
		}
	}
}

// exit takes away the query that entered in epoch e.
func (f *inflight) exit(e uint64) {
	sl := &f.slots[e%inflightSlots]
	for {
		old := sl.Load()
		if old>>countBits != e { // taken over: our one was moved to the overflow
			f.overflow.Add(-1)
			return
		}
		if sl.CompareAndSwap(old, old-1) {
			return
		}
	}
}

// inflightSum is the in-flight state summed over shards.
type inflightSum struct {
	count    uint64 // in the ring
	oldest   uint64 // the oldest epoch with a query in the ring; valid when count > 0
	overflow int64  // queries older than the ring (briefly negative while a move is half done)
}

func (f *inflight) addTo(s *inflightSum) {
	for i := range f.slots {
		v := f.slots[i].Load()
		n := v & countMask
		if n == 0 {
			continue
		}
		if e := v >> countBits; s.count == 0 || e < s.oldest {
			s.oldest = e
		}
		s.count += n
	}
	s.overflow += f.overflow.Load()
}

// inflightTracker turns the summed state into the heartbeat's count and oldest age; it
// remembers since when the overflow has been non-empty, the only state a read keeps.
type inflightTracker struct {
	mu            sync.Mutex
	overflowSince time.Duration // store time the overflow was first seen non-empty; -1 when empty
}

func newInflightTracker() *inflightTracker { return &inflightTracker{overflowSince: -1} }

// report returns the queries in flight and the age of the oldest one at nowTicks.
func (t *inflightTracker) report(c *clock, s inflightSum, nowTicks int64) (count uint64, oldest time.Duration) {
	now := c.since(nowTicks)
	t.mu.Lock()
	defer t.mu.Unlock()
	count = s.count
	if s.overflow > 0 {
		count += uint64(s.overflow)
		if t.overflowSince < 0 {
			t.overflowSince = now
		}
		// At least a ring (less the current epoch) old when they got there, and older by
		// every read since: a lower bound.
		oldest = time.Duration(inflightSlots-1)*c.epochWidth() + now - t.overflowSince
	} else {
		t.overflowSince = -1
	}
	if s.count > 0 {
		oldest = max(oldest, c.elapsed(c.epochStart(s.oldest), nowTicks))
	}
	if count == 0 {
		oldest = 0
	}
	return count, oldest
}

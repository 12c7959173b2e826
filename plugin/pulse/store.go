package pulse

import (
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// The store keeps client traffic in rotating time slots, one ring per shard (one shard
// per P, so cores never write the same cache line). Two rings: fine slots for the 1 s
// window, coarse slots for the 10 s and 60 s windows; every query is added to both.
// Windows are summed from the slots only when the heartbeat is read.
const (
	fineWidth   = 100 * time.Millisecond
	fineSlots   = 16 // 10 in the 1 s window + slots prepared ahead + slack
	coarseWidth = time.Second
	coarseSlots = 64 // 60 in the 60 s window + slots prepared ahead + slack

	// prepareAhead slots beyond the current one are zeroed in advance by the janitor, so
	// the hot path never has to reset a slot (which would race with other writers).
	prepareAhead = 3
)

// Outcome kinds beyond the rcodes: rcodes 0..maxRcodeIndex-1 count as themselves.
const (
	maxRcodeIndex = 31 // rcodes 0..30 are counted by value (miekg/dns names go to 23)
	kindOther     = 31 // any larger (extended) rcode
	kindDropped   = 32 // the chain wrote nothing and the server writes nothing either
	kindCount     = 33
)

// sourceBuckets is the size of the sketch of SERVFAIL client prefixes: a hashed count
// table, so memory is fixed; collisions can only lower the entropy it reports.
const sourceBuckets = 32

// slot is one time slot of one shard. uint32 counters are plenty for a slot (a second
// of one core's traffic) and halve the cache footprint.
type slot struct {
	epoch   atomic.Int64 // absolute slot index this slot was zeroed for
	max     atomic.Uint32
	kinds   [kindCount]atomic.Uint32
	latency [latencyCount]atomic.Uint32
	sources [sourceBuckets]atomic.Uint32
}

type shard struct {
	fine   [fineSlots]slot
	coarse [coarseSlots]slot
	_      [64]byte // keep the next shard's first slot off our last cache line
}

type store struct {
	shards []shard
}

func newStore(nshards int) *store {
	s := &store{shards: make([]shard, max(nshards, 1))}
	for i := range s.shards {
		for j := range s.shards[i].fine {
			s.shards[i].fine[j].epoch.Store(-1)
		}
		for j := range s.shards[i].coarse {
			s.shards[i].coarse[j].epoch.Store(-1)
		}
	}
	return s
}

// record adds one query. now is monotonic time since the store's base, latency the time
// from query to reply, kind an rcode or kindDropped/kindOther, source the hash of the
// client prefix (used only for SERVFAIL). No allocation, no lock: a handful of
// uncontended atomic adds on the caller's shard.
func (s *store) record(shardIdx int, now, latency time.Duration, kind int, source uint32) {
	sh := &s.shards[uint(shardIdx)%uint(len(s.shards))]
	us := uint64(latency / time.Microsecond)
	b := bucketOf(us)
	us32 := uint32(min(us, maxMicros))
	for _, sl := range [2]*slot{
		&sh.fine[uint64(now/fineWidth)%fineSlots],
		&sh.coarse[uint64(now/coarseWidth)%coarseSlots],
	} {
		sl.kinds[kind].Add(1)
		sl.latency[b].Add(1)
		if kind == dns.RcodeServerFailure {
			sl.sources[source%sourceBuckets].Add(1)
		}
		for m := sl.max.Load(); us32 > m && !sl.max.CompareAndSwap(m, us32); m = sl.max.Load() {
		}
	}
}

// prepare zeroes the slots that will become current after now, so writers always find
// them clean. Called by the janitor well within prepareAhead fine slots.
func (s *store) prepare(now time.Duration) {
	fine, coarse := int64(now/fineWidth), int64(now/coarseWidth)
	for i := range s.shards {
		sh := &s.shards[i]
		for k := int64(0); k <= prepareAhead; k++ { // k=0: the current slot, if it was never prepared
			sh.fine[(fine+k)%fineSlots].reset(fine + k)
			sh.coarse[(coarse+k)%coarseSlots].reset(coarse + k)
		}
	}
}

func (sl *slot) reset(epoch int64) {
	if sl.epoch.Load() == epoch {
		return
	}
	sl.max.Store(0)
	for i := range sl.kinds {
		sl.kinds[i].Store(0)
	}
	for i := range sl.latency {
		sl.latency[i].Store(0)
	}
	for i := range sl.sources {
		sl.sources[i].Store(0)
	}
	sl.epoch.Store(epoch)
}

// counts is a window's sum over slots and shards.
type counts struct {
	kinds   [kindCount]uint64
	latency [latencyCount]uint64
	sources [sourceBuckets]uint64
	max     uint64
}

// window sums the last span of traffic ending at now: the current slot and the ones
// before it, span/width slots in all. A slot whose epoch is not the one expected (it was
// never prepared, e.g. the janitor stalled) is left out rather than counted wrong.
func (s *store) window(now, span time.Duration) *counts {
	width, n := fineWidth, int64(fineSlots)
	pick := func(sh *shard, i int64) *slot { return &sh.fine[i%n] }
	if span > time.Second {
		width, n = coarseWidth, coarseSlots
		pick = func(sh *shard, i int64) *slot { return &sh.coarse[i%n] }
	}
	cur := int64(now / width)
	slots := int64(span / width)
	c := &counts{}
	for i := range s.shards {
		sh := &s.shards[i]
		for idx := cur - slots + 1; idx <= cur; idx++ {
			if idx < 0 {
				continue
			}
			sl := pick(sh, idx)
			if sl.epoch.Load() != idx {
				continue
			}
			for k := range sl.kinds {
				c.kinds[k] += uint64(sl.kinds[k].Load())
			}
			for k := range sl.latency {
				c.latency[k] += uint64(sl.latency[k].Load())
			}
			for k := range sl.sources {
				c.sources[k] += uint64(sl.sources[k].Load())
			}
			c.max = max(c.max, uint64(sl.max.Load()))
		}
	}
	return c
}

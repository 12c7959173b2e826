package pulse

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// The store counts client traffic in cumulative counters, one set per shard (one shard
// per P, so cores never write the same cache line), that only ever grow: the hot path
// resets nothing, so no count depends on the janitor being on time. The janitor
// snapshots the sum over the shards into two small rings, every 100 ms into a fine one and
// every second into a coarse one; a window is the live sum minus the snapshot taken at
// its start. Should the janitor stall, the newest snapshot old enough is older, and the
// window covers more time: it never loses a query.
//
// The largest latency is the one value that cannot be a difference of sums: each shard
// keeps the largest since the last fine snapshot, which the janitor takes with a Swap and
// files with the snapshot as the largest of the interval that ends there.
const (
	fineWidth   = 100 * time.Millisecond
	fineSlots   = 16 // 1.5 s of snapshots: the 1 s window and slack
	coarseWidth = time.Second
	coarseSlots = 64 // 63 s: the 60 s window and slack
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

// shard is what the queries on one P write: counters that only grow, the largest
// latency since the last snapshot, and the queries in flight.
type shard struct {
	kinds     [kindCount]atomic.Uint64
	latency   [latencyCount]atomic.Uint64
	sources   [sourceBuckets]atomic.Uint64
	max       atomic.Uint64 // µs, since the last fine snapshot
	inflight  inflight
	recorders slabs
	_         [64]byte // keep the next shard's first counters off our last cache line
}

// counts is a sum over shards: cumulative in a snapshot, a difference in a window.
type counts struct {
	kinds   [kindCount]uint64
	latency [latencyCount]uint64
	sources [sourceBuckets]uint64
	max     uint64
}

// snapshot is the cumulative sum over shards at store time at.
type snapshot struct {
	at   time.Duration
	slot int64 // at / the ring's width: one snapshot per slot
	sum  counts
	max  uint64 // largest latency recorded since the ring's previous snapshot
}

// ring holds the last snapshots, one per slot of width.
type ring struct {
	width time.Duration
	snaps []snapshot
	n     int // snapshots ever pushed; the newest is snaps[(n-1)%len(snaps)]
}

func (r *ring) newest() *snapshot {
	if r.n == 0 {
		return nil
	}
	return &r.snaps[(r.n-1)%len(r.snaps)]
}

func (r *ring) push(s *snapshot) { r.snaps[r.n%len(r.snaps)] = *s; r.n++ }

// base returns the newest snapshot taken at or before t, and the largest latency of the
// intervals after it (the window's). Nil when none is that old: the store is younger than
// the window (the first snapshot is at 0), so the window starts at zero; should the ring
// not reach back that far, the oldest snapshot is the best there is.
func (r *ring) base(t time.Duration) (b *snapshot, newerMax uint64) {
	kept := min(r.n, len(r.snaps))
	for k := 1; k <= kept; k++ {
		s := &r.snaps[(r.n-k)%len(r.snaps)]
		if s.at <= t || (k == kept && r.n > len(r.snaps)) {
			return s, newerMax
		}
		newerMax = max(newerMax, s.max)
	}
	return nil, newerMax
}

type store struct {
	shards []shard

	// mu orders the janitor's snapshots and the heartbeat's reads; the hot path never
	// takes it.
	mu        sync.Mutex
	fine      ring
	coarse    ring
	coarseMax uint64 // largest latency in the fine intervals since the last coarse snapshot
}

func newStore(nshards int) *store {
	return &store{
		shards: make([]shard, min(max(nshards, 1), maxShards)),
		fine:   ring{width: fineWidth, snaps: make([]snapshot, fineSlots)},
		coarse: ring{width: coarseWidth, snaps: make([]snapshot, coarseSlots)},
	}
}

// shardFor maps a P's index to a shard: the same unless GOMAXPROCS grew after the store
// was made (no division on the hot path otherwise).
func (s *store) shardFor(p int) int {
	if uint(p) < uint(len(s.shards)) {
		return p
	}
	return p % len(s.shards)
}

// record adds one query of the given latency and kind (an rcode or kindDropped/kindOther);
// source is the hash of the client prefix, used only for SERVFAIL. No allocation, no lock:
// three or four uncontended atomic adds on the caller's shard.
func (s *store) record(shardIdx int, latency time.Duration, kind int, source uint32) {
	sh := &s.shards[s.shardFor(shardIdx)]
	us := min(uint64(latency/time.Microsecond), maxMicros)
	sh.kinds[kind].Add(1)
	sh.latency[bucketOf(us)].Add(1)
	if kind == dns.RcodeServerFailure {
		sh.sources[source%sourceBuckets].Add(1)
	}
	for m := sh.max.Load(); us > m && !sh.max.CompareAndSwap(m, us); m = sh.max.Load() {
	}
}

// snapshot is the janitor's work, called more often than every fineWidth: a fine snapshot
// when a new fine slot has begun since the last one, a coarse one when a new second has.
func (s *store) snapshot(now time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	slot := int64(now / fineWidth)
	if last := s.fine.newest(); last != nil && slot <= last.slot {
		return
	}
	snap := snapshot{at: now, slot: slot}
	s.sumLive(&snap.sum)
	for i := range s.shards {
		snap.max = max(snap.max, s.shards[i].max.Swap(0))
	}
	s.fine.push(&snap)
	s.coarseMax = max(s.coarseMax, snap.max)
	if last := s.coarse.newest(); last == nil || int64(now/coarseWidth) > last.slot {
		snap.slot, snap.max = int64(now/coarseWidth), s.coarseMax
		s.coarse.push(&snap)
		s.coarseMax = 0
	}
}

// sumLive adds the live counters of every shard into c (not the maxima).
func (s *store) sumLive(c *counts) {
	for i := range s.shards {
		sh := &s.shards[i]
		for k := range sh.kinds {
			c.kinds[k] += sh.kinds[k].Load()
		}
		for k := range sh.latency {
			c.latency[k] += sh.latency[k].Load()
		}
		for k := range sh.sources {
			c.sources[k] += sh.sources[k].Load()
		}
	}
}

// window sums the traffic of the last span ending at now: the live counters minus the
// newest snapshot taken by now-span+width/2, so a window lasts span give or take half a
// snapshot interval while the janitor keeps time, and longer when it did not.
func (s *store) window(now, span time.Duration) *counts {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, c := &s.fine, &counts{}
	if span+fineWidth > time.Duration(fineSlots-1)*fineWidth {
		r, c.max = &s.coarse, s.coarseMax
	}
	s.sumLive(c)
	for i := range s.shards {
		c.max = max(c.max, s.shards[i].max.Load())
	}
	b, newerMax := r.base(now - span + r.width/2)
	c.max = max(c.max, newerMax)
	if b == nil {
		return c
	}
	// Counters only grow and b was read before them: no difference is negative.
	for k := range c.kinds {
		c.kinds[k] -= b.sum.kinds[k]
	}
	for k := range c.latency {
		c.latency[k] -= b.sum.latency[k]
	}
	for k := range c.sources {
		c.sources[k] -= b.sum.sources[k]
	}
	return c
}

// inflight sums the queries in flight over the shards.
func (s *store) inflight() inflightSum {
	var sum inflightSum
	for i := range s.shards {
		s.shards[i].inflight.addTo(&sum)
	}
	return sum
}

package pulse

import (
	"math"
	"sync/atomic"
	"time"
)

// clock turns ticks() into durations since its creation. The rate is measured against
// the runtime's monotonic clock: briefly when the clock is made, then again by the
// janitor over an ever longer baseline, so it is accurate to a few ppm after seconds and
// follows a virtual machine that migrates to a host with another TSC rate.
type clock struct {
	baseTicks int64
	baseNanos int64
	nsPerTick atomic.Uint64 // float64 bits
	// epochShift makes an epoch, 2^epochShift ticks: 8 to 16 ms whatever the counter's
	// rate. Epochs are what in-flight queries are grouped by; an integer shift of the
	// entry tick, so the query's exit finds the same epoch however the rate is recalibrated
	// meanwhile.
	epochShift uint
}

// minEpoch is the shortest an epoch may be; the shift picks the first power of two of
// ticks at least this long.
const minEpoch = 8 * time.Millisecond

func newClock() *clock {
	c := &clock{baseTicks: ticks(), baseNanos: nanotime()}
	c.nsPerTick.Store(math.Float64bits(1))
	for nanotime()-c.baseNanos < int64(time.Millisecond) {
	}
	c.calibrate()
	ns := math.Float64frombits(c.nsPerTick.Load())
	for float64(uint64(1)<<c.epochShift)*ns < float64(minEpoch) && c.epochShift < 62 {
		c.epochShift++
	}
	return c
}

// epochOf is the epoch of tick count t (0 for counts before the clock's creation).
func (c *clock) epochOf(t int64) uint64 {
	if t <= c.baseTicks {
		return 0
	}
	return uint64(t-c.baseTicks) >> c.epochShift
}

// epochStart is the tick count at which epoch e began.
func (c *clock) epochStart(e uint64) int64 { return c.baseTicks + int64(e<<c.epochShift) }

// epochWidth is the length of one epoch at the current rate.
func (c *clock) epochWidth() time.Duration { return c.elapsed(0, int64(1)<<c.epochShift) }

// since returns the time from the clock's creation to the tick count t. Counters that
// disagree across cores could make it go back a little; callers clamp where it matters.
func (c *clock) since(t int64) time.Duration {
	return time.Duration(float64(t-c.baseTicks) * math.Float64frombits(c.nsPerTick.Load()))
}

// elapsed converts a tick interval to a duration, never negative.
func (c *clock) elapsed(start, end int64) time.Duration {
	if end <= start {
		return 0
	}
	return time.Duration(float64(end-start) * math.Float64frombits(c.nsPerTick.Load()))
}

func (c *clock) now() time.Duration { return c.since(ticks()) }

// calibrate measures the rate over everything since the clock was made.
func (c *clock) calibrate() {
	dt, dn := ticks()-c.baseTicks, nanotime()-c.baseNanos
	if dt <= 0 || dn <= 0 {
		return
	}
	c.nsPerTick.Store(math.Float64bits(float64(dn) / float64(dt)))
}

// Package ewma is the one latency average of the healer: the probes' and the heartbeat
// reader's adaptive timeouts and the detector's own-baseline hint all use it.
package ewma

import (
	"sync/atomic"
	"time"
)

// Duration is an exponentially weighted moving average of durations with weight 1/16: a
// few slow samples barely move it, a lasting change does. Safe for concurrent use; the
// zero value is empty.
type Duration struct{ v atomic.Int64 }

// Observe adds one sample; the first sample is the average.
func (e *Duration) Observe(d time.Duration) {
	for {
		old := e.v.Load()
		next := int64(d)
		if old != 0 {
			next = old + (int64(d)-old)/16
		}
		if e.v.CompareAndSwap(old, next) {
			return
		}
	}
}

// Value is the average, 0 before the first sample.
func (e *Duration) Value() time.Duration { return time.Duration(e.v.Load()) }

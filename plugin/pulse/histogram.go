package pulse

import "math/bits"

// Latency is recorded in microseconds into a fixed log-linear histogram: values below
// 2^subBits are exact, above that every power of two is split into 2^subBits linear
// buckets, so a bucket is at most 1/16 (6.25%) wide relative to its values. Finding the
// bucket is a few instructions (bits.Len64) with no table, no lock and no allocation.
const (
	subBits      = 4
	subCount     = 1 << subBits
	maxExp       = 27                                // values are clamped below 2^27 µs (134 s)
	latencyCount = (maxExp - subBits + 1) * subCount // 384 buckets
	maxMicros    = 1<<maxExp - 1
)

// bucketOf returns the histogram bucket of a latency in microseconds.
func bucketOf(us uint64) int {
	if us < subCount {
		return int(us)
	}
	if us > maxMicros {
		us = maxMicros
	}
	exp := bits.Len64(us) - 1 // >= subBits
	sub := (us >> (exp - subBits)) & (subCount - 1)
	return (exp-subBits+1)*subCount + int(sub)
}

// bucketBounds returns the smallest and largest microsecond value of bucket b.
func bucketBounds(b int) (lo, hi uint64) {
	if b < subCount {
		return uint64(b), uint64(b)
	}
	exp := b/subCount + subBits - 1
	sub := uint64(b % subCount)
	width := uint64(1) << (exp - subBits)
	lo = (uint64(1) << exp) + sub*width
	return lo, lo + width - 1
}

// quantile returns the q-quantile (0<q<=1) of the histogram counts: the upper bound of
// the bucket that holds the ceil(q*n)-th smallest value, never above maxSeen.
func quantile(counts *[latencyCount]uint64, n uint64, q float64, maxSeen uint64) uint64 {
	if n == 0 {
		return 0
	}
	rank := uint64(q*float64(n) + 0.999999999)
	if rank < 1 {
		rank = 1
	}
	if rank > n {
		rank = n
	}
	var seen uint64
	for b := range counts {
		seen += counts[b]
		if seen >= rank {
			_, hi := bucketBounds(b)
			return min(hi, maxSeen)
		}
	}
	return maxSeen
}

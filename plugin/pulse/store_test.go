package pulse

import (
	"math"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestBucketOf(t *testing.T) {
	prevHi := uint64(0)
	for b := range latencyCount {
		lo, hi := bucketBounds(b)
		if b > 0 && lo != prevHi+1 {
			t.Fatalf("bucket %d starts at %d, previous ended at %d: gap or overlap", b, lo, prevHi)
		}
		if bucketOf(lo) != b || bucketOf(hi) != b {
			t.Fatalf("bucket %d [%d,%d]: bucketOf(lo)=%d bucketOf(hi)=%d", b, lo, hi, bucketOf(lo), bucketOf(hi))
		}
		if lo >= subCount && float64(hi-lo+1)/float64(lo) > 1.0/subCount+1e-9 {
			t.Fatalf("bucket %d [%d,%d] wider than 1/%d of its values", b, lo, hi, subCount)
		}
		prevHi = hi
	}
	if prevHi != maxMicros {
		t.Fatalf("last bucket ends at %d, want %d", prevHi, uint64(maxMicros))
	}
	if bucketOf(math.MaxUint64) != latencyCount-1 {
		t.Fatal("huge values must clamp into the last bucket")
	}
}

func TestQuantilesHandComputed(t *testing.T) {
	s := newStore(1)
	s.snapshot(0)
	for us := 1; us <= 100; us++ { // one query at each of 1..100 µs
		s.record(0, time.Duration(us)*time.Microsecond, dns.RcodeSuccess, 0)
	}
	w := summarize(s.window(0, time.Second))
	// 50 µs lies in bucket [50,51], 90 in [88,91], 99 in [96,99] (16 buckets per octave).
	if got := w.LatencyMicros; got.P50 != 51 || got.P90 != 91 || got.P99 != 99 || got.Max != 100 {
		t.Fatalf("latency %+v, want p50 51 p90 91 p99 99 max 100", got)
	}
	// Small values are exact.
	s = newStore(1)
	s.snapshot(0)
	for _, us := range []int{3, 3, 3, 7} {
		s.record(0, time.Duration(us)*time.Microsecond, dns.RcodeSuccess, 0)
	}
	if got := summarize(s.window(0, time.Second)).LatencyMicros; got.P50 != 3 || got.P99 != 7 || got.Max != 7 {
		t.Fatalf("latency %+v, want p50 3 p99 7 max 7", got)
	}
}

func TestEntropyAndRatiosHandComputed(t *testing.T) {
	s := newStore(2)
	s.snapshot(0)
	mix := map[int]int{dns.RcodeSuccess: 6, dns.RcodeNameError: 2, dns.RcodeServerFailure: 1, dns.RcodeRefused: 1}
	for kind, n := range mix {
		for i := range n {
			s.record(i, time.Millisecond, kind, 7)
		}
	}
	w := summarize(s.window(0, time.Second))
	// -(0.6 log2 0.6 + 0.2 log2 0.2 + 2 * 0.1 log2 0.1)
	want := -(0.6*math.Log2(0.6) + 0.2*math.Log2(0.2) + 2*0.1*math.Log2(0.1))
	if math.Abs(w.RcodeEntropy-want) > 1e-12 || math.Abs(want-1.5709505944546684) > 1e-12 {
		t.Fatalf("rcode entropy %v, want %v", w.RcodeEntropy, want)
	}
	if w.Queries != 10 || w.NXDomainRatio != 0.2 || w.ServfailRatio != 0.1 {
		t.Fatalf("queries %d nx %v sf %v", w.Queries, w.NXDomainRatio, w.ServfailRatio)
	}
	if w.Rcodes["NOERROR"] != 6 || w.Rcodes["NXDOMAIN"] != 2 || w.Rcodes["SERVFAIL"] != 1 || w.Rcodes["REFUSED"] != 1 || len(w.Rcodes) != 4 {
		t.Fatalf("rcodes %v", w.Rcodes)
	}
	if w.ServfailSourceEntropy != 0 {
		t.Fatalf("one source: entropy %v, want 0", w.ServfailSourceEntropy)
	}
}

func TestServfailSourceEntropy(t *testing.T) {
	s := newStore(1)
	s.snapshot(0)
	// Four clients in distinct /24s, two SERVFAILs each: 2 bits, unless the sketch collides.
	hashes := map[uint32]bool{}
	for i := range 4 {
		h := sourceHash(&net.UDPAddr{IP: net.IPv4(198, 18, byte(i), 9)})
		hashes[h%sourceBuckets] = true
		s.record(0, time.Millisecond, dns.RcodeServerFailure, h)
		s.record(0, time.Millisecond, dns.RcodeServerFailure, h)
	}
	if len(hashes) != 4 {
		t.Skip("test prefixes collide in the sketch; pick others")
	}
	if got := summarize(s.window(0, time.Second)).ServfailSourceEntropy; math.Abs(got-2) > 1e-12 {
		t.Fatalf("entropy %v, want 2", got)
	}
	// Same /24 is one source; same /56 too.
	a := sourceHash(&net.UDPAddr{IP: net.IPv4(198, 18, 3, 1)})
	b := sourceHash(&net.TCPAddr{IP: net.IPv4(198, 18, 3, 200)})
	c := sourceHash(&net.UDPAddr{IP: net.ParseIP("2001:db8:0:1:ff::1")})
	d := sourceHash(&net.UDPAddr{IP: net.ParseIP("2001:db8:0:1:aa::2")})
	if a != b || c != d || a == c {
		t.Fatalf("prefix hashing: %x %x %x %x", a, b, c, d)
	}
}

func TestWindowRotation(t *testing.T) {
	s := newStore(1)
	// One query per 100 ms for 70 s (at 0, 0.1, ...), the janitor snapshotting 50 ms
	// after each (as it would, at half the fine interval, the first of each slot taken).
	for ms := 0; ms < 70_000; ms += 100 {
		s.record(0, time.Millisecond, dns.RcodeSuccess, 0)
		s.snapshot(time.Duration(ms+50) * time.Millisecond)
	}
	now := 69_990 * time.Millisecond
	// The 1 s window starts at the newest snapshot taken by now-1s+50ms (68.95 s): the
	// queries at 69.0 ... 69.9 s.
	if n := summarize(s.window(now, time.Second)).Queries; n != 10 {
		t.Errorf("1s window: %d queries, want 10", n)
	}
	// Coarse snapshots were taken at 0.05, 1.05, ... s; the 10 s window starts at the newest
	// by now-10s+0.5s (60.05 s): the queries at 60.1 ... 69.9 s.
	if n := summarize(s.window(now, 10*time.Second)).Queries; n != 99 {
		t.Errorf("10s window: %d queries, want 99", n)
	}
	if n := summarize(s.window(now, 60*time.Second)).Queries; n != 599 {
		t.Errorf("60s window: %d queries, want 599 (from the snapshot at 10.05 s)", n)
	}
	// Five quiet seconds later the 1s window is empty and the 10s window holds five seconds.
	later := now + 5*time.Second
	for at := now; at <= later; at += 50 * time.Millisecond {
		s.snapshot(at)
	}
	if n := summarize(s.window(later, time.Second)).Queries; n != 0 {
		t.Errorf("1s window after silence: %d, want 0", n)
	}
	if n := summarize(s.window(later, 10*time.Second)).Queries; n != 49 {
		t.Errorf("10s window after 5s silence: %d, want 49 (from the snapshot at 65.05 s)", n)
	}
}

// TestStalledJanitorKeepsCounts is the starved process: 50 queries over 13 s while
// the janitor did not run. The slot ring this store replaced showed 0 queries in every
// window then, and zeroed the counts when the janitor woke up.
func TestStalledJanitorKeepsCounts(t *testing.T) {
	s := newStore(1)
	s.snapshot(0)
	for range 50 {
		s.record(0, time.Millisecond, dns.RcodeSuccess, 0)
	}
	now := 13 * time.Second
	// No snapshot since 0: every window reaches back to it and holds all 50.
	for _, span := range []time.Duration{time.Second, 10 * time.Second, 60 * time.Second} {
		if n := summarize(s.window(now, span)).Queries; n != 50 {
			t.Errorf("%v window while the janitor is stalled: %d queries, want 50", span, n)
		}
	}
	s.snapshot(now) // the janitor wakes up
	if n := summarize(s.window(now, 10*time.Second)).Queries; n != 50 {
		t.Errorf("10s window once the janitor ran: %d, want 50", n)
	}
	// The snapshot at 13 s is too new to start even the 1 s window: that still starts at 0,
	// where the last snapshot before the stall was, so no query of the last second is lost.
	if n := summarize(s.window(now, time.Second)).Queries; n != 50 {
		t.Errorf("1s window once the janitor ran: %d, want 50", n)
	}
	// Back on time: the queries stay in the 60 s window and leave the 10 s one.
	for at := now; at <= now+11*time.Second; at += 50 * time.Millisecond {
		s.snapshot(at)
	}
	if n := summarize(s.window(now+11*time.Second, time.Second)).Queries; n != 0 {
		t.Errorf("1s window 11 s later: %d, want 0", n)
	}
	if n := summarize(s.window(now+11*time.Second, 10*time.Second)).Queries; n != 0 {
		t.Errorf("10s window 11 s later: %d, want 0", n)
	}
	if n := summarize(s.window(now+11*time.Second, 60*time.Second)).Queries; n != 50 {
		t.Errorf("60s window 11 s later: %d, want 50", n)
	}
}

func TestWindowMaxFollowsTheWindow(t *testing.T) {
	s := newStore(2)
	s.snapshot(0)
	s.record(1, 900*time.Millisecond, dns.RcodeSuccess, 0) // at ~0 s
	at := time.Duration(0)
	step := func(to time.Duration) {
		for ; at <= to; at += 50 * time.Millisecond {
			s.snapshot(at)
			s.record(0, time.Millisecond, dns.RcodeSuccess, 0)
		}
	}
	step(500 * time.Millisecond)
	if m := s.window(at, time.Second).max; m != 900_000 {
		t.Fatalf("1s window max %d µs at %v, want 900000", m, at)
	}
	step(3 * time.Second)
	if m := s.window(at, time.Second).max; m != 1000 {
		t.Fatalf("1s window max %d µs at %v, want 1000: the slow query has left it", m, at)
	}
	if m := s.window(at, 10*time.Second).max; m != 900_000 {
		t.Fatalf("10s window max %d µs at %v, want 900000", m, at)
	}
	step(12 * time.Second)
	if m := s.window(at, 10*time.Second).max; m != 1000 {
		t.Fatalf("10s window max %d µs at %v, want 1000", m, at)
	}
	if m := s.window(at, 60*time.Second).max; m != 900_000 {
		t.Fatalf("60s window max %d µs at %v, want 900000", m, at)
	}
}

func TestConcurrentRecordAndRead(t *testing.T) {
	s := newStore(4)
	s.snapshot(0) // as newHub does before any query
	var wg sync.WaitGroup
	const writers, per = 8, 5000
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // reader and janitor, as in production
		defer close(done)
		for at := time.Duration(0); ; at += 10 * time.Millisecond {
			select {
			case <-stop:
				return
			default:
				s.snapshot(at)
				_ = summarize(s.window(at, 10*time.Second))
			}
		}
	}()
	for w := range writers {
		wg.Go(func() {
			for i := range per {
				s.record(w+i, time.Duration(i%500)*time.Microsecond, i%4, uint32(i))
			}
		})
	}
	wg.Wait()
	close(stop)
	<-done
	var total counts
	s.sumLive(&total)
	var n uint64
	for _, k := range total.kinds {
		n += k
	}
	if n != writers*per {
		t.Fatalf("%d queries recorded, want %d", n, writers*per)
	}
}

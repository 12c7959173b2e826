package pulse

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

func sumOf(f *inflight) inflightSum {
	var s inflightSum
	f.addTo(&s)
	return s
}

func TestInflightEnterExit(t *testing.T) {
	var f inflight
	f.enter(7)
	f.enter(7)
	f.enter(9)
	if s := sumOf(&f); s.count != 3 || s.oldest != 7 || s.overflow != 0 {
		t.Fatalf("sum %+v, want 3 in flight, oldest epoch 7", s)
	}
	f.exit(7)
	f.exit(7)
	if s := sumOf(&f); s.count != 1 || s.oldest != 9 {
		t.Fatalf("sum %+v, want 1 in flight, oldest epoch 9", s)
	}
	f.exit(9)
	if s := sumOf(&f); s.count != 0 || s.overflow != 0 {
		t.Fatalf("sum %+v, want none", s)
	}
}

// A query still in flight a whole ring later is moved to the overflow by the first entry
// that needs its slot; its exit then comes out of the overflow, not the newer count.
func TestInflightTakeoverMovesOldQueriesToOverflow(t *testing.T) {
	var f inflight
	f.enter(5)
	f.enter(5)
	f.enter(5 + inflightSlots) // same slot, a ring later
	s := sumOf(&f)
	if s.count != 1 || s.oldest != 5+inflightSlots || s.overflow != 2 {
		t.Fatalf("after takeover %+v, want 1 in the ring (epoch %d) and 2 in the overflow", s, 5+inflightSlots)
	}
	f.exit(5)
	if s := sumOf(&f); s.count != 1 || s.overflow != 1 {
		t.Fatalf("after an old exit %+v: the ring's newer query must be untouched", s)
	}
	// An entry whose epoch is a ring behind the slot's (its goroutine was descheduled that
	// long) is counted in the overflow, and so is its exit.
	f.enter(5)
	if s := sumOf(&f); s.count != 1 || s.overflow != 2 {
		t.Fatalf("late entry %+v", s)
	}
	f.exit(5)
	f.exit(5)
	f.exit(5 + inflightSlots)
	if s := sumOf(&f); s.count != 0 || s.overflow != 0 {
		t.Fatalf("all exited: %+v", s)
	}
}

func TestInflightTrackerReportsOverflowAsAtLeastARingOld(t *testing.T) {
	c := newClock()
	tr := newInflightTracker()
	now := ticks()
	ring := time.Duration(inflightSlots-1) * c.epochWidth()
	n, age := tr.report(c, inflightSum{overflow: 2}, now)
	if n != 2 || age < ring {
		t.Fatalf("overflow of 2: count %d oldest %v; want 2 and at least %v", n, age, ring)
	}
	later := now + 10*(int64(1)<<c.epochShift)
	if _, age2 := tr.report(c, inflightSum{overflow: 2}, later); age2 <= age {
		t.Fatalf("the overflow's age must grow between reads: %v then %v", age, age2)
	}
	if n, age := tr.report(c, inflightSum{}, later); n != 0 || age != 0 {
		t.Fatalf("empty: %d, %v", n, age)
	}
	// A half-done move can leave the overflow at -1 for an instant: never a huge count.
	if n, _ := tr.report(c, inflightSum{overflow: -1}, later); n != 0 {
		t.Fatalf("negative overflow reported as %d", n)
	}
}

// TestInflightConcurrentBalances: entries and exits from many goroutines over epochs that
// wrap the ring several times, with a reader running, always come back to zero. -race.
func TestInflightConcurrentBalances(t *testing.T) {
	var f inflight
	stop := make(chan struct{})
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			select {
			case <-stop:
				return
			default:
				sumOf(&f)
			}
		}
	}()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 1))
			var open []uint64
			for i := range 20_000 {
				e := uint64(i / 4) // epochs move on: the ring wraps five times
				if r.IntN(3) > 0 || len(open) == 0 {
					e -= uint64(r.IntN(min(i/4+1, 3*inflightSlots))) // some entries are late
					f.enter(e)
					open = append(open, e)
				} else {
					k := r.IntN(len(open))
					f.exit(open[k])
					open = append(open[:k], open[k+1:]...)
				}
			}
			for _, e := range open {
				f.exit(e)
			}
		})
	}
	wg.Wait()
	close(stop)
	<-readerDone
	if s := sumOf(&f); s.count != 0 || s.overflow != 0 {
		t.Fatalf("every query exited, yet %+v", s)
	}
}

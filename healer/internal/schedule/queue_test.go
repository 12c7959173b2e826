package schedule

import (
	"slices"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

// due pops what is due at now and requeues it on its cadence.
func due(q *Queue[string], now time.Time) []string {
	var got []string
	q.Due(now, func(k string) time.Time { got = append(got, k); return time.Time{} })
	slices.Sort(got)
	return got
}

func TestQueueCadence(t *testing.T) {
	q := NewQueue[string](ms(20))
	q.Add("a", t0)
	q.Add("b", t0.Add(ms(10)))
	if q.Add("a", t0.Add(ms(5))) {
		t.Fatal("Add of a key already there")
	}
	for _, step := range []struct {
		at   int
		want []string
	}{
		{0, []string{"a"}}, {9, nil}, {10, []string{"b"}}, {20, []string{"a"}}, {30, []string{"b"}},
		// A stall: at 95 both are overdue; each is served once and resumes from now, not
		// in a burst of the rounds it missed.
		{95, []string{"a", "b"}}, {114, nil}, {115, []string{"a", "b"}},
	} {
		if got := due(q, t0.Add(ms(step.at))); !slices.Equal(got, step.want) {
			t.Errorf("at %dms: %v, want %v", step.at, got, step.want)
		}
	}
	if next, _ := q.Next(); !next.Equal(t0.Add(ms(135))) {
		t.Errorf("next due %v, want 135ms", next.Sub(t0))
	}
}

func TestQueueBoost(t *testing.T) {
	q := NewQueue[string](ms(20))
	q.Add("a", t0.Add(ms(20)))
	// Boosted x4 for 30 ms at 2 ms: due at once, then every 5 ms until the boost ends.
	if !q.Boost("a", 4, ms(30), t0.Add(ms(2))) {
		t.Fatal("a boost did not bring the next round forward")
	}
	var at []int
	for now := 0; now <= 80; now++ {
		if got := due(q, t0.Add(ms(now))); len(got) > 0 {
			at = append(at, now)
		}
	}
	if want := []int{2, 7, 12, 17, 22, 27, 32, 52, 72}; !slices.Equal(at, want) {
		t.Errorf("fired at %v, want %v", at, want)
	}
	if q.Boosted("a", t0.Add(ms(33))) || !q.Boosted("a", t0.Add(ms(31))) {
		t.Errorf("Boosted: the boost ends at 32ms")
	}
	// Renewed while it runs, a boost is only extended: not due at once again.
	q.Boost("a", 4, ms(30), t0.Add(ms(80)))
	due(q, t0.Add(ms(80)))
	q.Boost("a", 4, ms(30), t0.Add(ms(81)))
	if got := due(q, t0.Add(ms(81))); len(got) != 0 {
		t.Errorf("a renewed boost fired at once")
	}
}

// The work asks for its own next time (a heartbeat stream's stall deadline); a boosted key
// gets the earlier of that and its boosted cadence.
func TestQueueRequeueAt(t *testing.T) {
	q := NewQueue[string](ms(20))
	q.Add("a", t0)
	ask := t0.Add(ms(150))
	q.Due(t0, func(string) time.Time { return ask })
	if next, _ := q.Next(); !next.Equal(ask) {
		t.Fatalf("next %v, want the asked 150ms", next.Sub(t0))
	}
	q.Boost("a", 4, ms(100), t0.Add(ms(10)))
	if next, _ := q.Next(); !next.Equal(t0.Add(ms(10))) {
		t.Fatalf("boosted: next %v, want at once (10ms)", next.Sub(t0))
	}
	q.Due(t0.Add(ms(10)), func(string) time.Time { return ask })
	if next, _ := q.Next(); !next.Equal(t0.Add(ms(15))) {
		t.Errorf("boosted: next %v, want the cadence's 15ms, before the asked 150ms", next.Sub(t0))
	}
}

func TestQueueRemoveWhilePopped(t *testing.T) {
	q := NewQueue[string](ms(20))
	q.Add("a", t0)
	q.Add("b", t0)
	keys := q.PopDue(t0, nil)
	if len(keys) != 2 {
		t.Fatalf("popped %v", keys)
	}
	q.Remove("a")
	for _, k := range keys {
		q.Requeue(k, time.Time{}, t0)
	}
	if q.Has("a") || q.Len() != 1 {
		t.Errorf("a removed while popped came back (len %d)", q.Len())
	}
	if got := due(q, t0.Add(ms(20))); !slices.Equal(got, []string{"b"}) {
		t.Errorf("due %v, want [b]", got)
	}
	q.Remove("b")
	if _, ok := q.Next(); ok {
		t.Errorf("empty queue has a next time")
	}
}

// Many keys at random times come out in order (the hand-written heap).
func TestQueueOrder(t *testing.T) {
	q := NewQueue[int](time.Hour)
	for i := range 500 {
		q.Add(i, t0.Add(time.Duration((i*7919)%1000)*time.Microsecond))
	}
	for i := 0; i < 500; i += 3 {
		q.Remove(i)
	}
	var last time.Time
	n := 0
	for {
		next, ok := q.Next()
		if !ok {
			break
		}
		if next.Before(last) {
			t.Fatalf("out of order: %v after %v", next, last)
		}
		last = next
		keys := q.PopDue(next, nil)
		n += len(keys)
		for _, k := range keys {
			q.Remove(k)
		}
	}
	if n != 500-167 {
		t.Errorf("popped %d keys, want %d", n, 500-167)
	}
}

func TestMailbox(t *testing.T) {
	m := NewMailbox[int]()
	for i := range 3 {
		m.Put(i) // never blocks, whoever takes
	}
	m.PutAll([]int{3, 4})
	select {
	case <-m.Ready():
	default:
		t.Fatal("not signalled")
	}
	got := m.Take(nil)
	if !slices.Equal(got, []int{0, 1, 2, 3, 4}) {
		t.Errorf("took %v", got)
	}
	m.Put(5)
	if got = m.Take(got); !slices.Equal(got, []int{5}) {
		t.Errorf("took %v after the swap", got)
	}

	type res struct {
		k string
		v int
	}
	l := NewLatest(func(r res) string { return r.k })
	l.PutAll([]res{{"a", 1}, {"b", 1}, {"a", 2}})
	l.Put(res{"b", 3})
	if got := l.Take(nil); !slices.Equal(got, []res{{"a", 2}, {"b", 3}}) {
		t.Errorf("latest wins: %v", got)
	}
	l.Put(res{"a", 4})
	if got := l.Take(nil); !slices.Equal(got, []res{{"a", 4}}) {
		t.Errorf("after a take: %v", got)
	}
}

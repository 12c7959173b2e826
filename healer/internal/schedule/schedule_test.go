package schedule

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/dnspulse/dnspulse/healer/internal/replica"
)

// counter records fires per key, and wakes the test at each.
type counter struct {
	mu sync.Mutex
	n  map[string]int
	ch chan string
}

func newCounter() *counter { return &counter{n: map[string]int{}, ch: make(chan string, 10000)} }

func (c *counter) fire(k string) time.Time {
	c.mu.Lock()
	c.n[k]++
	c.mu.Unlock()
	c.ch <- k
	return time.Time{}
}

func (c *counter) get(k string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[k]
}

// waitFires waits until key has fired n times in all.
func (c *counter) waitFires(t *testing.T, key string, n int) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for c.get(key) < n {
		select {
		case <-c.ch:
		case <-deadline:
			t.Fatalf("%s fired %d times, want %d", key, c.get(key), n)
		}
	}
}

func TestSchedulerFiresEveryKeyAndStopsRemovedOnes(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := newCounter()
	s := New(5*time.Millisecond, c.fire)
	go s.Run(ctx)
	for _, k := range []string{"a", "b", "c"} {
		s.Add(k)
	}
	for _, k := range []string{"a", "b", "c"} {
		c.waitFires(t, k, 3)
	}
	s.Remove("b")
	before := c.get("b")
	c.waitFires(t, "a", c.get("a")+5) // a keeps going for several more rounds
	if got := c.get("b"); got > before+1 {
		t.Errorf("b fired %d more times after Remove", got-before)
	}
}

// A boosted key fires more often than its peers for the boost's span (counted in fires of
// the peer, not in time: the machine may be slow).
func TestBoost(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := newCounter()
	s := New(20*time.Millisecond, c.fire)
	go s.Run(ctx)
	s.Add("slow")
	s.Add("fast")
	c.waitFires(t, "slow", 1)
	s.Boost("fast", 4, time.Hour)
	f0, s0 := c.get("fast"), c.get("slow")
	c.waitFires(t, "slow", s0+5)
	if df, ds := c.get("fast")-f0, c.get("slow")-s0; df < 2*ds {
		t.Errorf("boosted x4: %d fires against %d of its peer", df, ds)
	}
}

func TestSetFollowsTargets(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type w struct{ *Worker }
	var mu sync.Mutex
	made := map[string]*Worker{}
	fired := make(chan string, 1000)
	s := NewSet(5*time.Millisecond, 4, 10*time.Millisecond, 50*time.Millisecond,
		func(wk *Worker) w { mu.Lock(); made[wk.Name] = wk; mu.Unlock(); return w{wk} },
		func(x w) time.Time { fired <- x.Name + "@" + x.Addr; return time.Time{} })
	addr := func(t replica.Target) string { return t.DNSAddr }
	s.Sync(ctx, []replica.Target{{Name: "a", DNSAddr: "1"}, {Name: "b", DNSAddr: ""}}, addr)
	if got := <-fired; got != "a@1" {
		t.Fatalf("fired %q, want a@1 (b has no address)", got)
	}
	mu.Lock()
	old := made["a"]
	mu.Unlock()
	if old.Timeout.Get() != 10*time.Millisecond {
		t.Errorf("a new worker's timeout is %v, want the floor", old.Timeout.Get())
	}
	// A new address is a new worker; the old one's context ends.
	s.Sync(ctx, []replica.Target{{Name: "a", DNSAddr: "2"}}, addr)
	<-old.Ctx.Done()
	for got := <-fired; got != "a@2"; got = <-fired {
		if got != "a@1" {
			t.Fatalf("fired %q", got)
		}
	}
	s.Sync(ctx, nil, addr)
	mu.Lock()
	cur := made["a"]
	mu.Unlock()
	<-cur.Ctx.Done()
}

func TestTimeoutAdapts(t *testing.T) {
	to := Timeout{Min: 40 * time.Millisecond, Max: 100 * time.Millisecond}
	if to.Get() != 40*time.Millisecond {
		t.Fatalf("no sample: %v, want the floor", to.Get())
	}
	to.Observe(time.Millisecond)
	if to.Get() != 40*time.Millisecond {
		t.Errorf("1ms replica: %v, want the floor", to.Get())
	}
	for range 200 {
		to.Observe(30 * time.Millisecond)
	}
	if to.Get() != 100*time.Millisecond {
		t.Errorf("30ms replica: %v, want the ceiling", to.Get())
	}
	if !Late(120*time.Millisecond, 100*time.Millisecond) || Late(105*time.Millisecond, 100*time.Millisecond) {
		t.Errorf("Late: the slack is %v", LateSlack)
	}
}

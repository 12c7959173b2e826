package hbreader

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dnspulse/dnspulse/healer/internal/config"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
	"github.com/dnspulse/dnspulse/healer/internal/schedule"
	"github.com/dnspulse/dnspulse/heartbeat"
)

// pulseServer is a pulse listener: GET /pulse answers the document, ?watch=1 streams one
// line per tick while lines is true (stalled otherwise, the connection kept open), or
// whatever stream says instead.
type pulseServer struct {
	*httptest.Server
	tick    time.Duration
	seq     atomic.Uint64
	lines   atomic.Bool
	polls   atomic.Int64
	watches atomic.Int64
	// stream, when set, answers ?watch=1 instead.
	stream func(w http.ResponseWriter, r *http.Request) bool
}

func newPulseServer(t *testing.T, tick time.Duration) *pulseServer {
	t.Helper()
	ps := &pulseServer{tick: tick}
	ps.lines.Store(true)
	stop := make(chan struct{})
	ps.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get(heartbeat.WatchParam) != "1" {
			ps.polls.Add(1)
			hb := validHB(ps.seq.Add(1))
			hb.Tick = heartbeat.Duration(tick)
			_ = json.NewEncoder(w).Encode(hb)
			return
		}
		ps.watches.Add(1)
		if ps.stream != nil && ps.stream(w, r) {
			return
		}
		w.Header().Set("Content-Type", heartbeat.StreamContentType)
		tk := time.NewTicker(tick)
		defer tk.Stop()
		for {
			if ps.lines.Load() {
				hb := validHB(ps.seq.Add(1))
				hb.Tick = heartbeat.Duration(tick)
				if err := json.NewEncoder(w).Encode(hb); err != nil {
					return
				}
				w.(http.Flusher).Flush()
			}
			select {
			case <-tk.C:
			case <-r.Context().Done():
				return
			case <-stop:
				return
			}
		}
	}))
	t.Cleanup(func() { close(stop); ps.Close() })
	return ps
}

func (ps *pulseServer) target(name string) replica.Target {
	return replica.Target{Name: name, PulseAddr: strings.TrimPrefix(ps.URL, "http://")}
}

func streamPool(t *testing.T, targets ...replica.Target) *Pool {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	p := NewPool(config.Heartbeat{Stream: true, Interval: config.D(20 * time.Millisecond), Timeout: config.D(time.Second), MinTimeout: config.D(40 * time.Millisecond)})
	p.Sync(ctx, targets)
	return p
}

// next waits for a result of the pool that satisfies ok.
func next(t *testing.T, p *Pool, what string, ok func(Result) bool) Result {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case <-p.Results.Ready():
			for _, r := range p.Results.Take(nil) {
				if ok(r) {
					return r
				}
			}
		case <-deadline:
			t.Fatalf("no %s within 10s", what)
		}
	}
}

func isOK(r Result) bool { return r.Kind == OK }

// A live stream: every line a heartbeat, seq moving, no polls.
func TestStreamReadsLines(t *testing.T) {
	ps := newPulseServer(t, 20*time.Millisecond)
	p := streamPool(t, ps.target("r"))
	first := next(t, p, "a heartbeat", isOK)
	later := next(t, p, "a later heartbeat", func(r Result) bool { return isOK(r) && r.HB.Seq >= first.HB.Seq+3 })
	if later.HB == first.HB || later.Stale {
		t.Errorf("later %+v", later)
	}
	if ps.polls.Load() != 0 || p.Polls.Load() != 0 || p.Lines.Load() < 4 {
		t.Errorf("%d polls served, %d sent, %d lines read: a live stream needs no poll", ps.polls.Load(), p.Polls.Load(), p.Lines.Load())
	}
}

// A stream that stops (the connection open, no line: a stopped process) is Unreachable
// within the tick and a half; when lines come again, so does OK.
func TestStreamStallIsUnreachable(t *testing.T) {
	ps := newPulseServer(t, 40*time.Millisecond)
	p := streamPool(t, ps.target("r"))
	next(t, p, "a heartbeat", isOK)
	ps.lines.Store(false)
	stopped := time.Now()
	r := next(t, p, "a stall", func(r Result) bool { return r.Kind == Unreachable })
	if !strings.Contains(r.Err.Error(), "stalled") || time.Since(stopped) < StallAfter(40*time.Millisecond)-40*time.Millisecond {
		t.Errorf("stall %v after %s", r.Err, time.Since(stopped))
	}
	ps.lines.Store(true)
	next(t, p, "a heartbeat after the stall", isOK)
}

// An older pulse answers ?watch=1 with the plain document: it is read as a poll, and the
// replica polled from then on.
func TestStreamFallsBackToPolling(t *testing.T) {
	ps := newPulseServer(t, 20*time.Millisecond)
	ps.stream = func(w http.ResponseWriter, _ *http.Request) bool {
		_ = json.NewEncoder(w).Encode(validHB(ps.seq.Add(1))) // Content-Type: text/plain, as an old pulse
		return true
	}
	p := streamPool(t, ps.target("old"))
	next(t, p, "the document", isOK)
	next(t, p, "polls", func(r Result) bool { return isOK(r) && ps.polls.Load() >= 3 })
	if ps.watches.Load() != 1 {
		t.Errorf("%d stream attempts, want 1 (then polls for a minute)", ps.watches.Load())
	}
}

// A pulse whose watchers are all taken (503) is polled for its Retry-After.
func TestStreamBusyPolls(t *testing.T) {
	ps := newPulseServer(t, 20*time.Millisecond)
	ps.stream = func(w http.ResponseWriter, _ *http.Request) bool {
		w.Header().Set("Retry-After", "1")
		http.Error(w, "too many watchers", http.StatusServiceUnavailable)
		return true
	}
	p := streamPool(t, ps.target("busy"))
	next(t, p, "polls", func(r Result) bool { return isOK(r) && ps.polls.Load() >= 3 })
}

// A stream that ends (a reload of CoreDNS) is opened again at once.
func TestStreamReconnects(t *testing.T) {
	ps := newPulseServer(t, 10*time.Millisecond)
	ps.stream = func(w http.ResponseWriter, _ *http.Request) bool {
		w.Header().Set("Content-Type", heartbeat.StreamContentType)
		for range 2 {
			_ = json.NewEncoder(w).Encode(validHB(ps.seq.Add(1)))
			w.(http.Flusher).Flush()
		}
		return true // and the response ends
	}
	p := streamPool(t, ps.target("r"))
	next(t, p, "lines over several streams", func(r Result) bool { return isOK(r) && ps.watches.Load() >= 3 })
	if ps.polls.Load() != 0 {
		t.Errorf("%d polls", ps.polls.Load())
	}
}

// A boosted replica is polled besides its stream: a hang shows within the poll's timeout
// rather than the stall's tick and a half.
func TestBoostedStreamIsPolled(t *testing.T) {
	ps := newPulseServer(t, 50*time.Millisecond)
	p := streamPool(t, ps.target("r"))
	next(t, p, "a heartbeat", isOK)
	p.Boost("r", time.Second)
	next(t, p, "polls while boosted", func(Result) bool { return ps.polls.Load() >= 3 })
}

// The stall rule on a fake clock: nothing before the deadline (it asks to be checked then),
// Unreachable after it, every interval while it lasts; a check that ran long after its
// deadline (the healer was not running) is Late once.
func TestCheckStall(t *testing.T) {
	p := NewPool(config.Heartbeat{Interval: config.D(20 * time.Millisecond), Timeout: config.D(time.Second)})
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	r := &reader{Worker: &schedule.Worker{Name: "r", Ctx: context.Background()}, pool: p, lastSign: t0, tick: 100 * time.Millisecond}
	take := func() []Result { return p.Results.Take(nil) }
	if next := r.checkStall(t0.Add(149 * time.Millisecond)); !next.Equal(t0.Add(150*time.Millisecond)) || len(take()) != 0 {
		t.Fatalf("before the deadline: next %v", next.Sub(t0))
	}
	if next := r.checkStall(t0.Add(152 * time.Millisecond)); !next.Equal(t0.Add(172 * time.Millisecond)) {
		t.Errorf("while stalled: next %v, want an interval on", next.Sub(t0))
	}
	if got := take(); len(got) != 1 || got[0].Kind != Unreachable || !strings.Contains(got[0].Err.Error(), "no line for 152ms (tick 100ms)") {
		t.Fatalf("on time: %+v", got)
	}
	r.lastSign = t0.Add(time.Second)
	r.checkStall(t0.Add(time.Second + 150*time.Millisecond + schedule.LateSlack + time.Millisecond))
	if got := take(); len(got) != 1 || got[0].Kind != Late {
		t.Fatalf("judged late: %+v", got)
	}
	r.checkStall(t0.Add(time.Second + 200*time.Millisecond))
	if got := take(); len(got) != 1 || got[0].Kind != Unreachable {
		t.Fatalf("an interval later: %+v", got)
	}
}

func TestRetryAfter(t *testing.T) {
	for h, want := range map[string]time.Duration{"": busyRetry, "2": 2 * time.Second, "x": busyRetry, "3600": notAStreamRetry} {
		if got := retryAfter(h); got != want {
			t.Errorf("Retry-After %q: %s, want %s", h, got, want)
		}
	}
}

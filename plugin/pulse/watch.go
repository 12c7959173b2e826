package pulse

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dnspulse/dnspulse/heartbeat"
)

// The stream, GET /pulse?watch=1: newline-delimited JSON, one heartbeat per line, the
// current one at once and then one per tick. The ticker encodes each heartbeat once and
// hands the same bytes to every watcher (publish: a pointer store and a non-blocking send
// per watcher, no allocation). A watcher that is not ready when a line comes gets only the
// newest one when it is: the lines it was too slow for are skipped (seq shows the gap),
// never queued. A watcher whose write has not gone through for stuckAfter (ten ticks, at
// least a second: it stopped reading) is disconnected. At most cfg.maxWatchers at a time;
// one more is answered 503 with Retry-After.

// watcher is one stream: the newest line it has not written, and a wake-up.
type watcher struct {
	line atomic.Pointer[[]byte]
	wake chan struct{}
}

type watchers struct {
	mu  sync.Mutex
	set map[*watcher]struct{}
	max int
}

func newWatchers(limit int) *watchers {
	return &watchers{set: make(map[*watcher]struct{}), max: limit}
}

// add registers a watcher; false (and how many there are) when there are max already.
func (ws *watchers) add() (*watcher, int, bool) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if len(ws.set) >= ws.max {
		return nil, len(ws.set), false
	}
	w := &watcher{wake: make(chan struct{}, 1)}
	ws.set[w] = struct{}{}
	return w, len(ws.set), true
}

func (ws *watchers) remove(w *watcher) {
	ws.mu.Lock()
	delete(ws.set, w)
	ws.mu.Unlock()
}

func (ws *watchers) count() int {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return len(ws.set)
}

// publish hands this tick's line to every watcher, replacing any it has not written.
func (ws *watchers) publish(line *[]byte) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for w := range ws.set {
		w.line.Store(line)
		select {
		case w.wake <- struct{}{}:
		default: // already woken: it will take the newest line
		}
	}
}

// stuckAfter is how long a watcher's write may block before it is disconnected.
func (r *runner) stuckAfter() time.Duration {
	if r.stuck > 0 {
		return r.stuck
	}
	return max(10*r.cfg.tick, time.Second)
}

// watchRequested reads ?watch=: 1 or true streams, 0, false or none does not.
func watchRequested(req *http.Request) (bool, error) {
	if req.URL.RawQuery == "" {
		return false, nil
	}
	switch v := req.URL.Query().Get(heartbeat.WatchParam); v {
	case "", "0", "false":
		return false, nil
	case "1", "true":
		return true, nil
	default:
		return false, fmt.Errorf("pulse: %s=%q: want 1 to stream heartbeats, 0 (or nothing) for one", heartbeat.WatchParam, v)
	}
}

func (r *runner) serveWatch(w http.ResponseWriter, req *http.Request) {
	wt, n, ok := r.watch.add()
	if !ok {
		w.Header().Set("Retry-After", "1")
		http.Error(w, fmt.Sprintf("pulse: %d watchers already, the most this listener serves (option watchers); poll GET %s meanwhile",
			n, heartbeat.Path), http.StatusServiceUnavailable)
		return
	}
	defer r.watch.remove(wt)
	h := w.Header()
	h.Set("Content-Type", heartbeat.StreamContentType)
	h.Set("Cache-Control", "no-store")
	rc := http.NewResponseController(w)
	line := r.line.Load()
	for {
		// Not supported only by writers that are not a connection (tests); then no limit.
		_ = rc.SetWriteDeadline(time.Now().Add(r.stuckAfter()))
		if _, err := w.Write(*line); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
		for line = nil; line == nil; line = wt.line.Swap(nil) {
			if !r.wait(req.Context(), wt) {
				return
			}
		}
	}
}

// wait blocks until the watcher has a line, the client went away or the runner stops.
func (r *runner) wait(client context.Context, wt *watcher) bool {
	select {
	case <-wt.wake:
		return true
	case <-client.Done():
	case <-r.ctx.Done():
	}
	return false
}

package hbreader

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/dnspulse/dnspulse/healer/internal/schedule"
	"github.com/dnspulse/dnspulse/heartbeat"
)

// The stream of one replica's heartbeat (GET /pulse?watch=1; plugin/pulse/README.md, "The
// stream"): one line per tick, read by a goroutine per replica that decodes each line (a
// fresh Heartbeat each: the detector keeps the last one it was given) and hands it over.
// Its own HTTP/1.1 exchange on a connection of its own, rather than net/http's Transport:
// one goroutine and two small buffers per replica instead of three goroutines and a 64 KiB
// line buffer (heartbeat.StreamReader's), which at 1,000 replicas is the difference between
// tens and a hundred MiB.

// defaultTick is the tick assumed before the first heartbeat says it (pulse's default).
const defaultTick = 50 * time.Millisecond

// Stall: a stream whose next line is this many ticks overdue (counted from the last line)
// is stalled. Pulse writes a line every tick; half a tick of slack absorbs the jitter of a
// loaded node.
const stallTicks = 1.5

// StallAfter is how long after its last line a stream with the given tick is stalled.
func StallAfter(tick time.Duration) time.Duration {
	if tick <= 0 {
		tick = defaultTick
	}
	return time.Duration(stallTicks * float64(tick))
}

const (
	// notAStreamRetry is how long a replica that answered ?watch=1 with a plain document
	// (a pulse older than the stream) is polled before the stream is tried again.
	notAStreamRetry = time.Minute
	// busyRetry is how long a replica whose pulse refused the stream (503: its watchers
	// are all taken) is polled, when it does not say (Retry-After).
	busyRetry = 5 * time.Second
	// maxBackoff bounds the wait between two attempts to open a stream that fail; a
	// stream that delivered lines is reopened at once (a reload of CoreDNS ends them).
	maxBackoff = 2 * time.Second
	// minIdle is the least time without a line before the connection is given up and
	// opened again (a peer gone without a word; checkStall closes it); ten ticks otherwise.
	minIdle = 2 * time.Second
)

// errNotAStream: the replica answered with the plain document (an older pulse).
var errNotAStream = errors.New("pulse serves no stream (an older pulse): polling")

// busyError: the replica's pulse refused the stream (503), for After.
type busyError struct{ After time.Duration }

func (e busyError) Error() string {
	return fmt.Sprintf("pulse refused the stream (503: every watcher taken): polling for %s", e.After)
}

// checkStall reports a stalled stream at now and returns when to check it next: its stall
// deadline while lines come, every interval while they do not. A check that runs long
// after its deadline (the healer itself was not running, so lines may be waiting unread)
// is Late, and the stream gets another interval to show life.
func (r *reader) checkStall(now time.Time) time.Time {
	r.mu.Lock()
	last, tick := r.lastSign, r.tick
	if r.conn != nil && now.Sub(last) > max(minIdle, 10*tick) {
		// So long without a line: the peer may be gone without a word. Open it again.
		_ = r.conn.Close()
		r.conn = nil
	}
	r.mu.Unlock()
	due := last.Add(StallAfter(tick))
	if now.Before(due) {
		return due
	}
	res := Result{Replica: r.Name, Sent: now, Latency: now.Sub(last), Kind: Unreachable,
		Err: fmt.Errorf("heartbeat stream stalled: no line for %s (tick %s)", now.Sub(last).Round(time.Millisecond), tick)}
	if overdue := now.Sub(due); overdue > schedule.LateSlack && r.seenLate(due) {
		res.Kind = Late
	}
	r.pool.Results.Put(res)
	return now.Add(r.pool.cfg.Interval.D())
}

// seenLate says whether the stall at due is judged late for the first time: only the first
// check of a stall may be late (the scheduler fired it late); the next ones, an interval
// apart, report it.
func (r *reader) seenLate(due time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lateDue.Equal(due) {
		return false
	}
	r.lateDue = due
	return true
}

// stream keeps the replica's stream open until the reader's context ends: it reopens a
// stream that ended at once, and one that fails with a growing, jittered backoff; for an
// older pulse (or a busy one) it polls for a while instead.
func (r *reader) stream() {
	var backoff time.Duration
	for r.Ctx.Err() == nil {
		lines, err := r.watch()
		if r.Ctx.Err() != nil {
			return
		}
		var be busyError
		switch {
		case errors.Is(err, errNotAStream):
			r.pollFor(notAStreamRetry)
			continue
		case errors.As(err, &be):
			r.pollFor(be.After)
			continue
		case lines > 0:
			backoff = 0
		default:
			backoff = min(max(2*backoff, 50*time.Millisecond), maxBackoff)
		}
		if !sleep(r.Ctx, backoff/2+rand.N(backoff/2+1)) {
			return
		}
	}
}

// pollFor polls the replica (every interval, by the scheduler) for d, then goes back to
// the stream, counting its stall from then.
func (r *reader) pollFor(d time.Duration) {
	r.mode.Store(modePoll)
	sleep(r.Ctx, d)
	r.mu.Lock()
	r.lastSign = time.Now()
	r.mu.Unlock()
	r.mode.Store(modeStream)
}

// sleep waits d, or until ctx ends (false).
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// watch opens the stream and reads it until it ends, handing over every line. It returns
// how many heartbeats it read, and why it ended.
func (r *reader) watch() (lines int, err error) {
	timeout := r.pool.cfg.Timeout.D()
	d := net.Dialer{Timeout: timeout, KeepAlive: 15 * time.Second}
	conn, err := d.DialContext(r.Ctx, "tcp", r.Addr)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	stop := context.AfterFunc(r.Ctx, func() { _ = conn.Close() })
	defer stop()
	r.mu.Lock()
	r.conn = conn // checkStall closes it after minIdle without a line
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		if r.conn == conn {
			r.conn = nil
		}
		r.mu.Unlock()
	}()

	// The request and the response's head within the read timeout.
	_ = conn.SetDeadline(time.Now().Add(timeout))
	req, err := http.NewRequest(http.MethodGet, r.url+"?"+heartbeat.WatchParam+"=1", nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Accept", heartbeat.StreamContentType)
	req.Header.Set("User-Agent", "dnspulse-healer")
	if err := req.Write(conn); err != nil {
		return 0, err
	}
	br := bufio.NewReaderSize(conn, 4096)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	switch ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); {
	case resp.StatusCode == http.StatusServiceUnavailable:
		return 0, busyError{After: retryAfter(resp.Header.Get("Retry-After"))}
	case resp.StatusCode != http.StatusOK:
		return 0, fmt.Errorf("GET %s?%s=1: status %s", heartbeat.Path, heartbeat.WatchParam, resp.Status)
	case ct != heartbeat.StreamContentType:
		r.oldPulse(resp.Body)
		return 0, errNotAStream
	}

	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 4096), heartbeat.MaxBodyBytes+1)
	_ = conn.SetDeadline(time.Time{})
	dec := newDecoder()
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		now := time.Now()
		r.pool.Bytes.Add(uint64(len(sc.Bytes()) + 1))
		hb := new(heartbeat.Heartbeat)
		if err := dec.Decode(line, hb); err != nil {
			// Not a heartbeat: the internal view is gone until a good line comes (the
			// next one may be fine).
			r.pool.Invalid.Add(1)
			r.pool.Results.Put(Result{Replica: r.Name, Sent: now, Kind: Invalid, Err: err})
			continue
		}
		lines++
		r.line(hb, now)
	}
	if err := sc.Err(); err != nil {
		return lines, err
	}
	return lines, io.EOF
}

// line hands over one heartbeat read from the stream at now.
func (r *reader) line(hb *heartbeat.Heartbeat, now time.Time) {
	r.pool.Lines.Add(1)
	r.mu.Lock()
	r.lastSign = now
	if t := time.Duration(hb.Tick); t > 0 {
		r.tick = t
	}
	stale, age := r.seq.observe(hb, now, r.pool.cfg.Interval.D())
	r.mu.Unlock()
	r.pool.Results.Put(Result{Replica: r.Name, Sent: now, Kind: OK, HB: hb, Stale: stale, SeqAge: age})
}

// oldPulse reads the plain document an older pulse answered ?watch=1 with, as a poll.
func (r *reader) oldPulse(body io.Reader) {
	b, err := io.ReadAll(io.LimitReader(body, heartbeat.MaxBodyBytes+1))
	now := time.Now()
	if err != nil {
		return // the polls that follow will say
	}
	r.pool.Bytes.Add(uint64(len(b)))
	hb := new(heartbeat.Heartbeat)
	dec := newDecoder()
	if err := dec.Decode(b, hb); err != nil {
		r.pool.Invalid.Add(1)
		r.pool.Results.Put(Result{Replica: r.Name, Sent: now, Kind: Invalid, Err: err})
		return
	}
	r.line(hb, now)
}

// retryAfter reads a Retry-After header in seconds; busyRetry without one.
func retryAfter(h string) time.Duration {
	if s, err := strconv.Atoi(h); err == nil && s > 0 {
		return min(time.Duration(s)*time.Second, notAStreamRetry)
	}
	return busyRetry
}

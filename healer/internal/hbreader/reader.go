// Package hbreader is the healer's internal view: it reads every replica's heartbeat (the
// document the pulse plugin serves at GET /pulse) on a steady schedule (package schedule)
// and reports each one, or why there was none.
package hbreader

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dnspulse/dnspulse/healer/internal/config"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
	"github.com/dnspulse/dnspulse/healer/internal/schedule"
	"github.com/dnspulse/dnspulse/heartbeat"
)

// Kind classifies one read.
type Kind int

const (
	// OK: a valid version-1 heartbeat.
	OK Kind = iota
	// Unreachable: no HTTP answer in time (connection refused, timeout, reset) or a
	// non-200 status: the internal view is gone.
	Unreachable
	// Invalid: something answered, but not with a heartbeat (malformed, oversized or
	// foreign body): the internal view is gone too, and the operator should look at the
	// pulse address.
	Invalid
	// Late: the read timed out, but its deadline fired long after it was due: the healer
	// itself was not running, so the read proves nothing (the detector ignores it).
	Late
)

func (k Kind) String() string {
	switch k {
	case OK:
		return "ok"
	case Unreachable:
		return "unreachable"
	case Late:
		return "late"
	default:
		return "invalid"
	}
}

// Result is one read of one replica's heartbeat.
type Result struct {
	Replica string
	Sent    time.Time
	Latency time.Duration
	Kind    Kind
	Err     error
	HB      *heartbeat.Heartbeat
	// Stale says seq has not moved for longer than StaleTicks heartbeat ticks; SeqAge is
	// for how long.
	Stale  bool
	SeqAge time.Duration
}

// BoostFactor is how much faster a boosted replica is read (see Pool.Boost).
const BoostFactor = 4

// Pool reads every replica that has a pulse address.
type Pool struct {
	cfg    config.Heartbeat
	client *http.Client
	out    chan<- Result
	// Set holds a reader per replica; its Boost reads one replica BoostFactor times as
	// often for a while.
	*schedule.Set[*reader]
	// Invalid counts bodies that were not a heartbeat.
	Invalid atomic.Uint64
}

// NewPool makes a pool sending to out. The client keeps connections alive: a read every
// 20 ms must not cost a TCP handshake.
func NewPool(cfg config.Heartbeat, out chan<- Result) *Pool {
	tr := &http.Transport{
		Proxy:               nil, // straight to the replica, never through a proxy
		DialContext:         (&net.Dialer{Timeout: cfg.Timeout.D(), KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        0,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	p := &Pool{cfg: cfg, client: &http.Client{Transport: tr}, out: out}
	p.Set = schedule.NewSet(cfg.Interval.D(), BoostFactor, cfg.MinTimeout.D(), cfg.Timeout.D(), p.newReader, (*reader).fire)
	return p
}

// Sync starts reading new replicas (or changed pulse addresses) and stops the others. The
// first call starts the pool, which runs until ctx ends.
func (p *Pool) Sync(ctx context.Context, targets []replica.Target) {
	p.Set.Sync(ctx, targets, func(t replica.Target) string { return t.PulseAddr })
}

// reader reads one replica's heartbeat, one read at a time.
type reader struct {
	*schedule.Worker
	pool     *Pool
	url      string
	inFlight atomic.Bool

	mu       sync.Mutex
	lastHB   *heartbeat.Heartbeat
	lastBody []byte
	seq      seqTracker
}

func (p *Pool) newReader(w *schedule.Worker) *reader {
	return &reader{Worker: w, pool: p, url: "http://" + w.Addr + heartbeat.Path}
}

// fire starts one read. One read at a time per replica: a read still waiting will report
// its own timeout, and a second one would only open another connection. The next read is
// due one interval later.
func (r *reader) fire() time.Time {
	if r.inFlight.CompareAndSwap(false, true) {
		go r.readOnce()
	}
	return time.Time{}
}

func (r *reader) readOnce() {
	res := r.read()
	// The slot is free before the result is handed over: a busy engine must not slow the
	// reading down (the next read may start while this result waits).
	r.inFlight.Store(false)
	if r.Ctx.Err() != nil {
		return
	}
	select {
	case r.pool.out <- res:
	case <-r.Ctx.Done():
	}
}

func (r *reader) read() Result {
	res := Result{Replica: r.Name, Sent: time.Now()}
	timeout := r.Timeout.Get()
	ctx, cancel := context.WithTimeout(r.Ctx, timeout)
	defer cancel()
	hb, kind, err := r.fetch(ctx)
	res.Latency = time.Since(res.Sent)
	if kind == Unreachable && ctx.Err() != nil && schedule.Late(res.Latency, timeout) {
		kind = Late
	}
	res.Kind, res.Err, res.HB = kind, err, hb
	switch kind {
	case OK:
		r.Timeout.Observe(res.Latency)
		r.mu.Lock()
		res.Stale, res.SeqAge = r.seq.observe(hb, res.Sent, r.pool.cfg.Interval.D())
		r.mu.Unlock()
	case Invalid:
		r.pool.Invalid.Add(1)
	}
	return res
}

// fetch is Fetch that skips decoding a body identical to the last one: with the plugin's
// default tick (100 ms) four reads in five at 20 ms return the same heartbeat, and decoding
// JSON is most of a read's cost.
func (r *reader) fetch(ctx context.Context) (*heartbeat.Heartbeat, Kind, error) {
	body, kind, err := get(ctx, r.pool.client, r.url)
	if err != nil {
		return nil, kind, err
	}
	r.mu.Lock()
	last, lastBody := r.lastHB, r.lastBody
	r.mu.Unlock()
	if last != nil && bytes.Equal(body, lastBody) {
		return last, OK, nil
	}
	hb, err := heartbeat.Parse(body)
	if err != nil {
		return nil, Invalid, err
	}
	r.mu.Lock()
	r.lastHB, r.lastBody = hb, body
	r.mu.Unlock()
	return hb, OK, nil
}

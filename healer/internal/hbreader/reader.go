// Package hbreader is the healer's internal view: it reads every replica's heartbeat (the
// document the pulse plugin serves at GET /pulse) and reports each one, or why there was
// none.
//
// A replica's heartbeat is watched as a stream (GET /pulse?watch=1, one line per tick,
// stream.go): pushed, not polled, so 1,000 replicas cost their ticks, not 50,000 requests a
// second. A stream that stalls is itself evidence: no line within the tick and a half means
// the process, or its ticker, is stuck (Unreachable), checked by the shared scheduler at
// exactly that deadline. A replica boosted for suspicion is also polled (GET /pulse), which
// answers a hang within the adaptive timeout rather than the stall's tick and a half. An
// older pulse, one that serves no stream, and --pulse-stream=false are polled every
// --pulse-interval as before.
//
// Results go to a latest-wins Mailbox: a reader never waits for the engine, and a busy
// engine sees each replica's newest read.
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
	// Results receives every read, the latest per replica; the engine takes them.
	Results *schedule.Mailbox[Result]
	// Set holds a reader per replica; its Boost reads one replica BoostFactor times as
	// often for a while (and polls it besides its stream).
	*schedule.Set[*reader]
	// Invalid counts bodies (or stream lines) that were not a heartbeat.
	Invalid atomic.Uint64
	// Lines counts the heartbeats read from streams, Polls the polls sent, Bytes the bytes
	// of heartbeat read either way.
	Lines, Polls, Bytes atomic.Uint64
}

// NewPool makes a pool. The client keeps connections alive: a poll every 20 ms must not
// cost a TCP handshake.
func NewPool(cfg config.Heartbeat) *Pool {
	tr := &http.Transport{
		Proxy:               nil, // straight to the replica, never through a proxy
		DialContext:         (&net.Dialer{Timeout: cfg.Timeout.D(), KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        0,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	p := &Pool{cfg: cfg, client: &http.Client{Transport: tr}, Results: schedule.NewLatest(func(r Result) string { return r.Replica })}
	p.Set = schedule.NewSet(cfg.Interval.D(), BoostFactor, cfg.MinTimeout.D(), cfg.Timeout.D(), p.newReader, (*reader).fire)
	return p
}

// Sync starts reading new replicas (or changed pulse addresses) and stops the others. The
// first call starts the pool, which runs until ctx ends.
func (p *Pool) Sync(ctx context.Context, targets []replica.Target) {
	p.Set.Sync(ctx, targets, func(t replica.Target) string { return t.PulseAddr })
}

// How a reader reads.
const (
	modeStream int32 = iota // a stream, its stall checked by the scheduler (polls while boosted)
	modePoll                // a poll every interval
)

// reader reads one replica's heartbeat: its stream (a goroutine of its own) and its polls,
// one at a time.
type reader struct {
	*schedule.Worker
	pool   *Pool
	url    string
	mode   atomic.Int32
	polled atomic.Bool // a poll in flight

	mu sync.Mutex
	// lastSign is when the stream last showed life (a line, or the first attempt to open
	// it); tick the replica's tick, from its last heartbeat.
	lastSign time.Time
	tick     time.Duration
	lateDue  time.Time // the stall deadline last judged late (see checkStall)
	conn     net.Conn  // the stream's connection while open
	seq      seqTracker
	// The last poll's body and heartbeat: a poll that returns the same body is not decoded
	// again.
	lastHB   *heartbeat.Heartbeat
	lastBody []byte
	pollDec  heartbeat.Decoder
}

// newDecoder decodes what the detector reads of a heartbeat: every field but the 10s and
// 60s windows, which are checked to be there and skipped (most of a line's numbers).
func newDecoder() heartbeat.Decoder {
	return heartbeat.Decoder{KeepWindows: []string{heartbeat.Window200ms, heartbeat.Window1s}}
}

func (p *Pool) newReader(w *schedule.Worker) *reader {
	r := &reader{Worker: w, pool: p, url: "http://" + w.Addr + heartbeat.Path, lastSign: time.Now(), tick: defaultTick, pollDec: newDecoder()}
	if p.cfg.Stream {
		go r.stream()
	} else {
		r.mode.Store(modePoll)
	}
	return r
}

// fire is the scheduler's call: a poll when polling (or boosted), and for a stream the
// check that its next line is not overdue. It returns when the reader is next due: a
// stream's stall deadline, or zero for the poll interval.
func (r *reader) fire() time.Time {
	if r.mode.Load() == modePoll {
		r.poll()
		return time.Time{}
	}
	if r.pool.Boosted(r.Name) {
		r.poll()
	}
	return r.checkStall(time.Now())
}

// poll starts one poll, unless one is in flight: a poll still waiting will report its own
// timeout, and a second one would only open another connection.
func (r *reader) poll() {
	if r.polled.CompareAndSwap(false, true) {
		go r.pollOnce()
	}
}

func (r *reader) pollOnce() {
	res := r.read()
	r.polled.Store(false)
	if r.Ctx.Err() != nil {
		return
	}
	r.pool.Results.Put(res)
}

func (r *reader) read() Result {
	r.pool.Polls.Add(1)
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
// default tick (50 ms) every other poll at 20 ms returns the same heartbeat. A new one is
// decoded into a fresh Heartbeat (the detector keeps the last it was given).
func (r *reader) fetch(ctx context.Context) (*heartbeat.Heartbeat, Kind, error) {
	body, kind, err := get(ctx, r.pool.client, r.url)
	if err != nil {
		return nil, kind, err
	}
	r.pool.Bytes.Add(uint64(len(body)))
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lastHB != nil && bytes.Equal(body, r.lastBody) {
		return r.lastHB, OK, nil
	}
	hb := new(heartbeat.Heartbeat)
	if err := r.pollDec.Decode(body, hb); err != nil {
		return nil, Invalid, err
	}
	r.lastHB, r.lastBody = hb, body
	return hb, OK, nil
}

// Package pulsereader is the healer's internal view: it polls every replica's GET /pulse
// and reports each heartbeat, or why there was none.
package pulsereader

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dnspulse/dnspulse/healer/pkg/replica"
	"github.com/dnspulse/dnspulse/heartbeat"
)

// Kind classifies one poll.
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
	// Late: the poll timed out, but its deadline fired long after it was due: the healer
	// itself was not running, so the poll proves nothing (the detector ignores it).
	Late
)

// lateSlack is how late a poll's deadline may fire before the poll is inconclusive.
const lateSlack = 10 * time.Millisecond

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

// Result is one poll of one replica.
type Result struct {
	Replica string
	Sent    time.Time
	Latency time.Duration
	Kind    Kind
	Err     error
	HB      *heartbeat.Heartbeat
	// Stale says seq has not moved for longer than StaleAfter; SeqAge is for how long.
	Stale  bool
	SeqAge time.Duration
}

// Config is shared by the readers of every replica.
type Config struct {
	Interval time.Duration
	// Timeout bounds one poll; MinTimeout is the floor of the adaptive timeout
	// clamp(8 x own latency baseline, MinTimeout, Timeout).
	Timeout    time.Duration
	MinTimeout time.Duration
	// StaleTicks: seq unchanged for more than StaleTicks heartbeat ticks (and at least
	// two polls) is stale.
	StaleTicks int
}

// Pool polls every replica with a pulse address.
type Pool struct {
	cfg    Config
	client *http.Client
	out    chan<- Result

	mu      sync.Mutex
	readers map[string]*reader
	// Invalid counts bodies that were not a heartbeat.
	Invalid atomic.Uint64
}

// NewPool makes a pool sending to out. The client keeps connections alive: a poll every
// 20 ms must not cost a TCP handshake.
func NewPool(cfg Config, out chan<- Result) *Pool {
	if cfg.MinTimeout <= 0 || cfg.MinTimeout > cfg.Timeout {
		cfg.MinTimeout = cfg.Timeout
	}
	if cfg.StaleTicks <= 0 {
		cfg.StaleTicks = 3
	}
	tr := &http.Transport{
		Proxy:               nil, // straight to the replica, never through a proxy
		DialContext:         (&net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        0,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	return &Pool{cfg: cfg, client: &http.Client{Transport: tr}, out: out, readers: make(map[string]*reader)}
}

// Sync starts readers for new replicas (or changed pulse addresses) and stops the others.
func (p *Pool) Sync(ctx context.Context, targets []replica.Target) {
	p.mu.Lock()
	defer p.mu.Unlock()
	seen := make(map[string]bool, len(targets))
	for _, t := range targets {
		seen[t.Name] = true
		if old, ok := p.readers[t.Name]; ok {
			if old.addr == t.PulseAddr {
				continue
			}
			old.cancel()
			delete(p.readers, t.Name)
		}
		if t.PulseAddr == "" {
			continue
		}
		r := &reader{pool: p, name: t.Name, addr: t.PulseAddr, url: "http://" + t.PulseAddr + heartbeat.Path, boost: make(chan time.Duration, 1)}
		rctx, cancel := context.WithCancel(ctx)
		r.cancel = cancel
		p.readers[t.Name] = r
		go r.run(rctx)
	}
	for name, r := range p.readers {
		if !seen[name] {
			r.cancel()
			delete(p.readers, name)
		}
	}
}

type reader struct {
	pool   *Pool
	name   string
	addr   string
	url    string
	cancel context.CancelFunc
	boost  chan time.Duration

	inFlight atomic.Bool
	baseline atomic.Int64

	mu         sync.Mutex
	lastHB     *heartbeat.Heartbeat
	lastBody   []byte
	lastSeq    uint64
	seqChanged time.Time
	polls      int
}

func (r *reader) run(ctx context.Context) {
	cfg := r.pool.cfg
	t := time.NewTimer(time.Duration(rand.Int64N(int64(cfg.Interval))))
	select {
	case <-ctx.Done():
		t.Stop()
		return
	case <-t.C:
	}
	ticker := time.NewTicker(cfg.Interval)
	defer ticker.Stop()
	var boostedUntil time.Time
	for {
		if !boostedUntil.IsZero() && time.Now().After(boostedUntil) {
			boostedUntil = time.Time{}
			ticker.Reset(cfg.Interval)
		}
		// One poll at a time per replica: a poll still waiting will report its own
		// timeout, and a second one would only open another connection.
		if r.inFlight.CompareAndSwap(false, true) {
			go func() {
				defer r.inFlight.Store(false)
				res := r.poll(ctx)
				if ctx.Err() != nil {
					return
				}
				select {
				case r.pool.out <- res:
				case <-ctx.Done():
				}
			}()
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		case d := <-r.boost:
			boostedUntil = time.Now().Add(d)
			ticker.Reset(max(cfg.Interval/BoostFactor, time.Millisecond))
		}
	}
}

// BoostFactor is how much faster a boosted replica is polled (see Pool.Boost).
const BoostFactor = 4

// Boost polls one replica BoostFactor times as often for d: the engine asks for it when a
// replica turns suspect, so that the internal view confirms or clears it sooner.
func (p *Pool) Boost(name string, d time.Duration) {
	p.mu.Lock()
	r := p.readers[name]
	p.mu.Unlock()
	if r == nil {
		return
	}
	select {
	case r.boost <- d:
	default:
	}
}

func (r *reader) timeout() time.Duration {
	cfg := r.pool.cfg
	t := 8 * time.Duration(r.baseline.Load())
	return min(max(t, cfg.MinTimeout), cfg.Timeout)
}

func (r *reader) poll(ctx context.Context) Result {
	res := Result{Replica: r.name, Sent: time.Now()}
	timeout := r.timeout()
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	hb, kind, err := r.fetch(pctx)
	res.Latency = time.Since(res.Sent)
	if kind == Unreachable && pctx.Err() != nil && res.Latency > timeout+lateSlack {
		kind = Late
	}
	res.Kind, res.Err, res.HB = kind, err, hb
	switch kind {
	case OK:
		old := r.baseline.Load()
		if old == 0 {
			r.baseline.Store(int64(res.Latency))
		} else {
			r.baseline.Store(old + (int64(res.Latency)-old)/16)
		}
		res.Stale, res.SeqAge = r.track(hb, res.Sent)
	case Invalid:
		r.pool.Invalid.Add(1)
	}
	return res
}

// track follows seq and says whether it has stopped moving.
func (r *reader) track(hb *heartbeat.Heartbeat, now time.Time) (bool, time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return trackSeq(&r.lastSeq, &r.seqChanged, &r.polls, hb, now, r.pool.cfg)
}

// trackSeq is the staleness rule, kept apart to be tested with a fake clock: seq is stale
// when it has not changed for more than StaleTicks of the heartbeat's own tick (and more
// than two poll intervals, so that a tick longer than the poll interval is not stale).
func trackSeq(lastSeq *uint64, changed *time.Time, polls *int, hb *heartbeat.Heartbeat, now time.Time, cfg Config) (bool, time.Duration) {
	*polls++
	if *polls == 1 || hb.Seq != *lastSeq {
		*lastSeq = hb.Seq
		*changed = now
		return false, 0
	}
	age := now.Sub(*changed)
	tick := time.Duration(hb.Tick)
	if tick <= 0 {
		tick = 100 * time.Millisecond
	}
	limit := max(time.Duration(cfg.StaleTicks)*tick, 2*cfg.Interval)
	return age > limit, age
}

// fetch is Fetch that skips decoding a body identical to the last one: with the plugin's
// default tick (100 ms) four polls in five at 20 ms return the same heartbeat, and decoding
// JSON is most of a poll's cost.
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

// Fetch gets and decodes one heartbeat. Every failure is classified, never a panic.
func Fetch(ctx context.Context, client *http.Client, url string) (*heartbeat.Heartbeat, Kind, error) {
	body, kind, err := get(ctx, client, url)
	if err != nil {
		return nil, kind, err
	}
	hb, err := heartbeat.Parse(body)
	if err != nil {
		return nil, Invalid, err
	}
	return hb, OK, nil
}

// get reads the body of GET url, at most heartbeat.MaxBodyBytes+1 bytes (Parse rejects
// more), classifying a failure as Unreachable.
func get(ctx context.Context, client *http.Client, url string) ([]byte, Kind, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, Invalid, err
	}
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, Unreachable, fmt.Errorf("no answer within the poll timeout")
		}
		return nil, Unreachable, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, Unreachable, fmt.Errorf("GET %s: status %s", heartbeat.Path, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, heartbeat.MaxBodyBytes+1))
	if err != nil {
		if ctx.Err() != nil {
			return nil, Unreachable, fmt.Errorf("body not read within the poll timeout")
		}
		return nil, Unreachable, fmt.Errorf("reading the body: %w", err)
	}
	return body, OK, nil
}

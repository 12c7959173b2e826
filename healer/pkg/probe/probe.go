// Package probe is the healer's external view: synthetic queries sent straight to each
// replica's own address (never the Service VIP) on a steady schedule.
//
// Every probe runs in its own goroutine, so a slow or hung replica never delays the next
// probe; the number in flight per replica is bounded, and one token bucket caps the
// queries per second of all probes together so the healer's load on CoreDNS stays
// negligible however many replicas and checks there are.
package probe

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/time/rate"

	"github.com/dnspulse/dnspulse/healer/pkg/replica"
)

// Result is the outcome of one probe.
type Result struct {
	Replica string
	// Check indexes Config.Checks.
	Check int
	// Sent is when the query left; Latency how long the reply took (or the timeout).
	Sent    time.Time
	Latency time.Duration
	// Err is set when no usable reply came: Timeout says whether it was a timeout, Late
	// that the healer itself stalled past the deadline (inconclusive, see ErrLate).
	Err     error
	Timeout bool
	Late    bool
	Rcode   int
	// AnswerKey is the answer set, canonical (see AnswerKey).
	AnswerKey string
	// TCP says the UDP answer was truncated and the result is the TCP retry's.
	TCP bool
	// Failure says what is wrong with the reply by the check's own expectation; "" when
	// the reply meets it (agreement with the majority is judged by the detector).
	Failure string
	// Canary results: CanaryOK and CanaryWhy from the FreshnessSource.
	Canary    bool
	CanaryOK  bool
	CanaryWhy string
}

// OK says whether the probe got a reply that meets the check's own expectation.
func (r Result) OK() bool { return r.Err == nil && r.Failure == "" }

// Config is shared by the probers of every replica.
type Config struct {
	Checks []Check
	// Freshness, when set, adds a CNAME check of its Question to every replica.
	Freshness replica.FreshnessSource
	Interval  time.Duration
	// Timeout is the hard bound of one probe.
	Timeout time.Duration
	// MinTimeout is the floor of the adaptive timeout: a probe gives up after
	// clamp(8 x the replica's own latency baseline, MinTimeout, Timeout), so a hung
	// replica is noticed in tens of milliseconds while a slow network still gets Timeout.
	MinTimeout time.Duration
	// MaxQPS caps all probes together; a probe over the cap is skipped, not delayed.
	MaxQPS float64
	// MaxInFlight bounds the probes outstanding per replica (0: derived from the timeout).
	MaxInFlight int
}

// Pool runs one prober per replica and sends every result to Results.
type Pool struct {
	cfg     Config
	limiter *rate.Limiter
	out     chan<- Result

	mu      sync.Mutex
	probers map[string]*prober
	// Skipped counts probes not sent because of the qps cap or the in-flight bound.
	Skipped atomic.Uint64
}

// NewPool makes a pool that sends results to out (the caller drains it).
func NewPool(cfg Config, out chan<- Result) *Pool {
	if cfg.Freshness != nil {
		cfg.Checks = append(append([]Check(nil), cfg.Checks...), Check{
			Name: dns.Fqdn(cfg.Freshness.Question()), Type: dns.TypeCNAME, Rcode: dns.RcodeSuccess, Canary: true,
		})
	}
	if cfg.MinTimeout <= 0 || cfg.MinTimeout > cfg.Timeout {
		cfg.MinTimeout = cfg.Timeout
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = len(cfg.Checks) * (int(cfg.Timeout/cfg.Interval) + 2)
	}
	burst := int(cfg.MaxQPS / 10)
	if burst < len(cfg.Checks) {
		burst = len(cfg.Checks)
	}
	return &Pool{
		cfg:     cfg,
		limiter: rate.NewLimiter(rate.Limit(cfg.MaxQPS), burst),
		out:     out,
		probers: make(map[string]*prober),
	}
}

// Checks is the list Result.Check indexes (the configured checks plus the canary).
func (p *Pool) Checks() []Check { return p.cfg.Checks }

// Sync starts probers for new replicas (or replicas whose address changed) and stops
// those of replicas that are gone. Probers end when ctx ends.
func (p *Pool) Sync(ctx context.Context, targets []replica.Target) {
	p.mu.Lock()
	defer p.mu.Unlock()
	seen := make(map[string]bool, len(targets))
	for _, t := range targets {
		seen[t.Name] = true
		if old, ok := p.probers[t.Name]; ok {
			if old.addr == t.DNSAddr {
				continue
			}
			old.stop()
			delete(p.probers, t.Name)
		}
		if t.DNSAddr == "" {
			continue
		}
		pr := &prober{pool: p, name: t.Name, addr: t.DNSAddr, boost: make(chan time.Duration, 1)}
		pctx, cancel := context.WithCancel(ctx)
		pr.cancel = cancel
		p.probers[t.Name] = pr
		go pr.run(pctx)
	}
	for name, pr := range p.probers {
		if !seen[name] {
			pr.stop()
			delete(p.probers, name)
		}
	}
}

type prober struct {
	pool   *Pool
	name   string
	addr   string
	cancel context.CancelFunc
	boost  chan time.Duration

	inFlight atomic.Int32
	// baseline is the EWMA of this replica's successful probe latency in nanoseconds.
	baseline atomic.Int64
}

func (pr *prober) stop() { pr.cancel() }

func (pr *prober) run(ctx context.Context) {
	cfg := pr.pool.cfg
	var mux *udpMux
	defer func() {
		if mux != nil {
			mux.close()
		}
	}()
	// A random phase spreads the replicas' probes over the interval.
	phase := time.Duration(rand.Int64N(int64(cfg.Interval)))
	timer := time.NewTimer(phase)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return
	case <-timer.C:
	}
	ticker := time.NewTicker(cfg.Interval)
	defer ticker.Stop()
	var boostedUntil time.Time
	for {
		if !boostedUntil.IsZero() && time.Now().After(boostedUntil) {
			boostedUntil = time.Time{}
			ticker.Reset(cfg.Interval)
		}
		if mux == nil {
			m, err := dialMux(pr.addr)
			if err != nil {
				for i := range cfg.Checks {
					pr.emit(ctx, Result{Replica: pr.name, Check: i, Sent: time.Now(), Err: err, Canary: cfg.Checks[i].Canary})
				}
			} else {
				mux = m
			}
		}
		if mux != nil {
			for i := range cfg.Checks {
				if int(pr.inFlight.Load()) >= cfg.MaxInFlight || !pr.pool.limiter.Allow() {
					pr.pool.Skipped.Add(1)
					continue
				}
				pr.inFlight.Add(1)
				go pr.probe(ctx, mux, i)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		case d := <-pr.boost:
			boostedUntil = time.Now().Add(d)
			ticker.Reset(max(cfg.Interval/BoostFactor, time.Millisecond))
		}
	}
}

// BoostFactor is how much faster a boosted replica is probed (see Pool.Boost).
const BoostFactor = 4

// Boost probes one replica BoostFactor times as often for d: the engine asks for it when
// a replica turns suspect, so that the evidence for or against a verdict arrives sooner.
// The global qps cap still applies.
func (p *Pool) Boost(name string, d time.Duration) {
	p.mu.Lock()
	pr := p.probers[name]
	p.mu.Unlock()
	if pr == nil {
		return
	}
	select {
	case pr.boost <- d:
	default: // a boost is already pending
	}
}

// timeout is the adaptive per-probe timeout (see Config.MinTimeout).
func (pr *prober) timeout() time.Duration {
	cfg := pr.pool.cfg
	t := 8 * time.Duration(pr.baseline.Load())
	if t < cfg.MinTimeout {
		t = cfg.MinTimeout
	}
	if t > cfg.Timeout {
		t = cfg.Timeout
	}
	return t
}

func (pr *prober) probe(ctx context.Context, mux *udpMux, i int) {
	defer pr.inFlight.Add(-1)
	cfg := pr.pool.cfg
	// Jitter of up to a tenth of the interval keeps probes of many replicas from
	// landing in lockstep while the schedule itself stays steady.
	if j := cfg.Interval / 10; j > 0 {
		t := time.NewTimer(time.Duration(rand.Int64N(int64(j))))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
	c := cfg.Checks[i]
	q := new(dns.Msg)
	q.SetQuestion(c.Name, c.Type)
	q.RecursionDesired = true
	q.SetEdns0(1232, false)

	pctx, cancel := context.WithTimeout(ctx, pr.timeout())
	defer cancel()
	sent := time.Now()
	reply, err := mux.exchange(pctx, q)
	tcp := false
	if err == nil && reply.Truncated {
		tcp = true
		q.Id = dns.Id()
		reply, err = exchangeTCP(pctx, pr.addr, q)
	}
	res := Result{Replica: pr.name, Check: i, Sent: sent, Latency: time.Since(sent), TCP: tcp, Canary: c.Canary}
	if ctx.Err() != nil {
		return // shutting down or replica gone: not a verdict on the replica
	}
	pr.fill(&res, c, reply, err)
	if res.Err == nil {
		pr.observeLatency(res.Latency)
	}
	pr.emit(ctx, res)
}

// fill judges one reply (or error) into res.
func (pr *prober) fill(res *Result, c Check, reply *dns.Msg, err error) {
	Judge(res, c, reply, err, pr.pool.cfg.Freshness)
}

// Judge fills res from a reply or an error: what probe results are made of, kept apart
// from the network so that it can be tested and fuzzed on its own.
func Judge(res *Result, c Check, reply *dns.Msg, err error, fresh replica.FreshnessSource) {
	if err != nil {
		res.Err = err
		res.Timeout = errors.Is(err, errTimeout)
		res.Late = errors.Is(err, ErrLate)
		return
	}
	if reply == nil {
		res.Err = errors.New("no reply")
		return
	}
	res.Rcode = reply.Rcode
	res.AnswerKey = AnswerKey(reply.Answer)
	res.Failure = judge(c, reply)
	if c.Canary && fresh != nil && res.Failure == "" {
		target := cnameTarget(reply.Answer, c.Name)
		if target == "" {
			res.CanaryWhy = "no CNAME for " + c.Name
		} else {
			res.CanaryOK, res.CanaryWhy = fresh.Accept(target, res.Sent)
		}
	}
}

func (pr *prober) observeLatency(d time.Duration) {
	old := pr.baseline.Load()
	if old == 0 {
		pr.baseline.Store(int64(d))
		return
	}
	// alpha = 1/16: a few slow answers barely move it; a lasting change does.
	pr.baseline.Store(old + (int64(d)-old)/16)
}

func (pr *prober) emit(ctx context.Context, r Result) {
	select {
	case pr.pool.out <- r:
	case <-ctx.Done():
	}
}

// Package probe is the healer's external view: synthetic queries sent straight to each
// replica's own address (never the Service VIP) on a steady schedule (package schedule).
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

	"github.com/dnspulse/dnspulse/healer/internal/check"
	"github.com/dnspulse/dnspulse/healer/internal/config"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
	"github.com/dnspulse/dnspulse/healer/internal/schedule"
)

// Result is the outcome of one probe.
type Result struct {
	Replica string
	// Check indexes Pool.Checks.
	Check int
	// Sent is when the query left; Latency how long the reply took (or the timeout).
	Sent    time.Time
	Latency time.Duration
	// Err is set when no usable reply came: Timeout says whether it was a timeout, Late
	// that the healer itself stalled past the deadline (inconclusive, see ErrLate).
	Err     error
	Timeout bool
	Late    bool
	// LateReply: the reply to a probe that already timed out (reported before, with the
	// same Check and Sent) came after all, Latency after it was sent: the replica is alive
	// but slow, or was stalled (docs/design.md, R9).
	LateReply bool
	Rcode     int
	// AnswerKey is the answer set, canonical (see check.AnswerKey).
	AnswerKey string
	// TTL is the smallest TTL of the answer records (0 without any): how long a cache may
	// still serve it, which tells a cached answer from a fresh one.
	TTL time.Duration
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

// BoostFactor is how much faster a boosted replica is probed (see Pool.Boost).
const BoostFactor = 4

// Pool probes every replica with every check and sends every result to its channel.
type Pool struct {
	cfg         config.Probe
	checks      []check.Check
	fresh       replica.FreshnessSource
	maxInFlight int
	limiter     *rate.Limiter
	out         chan<- Result
	// Set holds a prober per replica; its Boost probes one replica BoostFactor times as
	// often for a while (the global qps cap still applies).
	*schedule.Set[*prober]
	// Skipped counts probes not sent because of the qps cap or the in-flight bound.
	Skipped atomic.Uint64
}

// NewPool makes a pool that sends results to out (the caller drains it). With fresh set,
// every replica is also asked the canary's question (type CNAME).
func NewPool(cfg config.Probe, checks []check.Check, fresh replica.FreshnessSource, out chan<- Result) *Pool {
	checks = append([]check.Check(nil), checks...)
	if fresh != nil {
		checks = append(checks, check.Check{Name: dns.Fqdn(fresh.Question()), Type: dns.TypeCNAME, Rcode: dns.RcodeSuccess, Canary: true})
	}
	burst := max(cfg.MaxQPS/10, len(checks))
	p := &Pool{
		cfg: cfg, checks: checks, fresh: fresh, out: out,
		maxInFlight: len(checks) * (int(cfg.Timeout/cfg.Interval) + 2),
		limiter:     rate.NewLimiter(rate.Limit(cfg.MaxQPS), burst),
	}
	p.Set = schedule.NewSet(cfg.Interval.D(), BoostFactor, cfg.MinTimeout.D(), cfg.Timeout.D(), p.newProber, (*prober).round)
	return p
}

// Checks is the list Result.Check indexes (the configured checks plus the canary).
func (p *Pool) Checks() []check.Check { return p.checks }

// Sync starts probing new replicas (or replicas whose address changed) and stops probing
// those that are gone. The first call starts the pool, which runs until ctx ends.
func (p *Pool) Sync(ctx context.Context, targets []replica.Target) {
	p.Set.Sync(ctx, targets, func(t replica.Target) string { return t.DNSAddr })
}

// prober probes one replica over one UDP socket (udpMux), opened on the first round and
// closed when the replica is gone.
type prober struct {
	*schedule.Worker
	pool     *Pool
	mu       sync.Mutex
	mux      *udpMux
	inFlight atomic.Int32
}

func (p *Pool) newProber(w *schedule.Worker) *prober {
	pr := &prober{Worker: w, pool: p}
	context.AfterFunc(w.Ctx, pr.closeMux)
	return pr
}

func (pr *prober) closeMux() {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if pr.mux != nil {
		pr.mux.close()
		pr.mux = nil
	}
}

// round sends every check once (each in its own goroutine); the next round is due one
// interval later.
func (pr *prober) round() time.Time {
	p := pr.pool
	pr.mu.Lock()
	if pr.Ctx.Err() != nil {
		pr.mu.Unlock()
		return time.Time{}
	}
	if pr.mux == nil {
		m, err := dialMux(pr.Addr)
		if err != nil {
			pr.mu.Unlock()
			for i := range p.checks {
				go pr.emit(Result{Replica: pr.Name, Check: i, Sent: time.Now(), Err: err, Canary: p.checks[i].Canary})
			}
			return time.Time{}
		}
		pr.mux = m
	}
	mux := pr.mux
	pr.mu.Unlock()
	for i := range p.checks {
		if int(pr.inFlight.Load()) >= p.maxInFlight || !p.limiter.Allow() {
			p.Skipped.Add(1)
			continue
		}
		pr.inFlight.Add(1)
		go pr.probe(mux, i)
	}
	return time.Time{}
}

func (pr *prober) probe(mux *udpMux, i int) {
	defer pr.inFlight.Add(-1)
	ctx := pr.Ctx
	p := pr.pool
	// Jitter of up to a tenth of the interval keeps probes of many replicas from
	// landing in lockstep while the schedule itself stays steady.
	if j := p.cfg.Interval.D() / 10; j > 0 {
		t := time.NewTimer(time.Duration(rand.Int64N(int64(j))))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
	c := p.checks[i]
	q := new(dns.Msg)
	q.SetQuestion(c.Name, c.Type)
	q.RecursionDesired = true
	q.SetEdns0(1232, false)

	pctx, cancel := context.WithTimeout(ctx, pr.Timeout.Get())
	defer cancel()
	sent := time.Now()
	reply, err := mux.exchange(pctx, q, func(reply *dns.Msg, at time.Time) {
		res := Result{Replica: pr.Name, Check: i, Sent: sent, Latency: at.Sub(sent), LateReply: true, Canary: c.Canary}
		Judge(&res, c, reply, nil, p.fresh)
		pr.Timeout.Observe(res.Latency) // the replica's real latency: the timeout follows it
		go pr.emit(res)                 // the mux's read loop must not wait for the engine
	})
	tcp := false
	if err == nil && reply.Truncated {
		tcp = true
		q.Id = dns.Id()
		reply, err = exchangeTCP(pctx, pr.Addr, q)
	}
	res := Result{Replica: pr.Name, Check: i, Sent: sent, Latency: time.Since(sent), TCP: tcp, Canary: c.Canary}
	if ctx.Err() != nil {
		return // shutting down or replica gone: says nothing of the replica
	}
	Judge(&res, c, reply, err, p.fresh)
	if res.Err == nil {
		pr.Timeout.Observe(res.Latency)
	}
	pr.emit(res)
}

func (pr *prober) emit(r Result) {
	select {
	case pr.pool.out <- r:
	case <-pr.Ctx.Done():
	}
}

// Judge fills res from a reply or an error: what probe results are made of, kept apart
// from the network so that it can be tested and fuzzed on its own.
func Judge(res *Result, c check.Check, reply *dns.Msg, err error, fresh replica.FreshnessSource) {
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
	res.AnswerKey = check.AnswerKey(reply.Answer)
	res.TTL = check.MinTTL(reply.Answer)
	res.Failure = c.Failure(reply)
	if c.Canary && fresh != nil && res.Failure == "" {
		target := check.CNAMETarget(reply.Answer, c.Name)
		if target == "" {
			res.CanaryWhy = "no CNAME for " + c.Name
		} else {
			res.CanaryOK, res.CanaryWhy = fresh.Accept(target, res.Sent, res.TTL)
		}
	}
}

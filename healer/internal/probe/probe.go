// Package probe is the healer's external view: synthetic queries sent straight to each
// replica's own address (never the Service VIP), every check every interval.
//
// One goroutine (loop.go) sends and receives every probe of every replica, in passes at
// most a millisecond apart: it reads the replies waiting in a few shared sockets, judges
// the probes whose deadlines passed, and sends the probes now due, in batches of dozens per
// system call (conn.go). A probe is a slot in its replica's ring and an entry in one heap of
// deadlines: no goroutine, timer or context of its own. Its query was packed once per check
// (only the ID changes), and a reply that is the same as the previous one from that
// replica is not unpacked again (wire.go). So a probe costs a few microseconds of CPU, and
// 1,000 replicas probed every 20 ms fit in a fraction of a core.
//
// Results go to a Mailbox the engine empties: a busy engine never delays a probe or its
// deadline. One token bucket may cap the probes per second of all replicas together
// (--max-probe-qps); the schedule then stretches rather than skipping probes at random.
package probe

import (
	"context"
	"errors"
	"math"
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

// errTimeout is what a probe that got no reply in time reports.
var errTimeout = errors.New("timeout")

// ErrLate is what a probe reports when its deadline was judged much later than it was due
// (the healer itself was not running: an overloaded node, a long GC), or when the healer
// could not send it (its own buffers full). Such a probe proves nothing about the replica
// and is not counted.
var ErrLate = errors.New("healer stalled past the probe deadline: inconclusive")

// lateWindow is how long after its timeout a probe's reply is still taken as a late reply.
const lateWindow = time.Second

// Pool probes every replica with every check.
type Pool struct {
	cfg     config.Probe
	checks  []check.Check
	queries [][]byte // each check's query packed once, ID 0
	fresh   replica.FreshnessSource
	epoch   time.Time // the loop's clock counts nanoseconds since then
	// Results receives every probe's result; the engine takes them.
	Results *schedule.Mailbox[Result]
	// Skipped counts probes not sent because of the qps cap or the in-flight bound.
	Skipped atomic.Uint64

	start sync.Once
	ctx   context.Context
	wake  chan struct{}

	mu      sync.Mutex
	targets map[string]*target
	rounds  *schedule.Queue[*target]
	due     deadlineHeap
	socks   [2][]*sock // by family: IPv4, IPv6
	limiter *rate.Limiter
	// interval is the schedule kept (--probe-interval, or longer under --max-probe-qps);
	// maxInFlight bounds the probes of one replica awaiting their reply.
	interval    time.Duration
	maxInFlight int
	// pending counts the slots in use (awaiting a reply in time, over TCP, or late): the
	// loop reads the sockets every pass while any is.
	pending int

	// Owned by the loop goroutine.
	out     []Result
	rmsgs   []inMsg
	scratch []byte
}

// NewPool makes a pool; its first Sync starts it. With fresh set, every replica is also
// asked the canary's question (type CNAME).
func NewPool(cfg config.Probe, checks []check.Check, fresh replica.FreshnessSource) (*Pool, error) {
	checks = append([]check.Check(nil), checks...)
	if fresh != nil {
		checks = append(checks, check.Check{Name: dns.Fqdn(fresh.Question()), Type: dns.TypeCNAME, Rcode: dns.RcodeSuccess, Canary: true})
	}
	p := &Pool{
		cfg: cfg, checks: checks, fresh: fresh, epoch: time.Now(),
		Results: schedule.NewMailbox[Result](), wake: make(chan struct{}, 1),
		targets: map[string]*target{}, rounds: schedule.NewQueue[*target](cfg.Interval.D()),
		interval: cfg.Interval.D(),
	}
	for _, c := range checks {
		q, err := packQuery(c)
		if err != nil {
			return nil, err
		}
		p.queries = append(p.queries, q)
	}
	if cfg.MaxQPS > 0 {
		p.limiter = rate.NewLimiter(rate.Limit(cfg.MaxQPS), max(cfg.MaxQPS/10, len(checks)))
	}
	p.maxInFlight = len(checks) * (int(cfg.Timeout.D()/max(cfg.Interval.D(), 1)) + 2)
	return p, nil
}

// Checks is the list Result.Check indexes (the configured checks plus the canary).
func (p *Pool) Checks() []check.Check { return p.checks }

// Schedule is what the pool keeps: every replica probed with every check every interval
// (longer than --probe-interval only under --max-probe-qps), and the probes per second
// that makes.
func (p *Pool) Schedule() (interval time.Duration, replicas int, perSecond float64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.targets)
	return p.interval, n, float64(n*len(p.checks)) / p.interval.Seconds()
}

// Sync starts probing new replicas (or replicas whose address changed) and stops probing
// those that are gone. The first call starts the pool, which runs until ctx ends.
func (p *Pool) Sync(ctx context.Context, targets []replica.Target) {
	p.start.Do(func() {
		p.ctx = ctx
		go p.run(ctx)
	})
	want := make(map[string]string, len(targets))
	for _, t := range targets {
		if t.DNSAddr != "" {
			want[t.Name] = t.DNSAddr
		}
	}
	p.mu.Lock()
	for name, t := range p.targets {
		if a, ok := want[name]; !ok || a != t.dnsAddr {
			p.removeLocked(t)
		}
	}
	var add []*target
	for name, a := range want {
		if _, ok := p.targets[name]; !ok {
			add = append(add, &target{name: name, dnsAddr: a})
		}
	}
	p.mu.Unlock()
	for _, t := range add {
		t.resolve() // may ask DNS for a host name: not under the lock
	}
	p.mu.Lock()
	for _, t := range add {
		if _, ok := p.targets[t.name]; !ok {
			p.addLocked(t)
		}
	}
	p.rescheduleLocked()
	p.mu.Unlock()
	p.poke()
}

// rescheduleLocked sets the interval the pool can keep: --probe-interval, unless
// --max-probe-qps cannot pay for it; then every replica is probed less often, evenly.
func (p *Pool) rescheduleLocked() {
	iv := p.cfg.Interval.D()
	if p.cfg.MaxQPS > 0 && len(p.targets) > 0 {
		need := time.Duration(math.Ceil(float64(len(p.targets)*len(p.checks)) / float64(p.cfg.MaxQPS) * float64(time.Second)))
		iv = max(iv, need)
	}
	p.interval = iv
	p.rounds.SetInterval(iv)
	p.maxInFlight = len(p.checks) * (int(p.cfg.Timeout.D()/iv) + 2)
}

// Boost probes one replica BoostFactor times as often for d: the engine asks for it when a
// replica turns suspect, so that the evidence for or against a judgment arrives sooner
// (the qps cap still applies).
func (p *Pool) Boost(name string, d time.Duration) {
	p.mu.Lock()
	t := p.targets[name]
	moved := t != nil && p.rounds.Boost(t, BoostFactor, d, time.Now())
	p.mu.Unlock()
	if moved {
		p.poke()
	}
}

func (p *Pool) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// addLocked starts probing t, at a random phase within the interval so that many replicas
// spread over it, through a socket of its address family.
func (p *Pool) addLocked(t *target) {
	t.slots = make([]slot, slotsFor(len(p.checks), p.cfg.Interval.D()))
	t.cache = make([]answerCache, len(p.checks))
	t.timeout = schedule.Timeout{Min: p.cfg.MinTimeout.D(), Max: p.cfg.Timeout.D()}
	if t.timeout.Min <= 0 || t.timeout.Min > t.timeout.Max {
		t.timeout.Min = t.timeout.Max
	}
	if t.err == nil {
		t.sock, t.err = p.sockFor(t.addr)
	}
	if t.sock != nil {
		t.sock.byAddr[t.addr] = t
	}
	p.targets[t.name] = t
	p.rounds.Add(t, time.Now().Add(time.Duration(rand.Int64N(int64(max(p.interval, 1))))))
}

// removeLocked stops probing t: its probes in flight are forgotten (a replica that is gone
// or moved says nothing by them).
func (p *Pool) removeLocked(t *target) {
	t.gone = true
	p.rounds.Remove(t)
	delete(p.targets, t.name)
	for i := range t.slots {
		if t.slots[i].state != free {
			t.slots[i].state = free
			p.pending--
		}
	}
	if s := t.sock; s != nil {
		delete(s.byAddr, t.addr)
		if len(s.byAddr) == 0 {
			s.close()
			fam := &p.socks[famIndex(s.v6)]
			for i, x := range *fam {
				if x == s {
					*fam = append((*fam)[:i], (*fam)[i+1:]...)
					break
				}
			}
		}
	}
}

package pulse

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coredns/coredns/plugin/pkg/reuseport"

	"github.com/dnspulse/dnspulse/heartbeat"

	"github.com/miekg/dns"
)

// config is what the Corefile sets for one pulse listener.
type config struct {
	addr           string
	tick           time.Duration
	probeName      string // empty: the synthetic default under the block's zone
	probeType      uint16
	probeTimeout   time.Duration // 0: the tick, at least 100ms and at most 1s
	replica        string
	servfailRatio  float64
	p99            time.Duration
	minQueries     uint64
	lease          bool
	leaseNamespace string
	leaseInterval  time.Duration
	maxWatchers    int           // streams (GET /pulse?watch=1) served at once; 0: none
	gate           string        // readiness_gate: the condition pulse opens on its own pod; "": off
	maxDrain       time.Duration // readiness_gate_max_drain
}

// maxWatchersLimit bounds the watchers option.
const maxWatchersLimit = 1024

func defaultConfig() config {
	return config{
		addr:          ":9155",
		tick:          50 * time.Millisecond,
		probeType:     dns.TypeA,
		servfailRatio: 0.25,
		p99:           500 * time.Millisecond,
		minQueries:    20,
		leaseInterval: 5 * time.Second,
		maxWatchers:   8,
		maxDrain:      defaultMaxDrain,
	}
}

// minDefaultProbeTimeout keeps the default self-probe timeout above what a loaded node's
// scheduler can delay a query answered by pulse itself: a shorter tick makes the heartbeat
// fresher, not the self-probe more impatient.
const minDefaultProbeTimeout = 100 * time.Millisecond

func (c config) selfProbeTimeout() time.Duration {
	if c.probeTimeout > 0 {
		return c.probeTimeout
	}
	return min(max(c.tick, minDefaultProbeTimeout), time.Second)
}

// windowSpans are the heartbeat's windows, in the order of heartbeat.WindowKeys.
var windowSpans = []time.Duration{200 * time.Millisecond, time.Second, 10 * time.Second, 60 * time.Second}

// runner serves one listener for one CoreDNS instance: the ticker (seq, heartbeat,
// self-probe, metrics, lease), the janitor that snapshots the store, and GET /pulse. A
// reload stops it and starts the next instance's runner on the same hub.
type runner struct {
	cfg       config
	hub       *hub
	probeAddr string // host:port of the server's own DNS listener; "" when it cannot be probed
	probeWhy  string // why not

	cancel context.CancelFunc
	wg     sync.WaitGroup
	srv    *http.Server
	ln     net.Listener

	body      atomic.Pointer[[]byte] // the last heartbeat, encoded: GET /pulse only copies it
	line      atomic.Pointer[[]byte] // the same bytes and a newline: a line of the stream
	watch     *watchers
	ctx       context.Context // ends when the runner stops: streams end with it
	lastProbe atomic.Pointer[heartbeat.SelfProbe]
	probeSent atomic.Int64 // when the self-probe in flight was sent (time.Now's UnixNano); 0: none
	lease     *leaser
	gate      *gateKeeper

	// For tests: how long a stream's write may block (0: stuckAfter's rule), and a
	// wrapper of the listener.
	stuck        time.Duration
	wrapListener func(net.Listener) net.Listener
}

func (r *runner) start() error {
	ln, err := reuseport.Listen("tcp", r.cfg.addr)
	if err != nil {
		return fmt.Errorf("pulse: listen %s: %w", r.cfg.addr, err)
	}
	if r.wrapListener != nil {
		ln = r.wrapListener(ln)
	}
	r.ln = ln
	r.watch = newWatchers(r.cfg.maxWatchers)
	mux := http.NewServeMux()
	mux.HandleFunc(heartbeat.Path, r.servePulse)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("OK")) })
	r.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 90 * time.Second}

	ctx, cancel := context.WithCancel(context.Background())
	r.ctx, r.cancel = ctx, cancel
	r.tickOnce(time.Now()) // a heartbeat exists from the first request on
	r.wg.Add(3)
	go func() { defer r.wg.Done(); r.srv.Serve(ln) }()
	go func() { defer r.wg.Done(); r.janitor(ctx) }()
	go func() { defer r.wg.Done(); r.ticker(ctx) }()
	if r.lease != nil {
		r.wg.Add(1)
		go func() { defer r.wg.Done(); r.lease.run(ctx, r.cfg.leaseInterval) }()
	}
	if r.gate != nil {
		r.wg.Add(1)
		go func() { defer r.wg.Done(); r.gate.run(ctx) }()
	}
	return nil
}

// stop ends every goroutine of the runner and frees its port.
func (r *runner) stop() error {
	if r.cancel == nil {
		return nil
	}
	r.cancel()
	// Requests in progress finish (a heartbeat is written in microseconds); then the rest
	// is closed. Shutdown alone waits for a connection that is open but has sent no request
	// yet (a poller that just connected) for up to its whole deadline, and a reload waits
	// with it.
	ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	var err error
	if r.srv.Shutdown(ctx) != nil {
		err = r.srv.Close()
	}
	r.wg.Wait()
	r.cancel = nil
	return err
}

// shutdownGrace is how long stop lets requests in progress finish.
const shutdownGrace = 100 * time.Millisecond

func (r *runner) servePulse(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	watch, err := watchRequested(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if watch && req.Method == http.MethodGet {
		r.serveWatch(w, req)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(*r.body.Load())
}

// janitor snapshots the store's counters and recalibrates the clock. It runs at half the
// fine snapshot interval, apart from the ticker, so a long tick does not coarsen the
// windows; a late janitor only makes a window longer, it loses no count.
func (r *runner) janitor(ctx context.Context) {
	t := time.NewTicker(fineWidth / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.hub.clock.calibrate()
			r.hub.store.snapshot(r.hub.now())
		}
	}
}

func (r *runner) ticker(ctx context.Context) {
	t := time.NewTicker(r.cfg.tick)
	defer t.Stop()
	probes := make(chan struct{}, 1)
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			r.tickOnce(now)
			// One self-probe at a time, each in its own goroutine so a hung listener
			// never stops seq from moving; while one is still running (its timeout can
			// be longer than a tick) the tick sends none.
			select {
			case probes <- struct{}{}:
				r.wg.Add(1)
				go func() { defer r.wg.Done(); defer func() { <-probes }(); r.selfProbe(ctx) }()
			default:
			}
		}
	}
}

// tickOnce builds, encodes and publishes the heartbeat for this tick.
func (r *runner) tickOnce(now time.Time) {
	hb := r.build(now, r.hub.seq.Add(1))
	// Encoded once, for GET /pulse and every stream alike: the encoder ends it with the
	// newline that makes it a line of the stream; the body is the same bytes without it.
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(hb); err != nil { // cannot happen with these types
		log.Errorf("encoding heartbeat: %v", err)
		return
	}
	line := buf.Bytes()
	body := line[:len(line)-1]
	r.body.Store(&body)
	r.line.Store(&line)
	r.watch.publish(&line)
	watchersGauge.WithLabelValues(r.cfg.addr).Set(float64(r.watch.count()))
	reportMetrics(r.cfg.addr, hb)
	if r.lease != nil {
		r.lease.update(hb)
	}
}

func (r *runner) build(now time.Time, seq uint64) *heartbeat.Heartbeat {
	mono := r.hub.now()
	hb := &heartbeat.Heartbeat{
		Version: heartbeat.Version,
		Replica: r.cfg.replica,
		Seq:     seq,
		Time:    now.UTC(),
		Started: r.hub.started,
		Tick:    heartbeat.Duration(r.cfg.tick),
		Windows: make(map[string]heartbeat.Window, len(windowSpans)),
		Reasons: []string{},
	}
	for i, span := range windowSpans {
		hb.Windows[heartbeat.WindowKeys[i]] = summarize(r.hub.store.window(mono, span))
	}
	n, oldest := r.hub.inflight.report(r.hub.clock, r.hub.store.inflight(), ticks())
	hb.InFlight = &heartbeat.InFlight{Count: n, OldestMicros: uint64(oldest / time.Microsecond)}
	if p := r.lastProbe.Load(); p != nil {
		hb.SelfProbe = *p
	} else {
		hb.SelfProbe = heartbeat.SelfProbe{OK: true, Error: "no self-probe yet"}
		if r.probeAddr == "" {
			hb.SelfProbe.Error = "self-probe disabled: " + r.probeWhy
		}
	}
	if sent := r.probeSent.Load(); sent != 0 {
		hb.SelfProbe.PendingMicros = uint64(max(now.UnixNano()-sent, 0) / int64(time.Microsecond))
	}
	hb.Reasons = r.cfg.verdict(hb)
	hb.Verdict = heartbeat.VerdictHealthy
	if len(hb.Reasons) > 0 {
		hb.Verdict = heartbeat.VerdictDegraded
	}
	return hb
}

// verdict returns why the heartbeat says degraded; none means healthy. Judged on the 1 s
// window, and only with enough queries to mean something.
func (c config) verdict(hb *heartbeat.Heartbeat) []string {
	reasons := []string{}
	if sp := hb.SelfProbe; !sp.OK {
		reasons = append(reasons, "self-probe failed: "+sp.Error)
	}
	w := hb.Windows[heartbeat.Window1s]
	if w.Queries >= c.minQueries && w.Queries > 0 {
		if w.ServfailRatio > c.servfailRatio {
			reasons = append(reasons, fmt.Sprintf("servfail ratio %.2f > %.2f over %d queries in 1s", w.ServfailRatio, c.servfailRatio, w.Queries))
		}
		if p99 := time.Duration(w.LatencyMicros.P99) * time.Microsecond; p99 > c.p99 {
			reasons = append(reasons, fmt.Sprintf("p99 latency %v > %v over %d queries in 1s", p99, c.p99, w.Queries))
		}
	}
	return reasons
}

// selfProbe sends one query through the server's own DNS listener, as a client would.
func (r *runner) selfProbe(ctx context.Context) {
	if r.probeAddr == "" {
		return
	}
	m := new(dns.Msg)
	m.SetQuestion(r.cfg.probeName, r.cfg.probeType)
	m.RecursionDesired = true
	m.Id = r.hub.probes.next()

	c := &dns.Client{Net: "udp", Timeout: r.cfg.selfProbeTimeout()}
	start := time.Now()
	r.probeSent.Store(start.UnixNano())
	resp, _, err := c.ExchangeContext(ctx, m, r.probeAddr)
	r.probeSent.Store(0)
	if ctx.Err() != nil {
		return // shutting down: not a failure of the serving path
	}
	res := heartbeat.SelfProbe{Time: start.UTC(), LatencyMicros: uint64(time.Since(start) / time.Microsecond)}
	switch {
	case err != nil:
		res.Error = probeError(err)
	case resp.Rcode == dns.RcodeSuccess || resp.Rcode == dns.RcodeNameError:
		res.OK, res.Rcode = true, dns.RcodeToString[resp.Rcode]
	default:
		res.Rcode = kindName(resp.Rcode)
		res.Error = "rcode " + res.Rcode
	}
	r.lastProbe.Store(&res)
	observeSelfProbe(r.cfg.addr, res)
}

func probeError(err error) string {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return err.Error()
}

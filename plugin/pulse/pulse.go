// Package pulse is a CoreDNS plugin that measures every query inside the process
// (latency, rcodes, rcode entropy, the sources of SERVFAIL answers, the queries still in
// flight) at near-zero cost, probes its own DNS listener every tick, and publishes the
// result as a heartbeat: GET /pulse on its own listener, coredns_pulse_* metrics, and
// optionally a Lease.
//
// Data flow: query -> pulse (this package records it) -> heartbeat -> healer.
//
// # What pulse assumes of the chain
//
// Nothing about what the rest of the chain does with the writer and the context once
// ServeDNS has returned. CoreDNS makes no such promise, and in v1.15.0:
//   - cache's serve_stale verify with a timeout (verifyWithTimeout) serves the stale entry
//     and leaves a goroutine running the rest of the chain with a writer that wraps ours;
//     forward, in that goroutine, calls RemoteAddr on it again for every retry, seconds
//     after the client was answered. Its prefetch and immediate serve_stale refreshes run
//     with a writer of their own (no client writer), and the context of the query.
//   - transfer and erratic write AXFR/IXFR replies from a goroutine of their own, which
//     ends before ServeDNS returns; metrics, dnstap and trace wrap the writer and use it
//     only until they return; cancel and timeouts bound the context, never the writer.
//
// A third-party plugin may do anything the cache does. So every object reachable from the
// writer pulse hands down (the recorder) belongs to one query and is never reused (they
// come from slabs that are never refilled, see recorder.go): a late call reaches the
// client's own writer, and what it touches in the recorder is either
// immutable or atomic. The query is counted once, when ServeDNS returns (or panics); a
// write after that is passed on but not counted. pulse passes the context on unchanged
// and keeps nothing of it.
package pulse

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coredns/coredns/plugin"
	clog "github.com/coredns/coredns/plugin/pkg/log"

	"github.com/miekg/dns"
)

var log = clog.NewWithPlugin("pulse")

// Pulse is the plugin handler of one server block.
type Pulse struct {
	Next plugin.Handler
	hub  *hub
	// probeName is the self-probe question, lower case and fully qualified; when
	// answerProbe is set it is the synthetic default name, answered here so the default
	// self-probe puts no load on upstreams.
	probeName   string
	answerProbe bool
	// traced is set when the server block has the trace plugin: only then can a trace
	// span be in the context and want the chain to go through plugin.NextOrFailure.
	traced bool
}

// ServeDNS implements plugin.Handler.
//
// Hot path: no lock; one allocation per 64 queries, a slab of recorders (see recorder.go
// for why they cannot be pooled). Two reads of the CPU's time-stamp counter, a shard
// lookup, a compare-and-swap in and out of the in-flight ring, one for the first rcode,
// and three or four uncontended atomic adds; BenchmarkServeDNS in bench_test.go measures
// it against the same chain without pulse (see BENCHMARKS.md: ~100 ns).
func (p *Pulse) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	if p.hub.probes.has(r.Id) && p.isProbe(r) {
		return p.serveProbe(ctx, w, r)
	}
	if p.Next == nil {
		// pulse alone in a server block: answer as the server answers a block without
		// plugins (REFUSED, written by the server), and count nothing, as if pulse were
		// not there; NextOrFailure would make it a SERVFAIL, and a degraded heartbeat.
		return dns.RcodeRefused, nil
	}
	// Everything live while the rest of the chain runs sits on the query goroutine's
	// stack at its deepest point, and a few hundred bytes more there can make the runtime
	// double (copy) that stack on most queries: the frame is kept small and the work
	// before and after the chain is in begin and done, whose frames exist only then.
	rw := p.begin(w)
	// A panic further down is recovered by the server, which answers SERVFAIL: done,
	// deferred, counts it so and takes the query out of flight.
	status := dns.RcodeServerFailure
	defer p.done(rw, &status)
	var err error
	if !p.traced {
		// plugin.NextOrFailure allocates a writer wrapper per call (to track which plugin
		// wrote); the plugin after pulse is prometheus, whose recorder does that tracking
		// itself. With trace configured, a span may want its child, so the chain goes
		// through NextOrFailure then.
		status, err = p.Next.ServeDNS(ctx, rw, r)
	} else {
		status, err = p.nextOrFailure(ctx, rw, r)
	}
	return status, err
}

// nextOrFailure is out of line so that its frame is not part of ServeDNS's.
//
//go:noinline
func (p *Pulse) nextOrFailure(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	return plugin.NextOrFailure(p.Name(), p.Next, ctx, w, r)
}

// begin makes the query's recorder and counts the query in flight on the current shard.
//
//go:noinline
func (p *Pulse) begin(w dns.ResponseWriter) *recorder {
	start := ticks()
	shard := p.hub.store.shardFor(shardHint())
	sh := &p.hub.store.shards[shard]
	sh.inflight.enter(p.hub.clock.epochOf(start))
	rw := sh.recorders.get()
	rw.ResponseWriter, rw.start, rw.shard = w, start, uint16(shard)
	return rw
}

// done counts the query the recorder saw, with the status the chain returned, and takes
// it out of flight on the shard it entered on. A write to the recorder after this still
// reaches the client's writer but is not counted: the query was, once.
//
//go:noinline
func (p *Pulse) done(rw *recorder, status *int) {
	end := ticks()
	shard := int(rw.shard)
	st := p.hub.store
	st.shards[shard].inflight.exit(p.hub.clock.epochOf(rw.start))
	rcode, wrote := rw.first()
	kind := outcome(wrote, rcode, *status)
	var source uint32
	if kind == dns.RcodeServerFailure {
		source = sourceHash(rw.ResponseWriter.RemoteAddr())
	}
	st.record(shard, p.hub.clock.elapsed(rw.start, end), kind, source)
}

// Name implements plugin.Handler.
func (p *Pulse) Name() string { return "pulse" }

func (p *Pulse) isProbe(r *dns.Msg) bool {
	return len(r.Question) == 1 && strings.EqualFold(r.Question[0].Name, p.probeName)
}

// serveProbe lets the self-probe through the rest of the chain, or answers the synthetic
// default question itself, and keeps it out of the client windows either way.
func (p *Pulse) serveProbe(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	if !p.answerProbe {
		return plugin.NextOrFailure(p.Name(), p.Next, ctx, w, r)
	}
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	if q := r.Question[0]; q.Qtype == dns.TypeTXT || q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY {
		m.Answer = append(m.Answer, &dns.TXT{
			Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET},
			Txt: []string{"dnspulse self-probe"},
		})
	}
	w.WriteMsg(m)
	return dns.RcodeSuccess, nil
}

// hub is what one heartbeat listener address owns across reloads: the traffic store, the
// tick counter and start time, so a reload neither resets the windows nor sends seq back.
type hub struct {
	addr     string
	clock    *clock // store times are relative to its creation
	started  time.Time
	store    *store
	seq      atomic.Uint64
	probes   probeIDs // the ids of the last self-probes
	inflight *inflightTracker
}

func newHub(addr string, shards int) *hub {
	h := &hub{addr: addr, clock: newClock(), started: time.Now().UTC(), store: newStore(shards), inflight: newInflightTracker()}
	h.store.snapshot(0)
	return h
}

func (h *hub) now() time.Duration { return h.clock.now() }

var (
	hubsMu sync.Mutex
	hubs   = map[string]*hub{}
)

// hubFor returns the hub of a listener address, creating it on first use.
func hubFor(addr string, shards int) *hub {
	hubsMu.Lock()
	defer hubsMu.Unlock()
	if h, ok := hubs[addr]; ok {
		return h
	}
	h := newHub(addr, shards)
	hubs[addr] = h
	return h
}

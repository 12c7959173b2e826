// Package pulse is a CoreDNS plugin that measures every query inside the process
// (latency, rcodes, rcode entropy, the sources of SERVFAIL answers) at near-zero cost,
// probes its own DNS listener every tick, and publishes the result as a heartbeat:
// GET /pulse on its own listener, coredns_pulse_* metrics, and optionally a Lease.
//
// Data flow: query -> pulse (this package records it) -> heartbeat -> healer.
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
	ot "github.com/opentracing/opentracing-go"
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
	// traced is set when the server block has the trace plugin; only then can a span be
	// in the context, and looking for one costs a walk up the context chain per query.
	traced bool
}

// ServeDNS implements plugin.Handler.
//
// Hot path: no lock and no allocation (the recorder is pooled). Two reads of the CPU's
// time-stamp counter, a shard lookup and a few uncontended atomic adds; BenchmarkServeDNS in bench_test.go measures
// it against the same chain without pulse (see BENCHMARKS.md).
func (p *Pulse) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	if id := p.hub.probeID.Load(); id != 0 && uint32(r.Id)+1 == id && p.isProbe(r) {
		return p.serveProbe(ctx, w, r)
	}
	start := ticks()
	rw := getRecorder(w)
	status, err := p.next(ctx, rw, r)
	end := ticks()
	kind := outcome(rw.wrote, rw.rcode, status)
	var source uint32
	if kind == dns.RcodeServerFailure {
		source = sourceHash(w.RemoteAddr())
	}
	putRecorder(rw)
	p.hub.store.record(shardHint(), p.hub.clock.since(end), p.hub.clock.elapsed(start, end), kind, source)
	return status, err
}

// Name implements plugin.Handler.
func (p *Pulse) Name() string { return "pulse" }

// next calls the rest of the chain. plugin.NextOrFailure allocates a writer wrapper per
// call (to track which plugin wrote), which would be pulse's only allocation; the plugin
// right after pulse is prometheus, whose own recorder does that tracking, so pulse calls
// it directly, and goes through NextOrFailure only when a trace span wants a child.
func (p *Pulse) next(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	if p.Next == nil || (p.traced && ot.SpanFromContext(ctx) != nil) {
		return plugin.NextOrFailure(p.Name(), p.Next, ctx, w, r)
	}
	return p.Next.ServeDNS(ctx, w, r)
}

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
	addr    string
	clock   *clock // store times are relative to its creation
	started time.Time
	store   *store
	seq     atomic.Uint64
	// probeID is the DNS id of the self-probe in flight plus one; 0 when none is.
	probeID atomic.Uint32
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
	h := &hub{addr: addr, clock: newClock(), started: time.Now().UTC(), store: newStore(shards)}
	h.store.prepare(0)
	hubs[addr] = h
	return h
}

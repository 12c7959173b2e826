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
// Hot path: no lock and no allocation (the recorder is pooled). Two reads of the CPU's
// time-stamp counter, a shard lookup and a few uncontended atomic adds; BenchmarkServeDNS
// in bench_test.go measures it against the same chain without pulse (see BENCHMARKS.md).
func (p *Pulse) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	if id := p.hub.probeID.Load(); id != 0 && uint32(r.Id)+1 == id && p.isProbe(r) {
		return p.serveProbe(ctx, w, r)
	}
	// Everything live while the rest of the chain runs sits on the query goroutine's
	// stack at its deepest point, and a few hundred bytes more there can make the runtime
	// double (copy) that stack on most queries: the frame is kept small and the work
	// after the chain returns is in done, whose frame exists only then.
	rw := getRecorder(w)
	rw.start = ticks()
	var status int
	var err error
	if p.Next != nil && !p.traced {
		// plugin.NextOrFailure allocates a writer wrapper per call (to track which plugin
		// wrote), which would be pulse's only allocation; the plugin after pulse is
		// prometheus, whose recorder does that tracking itself. With trace configured, a
		// span may want its child, so the chain goes through NextOrFailure then.
		status, err = p.Next.ServeDNS(ctx, rw, r)
	} else {
		status, err = p.nextOrFailure(ctx, rw, r)
	}
	p.done(rw, status)
	return status, err
}

// nextOrFailure is out of line so that its frame is not part of ServeDNS's.
//
//go:noinline
func (p *Pulse) nextOrFailure(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	return plugin.NextOrFailure(p.Name(), p.Next, ctx, w, r)
}

// done records the query the recorder saw and returns the recorder to its pool.
//
//go:noinline
func (p *Pulse) done(rw *recorder, status int) {
	end := ticks()
	kind := outcome(rw.wrote, rw.rcode, status)
	var source uint32
	if kind == dns.RcodeServerFailure {
		source = sourceHash(rw.ResponseWriter.RemoteAddr())
	}
	p.hub.store.record(shardHint(), p.hub.clock.elapsed(rw.start, end), kind, source)
	putRecorder(rw)
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
	addr    string
	clock   *clock // store times are relative to its creation
	started time.Time
	store   *store
	seq     atomic.Uint64
	// probeID is the DNS id of the self-probe in flight plus one; 0 when none is.
	probeID atomic.Uint32
}

func newHub(addr string, shards int) *hub {
	h := &hub{addr: addr, clock: newClock(), started: time.Now().UTC(), store: newStore(shards)}
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

package pulse

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/test"

	"github.com/miekg/dns"
)

func newTestPulse(next plugin.Handler) *Pulse {
	return &Pulse{Next: next, hub: newHub("test", 2), probeName: "dnspulse-self-probe.", answerProbe: true}
}

func (p *Pulse) window1s() map[string]uint64 {
	w := summarize(p.hub.store.window(p.hub.now(), time.Second))
	out := map[string]uint64{"queries": w.Queries, "dropped": w.Dropped}
	for k, v := range w.Rcodes {
		out[k] = v
	}
	return out
}

// writeRcode is a handler that writes a reply with rcode and returns ret.
func writeRcode(rcode, ret int) plugin.Handler {
	return test.HandlerFunc(func(_ context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
		m := new(dns.Msg)
		m.SetRcode(r, rcode)
		w.WriteMsg(m)
		return ret, nil
	})
}

// writeBytes answers through ResponseWriter.Write, as some plugins (dnstap replay, proxies) do.
func writeBytes(rcode int) plugin.Handler {
	return test.HandlerFunc(func(_ context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
		m := new(dns.Msg)
		m.SetRcode(r, rcode)
		b, _ := m.Pack()
		w.Write(b)
		return rcode, nil
	})
}

func TestServeDNSRcodePaths(t *testing.T) {
	tests := []struct {
		name       string
		next       plugin.Handler
		wantKind   string
		wantStatus int
		wantErr    bool
	}{
		{"NOERROR written", writeRcode(dns.RcodeSuccess, dns.RcodeSuccess), "NOERROR", 0, false},
		{"NXDOMAIN written", writeRcode(dns.RcodeNameError, dns.RcodeNameError), "NXDOMAIN", 3, false},
		{"SERVFAIL written by a plugin", test.ErrorHandler(), "SERVFAIL", 2, false},
		{"SERVFAIL written by the server", test.NextHandler(dns.RcodeServerFailure, errors.New("upstream down")), "SERVFAIL", 2, true},
		{"REFUSED written by the server", test.NextHandler(dns.RcodeRefused, nil), "REFUSED", 5, false},
		{"FORMERR written by the server", test.NextHandler(dns.RcodeFormatError, nil), "FORMERR", 1, false},
		{"NOTIMP written by the server", test.NextHandler(dns.RcodeNotImplemented, nil), "NOTIMP", 4, false},
		{"dropped: nothing written, 0 returned", test.NextHandler(dns.RcodeSuccess, nil), "dropped", 0, false},
		{"dropped: nothing written, error returned with 0", test.NextHandler(dns.RcodeSuccess, errors.New("x")), "dropped", 0, true},
		{"written wins over returned", writeRcode(dns.RcodeNameError, dns.RcodeServerFailure), "NXDOMAIN", 2, false},
		{"Write([]byte) path", writeBytes(dns.RcodeRefused), "REFUSED", 5, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestPulse(tc.next)
			req := new(dns.Msg)
			req.SetQuestion("example.org.", dns.TypeA)
			rec := dnstest.NewRecorder(&test.ResponseWriter{})
			status, err := p.ServeDNS(context.Background(), rec, req)
			if status != tc.wantStatus || (err != nil) != tc.wantErr {
				t.Fatalf("ServeDNS = %d, %v; want %d, err %v: pulse must pass the chain's result through", status, err, tc.wantStatus, tc.wantErr)
			}
			got := p.window1s()
			if got["queries"] != 1 || got[tc.wantKind] != 1 {
				t.Fatalf("window %v: want one query counted as %s", got, tc.wantKind)
			}
			if tc.wantKind != "dropped" && got["dropped"] != 0 {
				t.Fatalf("window %v: counted as dropped too", got)
			}
		})
	}
}

func TestSelfProbeKeptOutOfWindows(t *testing.T) {
	p := newTestPulse(writeRcode(dns.RcodeSuccess, 0))
	probe := new(dns.Msg)
	probe.SetQuestion("DNSPULSE-self-probe.", dns.TypeA)
	probe.Id = p.hub.probes.next()

	rec := dnstest.NewRecorder(&test.ResponseWriter{})
	if _, err := p.ServeDNS(context.Background(), rec, probe); err != nil {
		t.Fatal(err)
	}
	if rec.Msg == nil || rec.Rcode != dns.RcodeSuccess || len(rec.Msg.Answer) != 1 {
		t.Fatalf("synthetic self-probe not answered by pulse: %v", rec.Msg)
	}
	// A client asking the same name with an id pulse never probed with is client traffic.
	client := probe.Copy()
	for client.Id = probe.Id + 1; p.hub.probes.has(client.Id); client.Id++ {
	}
	p.ServeDNS(context.Background(), dnstest.NewRecorder(&test.ResponseWriter{}), client)
	if got := p.window1s(); got["queries"] != 1 {
		t.Fatalf("window %v: want only the client's query", got)
	}
}

func TestCustomSelfProbeGoesThroughChain(t *testing.T) {
	reached := 0
	next := test.HandlerFunc(func(_ context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
		reached++
		m := new(dns.Msg)
		m.SetReply(r)
		w.WriteMsg(m)
		return 0, nil
	})
	p := newTestPulse(next)
	p.probeName, p.answerProbe = "kubernetes.default.svc.cluster.local.", false
	probe := new(dns.Msg)
	probe.SetQuestion("kubernetes.default.svc.cluster.local.", dns.TypeA)
	probe.Id = p.hub.probes.next()
	p.ServeDNS(context.Background(), dnstest.NewRecorder(&test.ResponseWriter{}), probe)
	if reached != 1 {
		t.Fatal("a custom self-probe must go through the rest of the chain")
	}
	if got := p.window1s(); got["queries"] != 0 {
		t.Fatalf("self-probe counted as client traffic: %v", got)
	}
}

// TestServeDNSAllocatesOnlyRecorderSlabs: the hot path's one allocation is a slab of
// recorders, one per slabSize queries (see recorder.go: recorders cannot be pooled);
// nothing else allocates.
func TestServeDNSAllocatesOnlyRecorderSlabs(t *testing.T) {
	p := newTestPulse(test.NextHandler(dns.RcodeSuccess, nil))
	req := new(dns.Msg)
	req.SetQuestion("example.org.", dns.TypeA)
	w := &test.ResponseWriter{}
	ctx := context.Background()
	// AllocsPerRun runs with GOMAXPROCS 1: one shard, one slab at a time.
	n := testing.AllocsPerRun(100, func() {
		for range slabSize {
			p.ServeDNS(ctx, w, req)
		}
	})
	if n != 1 {
		t.Fatalf("%v allocations per %d queries, want 1 (a slab of recorders)", n, slabSize)
	}
}

func TestRecorderSlabsNeverHandOutARecorderTwice(t *testing.T) {
	var s slabs
	seen := sync.Map{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 10 * slabSize {
				rw := s.get()
				if _, dup := seen.LoadOrStore(rw, true); dup {
					t.Errorf("recorder %p handed out twice", rw)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestNoNextPluginRefusesAndCountsNothing: an empty server block (`example.org { }`) is
// refused by the server; with pulse in it, pulse is the whole chain and must answer the
// same and count nothing (CoreDNS's TestNoPlugins).
func TestNoNextPluginRefusesAndCountsNothing(t *testing.T) {
	p := newTestPulse(nil)
	req := new(dns.Msg)
	req.SetQuestion("example.org.", dns.TypeA)
	rec := dnstest.NewRecorder(&test.ResponseWriter{})
	status, err := p.ServeDNS(context.Background(), rec, req)
	if status != dns.RcodeRefused || err != nil || rec.Msg != nil {
		t.Fatalf("ServeDNS = %d, %v, wrote %v; want REFUSED for the server to write, no error, nothing written", status, err, rec.Msg)
	}
	if got := p.window1s(); got["queries"] != 0 {
		t.Fatalf("window %v: pulse alone must count nothing", got)
	}
	// Its own self-probe it still answers.
	probe := new(dns.Msg)
	probe.SetQuestion("dnspulse-self-probe.", dns.TypeA)
	probe.Id = p.hub.probes.next()
	rec = dnstest.NewRecorder(&test.ResponseWriter{})
	p.ServeDNS(context.Background(), rec, probe)
	if rec.Msg == nil || rec.Rcode != dns.RcodeSuccess {
		t.Fatalf("self-probe not answered: %v", rec.Msg)
	}
}

// clientWriter is one client's writer: its own address, and a count of what reached it.
type clientWriter struct {
	test.ResponseWriter
	addr   *net.UDPAddr
	writes atomic.Int64
}

func (c *clientWriter) RemoteAddr() net.Addr        { return c.addr }
func (c *clientWriter) WriteMsg(*dns.Msg) error     { c.writes.Add(1); return nil }
func (c *clientWriter) Write(b []byte) (int, error) { c.writes.Add(1); return len(b), nil }
func (c *clientWriter) LocalAddr() net.Addr         { return c.ResponseWriter.LocalAddr() }
func newClientWriter(i int) *clientWriter {
	return &clientWriter{addr: &net.UDPAddr{IP: net.IPv4(198, 18, byte(i>>8), byte(i)), Port: 1000 + i}}
}
func (c *clientWriter) sameClient(a net.Addr) bool {
	u, ok := a.(*net.UDPAddr)
	return ok && u == c.addr
}

// TestWriterUsedAfterServeDNSReturned does what cache's serve_stale verify does: it answers
// the client, returns, and keeps using the writer from other goroutines (RemoteAddr for
// every forward retry, WriteMsg, Write, LocalAddr), while other clients' queries go
// through pulse. Every late call must reach the writer of its own client: a reused
// recorder would have handed it another client's (or a nil one: the crash of issue 10).
// Run with -race.
func TestWriterUsedAfterServeDNSReturned(t *testing.T) {
	const clients, lateCalls = 200, 50
	var late sync.WaitGroup
	wrong := make(chan string, clients)
	release := make(chan struct{})
	next := test.HandlerFunc(func(_ context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeNameError)
		w.WriteMsg(m)
		own := w.(*recorder).ResponseWriter.(*clientWriter)
		for range 2 { // two late users, racing each other and ServeDNS's return
			late.Go(func() {
				<-release
				for i := range lateCalls {
					if !own.sameClient(w.RemoteAddr()) {
						wrong <- fmt.Sprintf("late RemoteAddr %v, want %v", w.RemoteAddr(), own.addr)
						return
					}
					m := new(dns.Msg)
					m.SetRcode(r, dns.RcodeSuccess)
					if i%2 == 0 {
						w.WriteMsg(m)
					} else {
						b, _ := m.Pack()
						w.Write(b)
					}
					_ = w.LocalAddr()
				}
			})
		}
		return dns.RcodeNameError, nil
	})
	p := newTestPulse(next)
	req := new(dns.Msg)
	req.SetQuestion("example.org.", dns.TypeA)
	writers := make([]*clientWriter, clients)
	var queries sync.WaitGroup
	for i := range writers {
		writers[i] = newClientWriter(i)
		queries.Go(func() {
			if i == clients/2 {
				close(release) // late users start while half the queries are still to come
			}
			p.ServeDNS(context.Background(), writers[i], req)
		})
	}
	queries.Wait()
	late.Wait()
	close(wrong)
	for msg := range wrong {
		t.Error(msg)
	}
	for i, w := range writers {
		if n := w.writes.Load(); n != 1+2*lateCalls {
			t.Fatalf("client %d: %d writes reached its writer, want %d (its answer and every late write)", i, n, 1+2*lateCalls)
		}
	}
	got := p.window1s()
	if got["queries"] != clients || got["NXDOMAIN"] != clients {
		t.Fatalf("window %v: want each query counted once, as the NXDOMAIN written first; late writes not counted", got)
	}
	if n, _ := p.hub.inflight.report(p.hub.clock, p.hub.store.inflight(), ticks()); n != 0 {
		t.Fatalf("%d queries still in flight after every ServeDNS returned", n)
	}
}

// TestPanicInChainCountedAsServfail: the server recovers a panic in the chain and answers
// SERVFAIL; pulse must not swallow the panic, must count the SERVFAIL and must not leave
// the query in flight forever.
func TestPanicInChainCountedAsServfail(t *testing.T) {
	p := newTestPulse(test.HandlerFunc(func(context.Context, dns.ResponseWriter, *dns.Msg) (int, error) {
		panic("plugin bug")
	}))
	req := new(dns.Msg)
	req.SetQuestion("example.org.", dns.TypeA)
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("the chain's panic did not reach the server")
			}
		}()
		p.ServeDNS(context.Background(), &test.ResponseWriter{}, req)
	}()
	if got := p.window1s(); got["queries"] != 1 || got["SERVFAIL"] != 1 {
		t.Fatalf("window %v: want the panicked query counted as SERVFAIL", got)
	}
	if n, _ := p.hub.inflight.report(p.hub.clock, p.hub.store.inflight(), ticks()); n != 0 {
		t.Fatalf("%d queries in flight after the panic", n)
	}
}

// TestInflightSeesBlockedQueries: queries stuck in the chain are counted in flight and the
// oldest one's age grows while they are stuck; all leave when they return.
func TestInflightSeesBlockedQueries(t *testing.T) {
	stuck := make(chan struct{})
	entered := make(chan struct{}, 3)
	p := newTestPulse(test.HandlerFunc(func(context.Context, dns.ResponseWriter, *dns.Msg) (int, error) {
		entered <- struct{}{}
		<-stuck
		return dns.RcodeServerFailure, nil
	}))
	req := new(dns.Msg)
	req.SetQuestion("example.org.", dns.TypeA)
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() { p.ServeDNS(context.Background(), &test.ResponseWriter{}, req) })
	}
	for range 3 {
		<-entered
	}
	read := func() (uint64, time.Duration) {
		return p.hub.inflight.report(p.hub.clock, p.hub.store.inflight(), ticks())
	}
	n, first := read()
	if n != 3 {
		t.Fatalf("%d in flight, want 3", n)
	}
	// The age is measured from the start of the oldest epoch, so it grows with every read.
	var later time.Duration
	waitFor(t, "the oldest age to grow by an epoch", func() bool {
		n, later = read()
		return n == 3 && later >= first+p.hub.clock.epochWidth()
	})
	close(stuck)
	wg.Wait()
	if n, age := read(); n != 0 || age != 0 {
		t.Fatalf("after return: %d in flight, oldest %v; want 0, 0", n, age)
	}
	if got := p.window1s(); got["SERVFAIL"] != 3 {
		t.Fatalf("window %v: the three queries counted when they returned", got)
	}
}

// TestLateSelfProbeIsNotClientTraffic: a server that stalled serves its backlog, the
// self-probes of the ticks it missed among it; those are still pulse's, even though their
// deadlines passed long ago and newer probes were sent since.
func TestLateSelfProbeIsNotClientTraffic(t *testing.T) {
	p := newTestPulse(writeRcode(dns.RcodeServerFailure, dns.RcodeServerFailure))
	late := new(dns.Msg)
	late.SetQuestion("dnspulse-self-probe.", dns.TypeA)
	late.Id = p.hub.probes.next()
	for range probeMemory - 1 { // the probes of the ticks since
		p.hub.probes.next()
	}
	rec := dnstest.NewRecorder(&test.ResponseWriter{})
	p.ServeDNS(context.Background(), rec, late)
	if rec.Msg == nil || rec.Rcode != dns.RcodeSuccess {
		t.Fatalf("late self-probe not answered by pulse: %v", rec.Msg)
	}
	if got := p.window1s(); got["queries"] != 0 {
		t.Fatalf("window %v: a late self-probe counted as a client query", got)
	}
	// One probe more and the oldest id is forgotten: a query with it is a client's.
	p.hub.probes.next()
	if p.hub.probes.has(late.Id) {
		t.Fatalf("id %d still remembered after %d newer probes", late.Id, probeMemory)
	}
}

func TestProbeIDsAreUniqueAmongTheRemembered(t *testing.T) {
	var s probeIDs
	seen := map[uint16]bool{}
	for range probeMemory {
		id := s.next()
		if seen[id] {
			t.Fatalf("id %d handed out twice among the last %d", id, probeMemory)
		}
		seen[id] = true
	}
	n := 0
	for i := range s.bits {
		n += bits.OnesCount64(s.bits[i].Load())
	}
	if n != probeMemory {
		t.Fatalf("%d ids in the set, want %d", n, probeMemory)
	}
}

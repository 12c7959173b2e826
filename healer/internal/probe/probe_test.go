package probe

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dnspulse/dnspulse/healer/internal/check"
	"github.com/dnspulse/dnspulse/healer/internal/config"

	"github.com/dnspulse/dnspulse/healer/internal/replica"
)

func rr(t *testing.T, s string) dns.RR {
	t.Helper()
	r, err := dns.NewRR(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

type fresh struct{ cur string }

func (f fresh) Question() string { return "canary.example." }
func (f fresh) Accept(target string, _ time.Time, _ time.Duration) (bool, string) {
	if target == f.cur {
		return true, ""
	}
	return false, "behind"
}

func TestJudge(t *testing.T) {
	reply := func(rcode int, rrs ...dns.RR) *dns.Msg {
		m := new(dns.Msg)
		m.Rcode = rcode
		m.Answer = rrs
		return m
	}
	majority := check.Check{Name: "x.example.", Type: dns.TypeA}
	exact := check.Check{Name: "x.example.", Type: dns.TypeA, Answers: []string{"10.0.0.2", "10.0.0.1"}}
	canary := check.Check{Name: "canary.example.", Type: dns.TypeCNAME, Canary: true}
	for _, tc := range []struct {
		name     string
		c        check.Check
		m        *dns.Msg
		err      error
		ok       bool
		canaryOK bool
	}{
		{"noerror majority", majority, reply(0, rr(t, "x.example. 1 IN A 10.0.0.1")), nil, true, false},
		{"servfail", majority, reply(dns.RcodeServerFailure), nil, false, false},
		{"nxdomain", majority, reply(dns.RcodeNameError), nil, false, false},
		{"exact match any order", exact, reply(0, rr(t, "x.example. 1 IN A 10.0.0.1"), rr(t, "x.example. 9 IN A 10.0.0.2")), nil, true, false},
		{"exact mismatch", exact, reply(0, rr(t, "x.example. 1 IN A 10.0.0.1")), nil, false, false},
		{"timeout", majority, nil, errTimeout, false, false},
		{"nil reply", majority, nil, nil, false, false},
		{"canary fresh", canary, reply(0, rr(t, "canary.example. 5 IN CNAME v2.canary.invalid.")), nil, true, true},
		{"canary behind", canary, reply(0, rr(t, "canary.example. 5 IN CNAME v1.canary.invalid.")), nil, true, false},
	} {
		var res Result
		Judge(&res, tc.c, tc.m, tc.err, fresh{cur: "v2.canary.invalid."})
		if res.OK() != tc.ok {
			t.Errorf("%s: OK %v, want %v (%+v)", tc.name, res.OK(), tc.ok, res)
		}
		if tc.c.Canary && res.CanaryOK != tc.canaryOK {
			t.Errorf("%s: CanaryOK %v, want %v", tc.name, res.CanaryOK, tc.canaryOK)
		}
	}
	var res Result
	Judge(&res, majority, nil, errTimeout, nil)
	if !res.Timeout {
		t.Errorf("timeout not flagged")
	}
}

// server is a light in-process DNS responder on loopback.
func server(t *testing.T, h dns.HandlerFunc) (string, *atomic.Int64) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		n.Add(1)
		h(w, r)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String(), &n
}

func answerA(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: net.IPv4(10, 0, 0, 1)})
	_ = w.WriteMsg(m)
}

// collect takes n results from the pool's mailbox.
func collect(t *testing.T, p *Pool, n int) []Result {
	t.Helper()
	var out []Result
	deadline := time.After(10 * time.Second)
	for len(out) < n {
		select {
		case <-p.Results.Ready():
			out = append(out, p.Results.Take(nil)...)
		case <-deadline:
			t.Fatalf("got %d results, want %d", len(out), n)
		}
	}
	return out
}

func newPool(t *testing.T, cfg config.Probe, checks []check.Check) *Pool {
	t.Helper()
	p, err := NewPool(cfg, checks, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPoolProbesAndJudges(t *testing.T) {
	good, _ := server(t, answerA)
	silent, _ := server(t, func(dns.ResponseWriter, *dns.Msg) {}) // hung replica
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := newPool(t, config.Probe{
		Interval: config.D(10 * time.Millisecond), Timeout: config.D(50 * time.Millisecond), MinTimeout: config.D(20 * time.Millisecond),
	}, []check.Check{{Name: "x.example.", Type: dns.TypeA}})
	p.Sync(ctx, []replica.Target{{Name: "good", DNSAddr: good}, {Name: "hung", DNSAddr: silent}})
	seen := map[string]Result{}
	for len(seen) < 2 {
		for _, r := range collect(t, p, 1) {
			if !r.LateReply {
				seen[r.Replica] = r
			}
		}
	}
	if r := seen["good"]; !r.OK() || r.AnswerKey != "x.example. A 10.0.0.1" {
		t.Errorf("good replica: %+v", r)
	}
	// A timeout, or inconclusive when this loaded test machine stalled the healer past the
	// deadline; never before the adaptive floor (the upper bound is timing: benchmark).
	if r := seen["hung"]; r.OK() || !(r.Timeout || r.Late) || r.Latency < 20*time.Millisecond {
		t.Errorf("hung replica: %+v", r)
	}
}

func TestTruncatedRetriesOverTCP(t *testing.T) {
	// One address, two listeners: UDP always truncates, TCP answers.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("port %s taken for tcp: %v", addr, err)
	}
	udp := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Truncated = true
		_ = w.WriteMsg(m)
	})}
	tcp := &dns.Server{Listener: ln, Handler: dns.HandlerFunc(answerA)}
	go func() { _ = udp.ActivateAndServe() }()
	go func() { _ = tcp.ActivateAndServe() }()
	t.Cleanup(func() { _ = udp.Shutdown(); _ = tcp.Shutdown() })

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := newPool(t, config.Probe{Interval: config.D(20 * time.Millisecond), Timeout: config.D(time.Second), MaxQPS: 100},
		[]check.Check{{Name: "x.example.", Type: dns.TypeA}})
	p.Sync(ctx, []replica.Target{{Name: "r", DNSAddr: addr}})
	r := collect(t, p, 1)[0]
	if !r.TCP || !r.OK() || r.AnswerKey != "x.example. A 10.0.0.1" {
		t.Errorf("want the TCP answer, got %+v", r)
	}
}

// Under --max-probe-qps the schedule stretches: every replica is probed evenly, less
// often, and the total stays within the cap; a boost beyond it is skipped.
func TestGlobalQPSCap(t *testing.T) {
	var addrs []string
	var counters []*atomic.Int64
	for i := 0; i < 5; i++ {
		a, n := server(t, answerA)
		addrs = append(addrs, a)
		counters = append(counters, n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// 5 replicas x 2 checks every 5 ms would be 2000 qps; the cap is 100: every 100 ms.
	p := newPool(t, config.Probe{Interval: config.D(5 * time.Millisecond), Timeout: config.D(50 * time.Millisecond), MaxQPS: 100},
		[]check.Check{{Name: "x.example.", Type: dns.TypeA}, {Name: "y.example.", Type: dns.TypeA}})
	var ts []replica.Target
	for i, a := range addrs {
		ts = append(ts, replica.Target{Name: string(rune('a' + i)), DNSAddr: a})
	}
	start := time.Now()
	p.Sync(ctx, ts)
	if iv, n, qps := p.Schedule(); iv != 100*time.Millisecond || n != 5 || qps != 100 {
		t.Errorf("schedule: every %s for %d replicas, %.0f/s; want every 100ms, 5, 100/s", iv, n, qps)
	}
	for time.Since(start) < time.Second {
		p.Boost("a", time.Second) // x4 for a would exceed the cap
		collect(t, p, 1)
	}
	cancel()
	elapsed := time.Since(start)
	var total int64
	for _, n := range counters {
		total += n.Load()
		if n.Load() == 0 {
			t.Errorf("a replica was never probed")
		}
	}
	limit := int64(100*elapsed.Seconds()) + 20 // rate plus the burst
	if total > limit {
		t.Errorf("%d queries in %s, cap allows about %d", total, elapsed, limit)
	}
	if p.Skipped.Load() == 0 {
		t.Errorf("no probe skipped although the boost asked for more than the cap")
	}
}

// A reply that comes after the probe's timeout is reported as a late reply to the same
// probe (same check, same send time), with its real latency: the replica was alive, only
// slow, and the adaptive timeout follows it.
func TestLateReply(t *testing.T) {
	addr, _ := server(t, func(w dns.ResponseWriter, r *dns.Msg) {
		time.Sleep(60 * time.Millisecond)
		answerA(w, r)
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := newPool(t, config.Probe{Interval: config.D(time.Second), Timeout: config.D(20 * time.Millisecond), MinTimeout: config.D(20 * time.Millisecond)},
		[]check.Check{{Name: "x.example.", Type: dns.TypeA}})
	p.Sync(ctx, []replica.Target{{Name: "slow", DNSAddr: addr}})
	first := collect(t, p, 1)[0]
	if first.LateReply || !(first.Timeout || first.Late) {
		t.Fatalf("first result %+v, want the timeout", first)
	}
	if first.Late {
		t.Skip("this machine stalled the healer past the deadline; the late path is not exercised")
	}
	late := collect(t, p, 1)[0]
	if !late.LateReply || late.Check != first.Check || !late.Sent.Equal(first.Sent) || late.Latency < 60*time.Millisecond || !late.OK() {
		t.Fatalf("late reply %+v, want the same probe answered after >= 60ms", late)
	}
}

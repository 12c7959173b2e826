package pulse

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dnspulse/dnspulse/heartbeat"

	"github.com/coredns/coredns/plugin"
	"github.com/miekg/dns"
)

// startDNS serves p on a loopback UDP port, as CoreDNS's server would, and returns its address.
func startDNS(t *testing.T, p *Pulse) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		rc, _ := p.ServeDNS(context.Background(), w, r)
		if rc == dns.RcodeServerFailure || rc == dns.RcodeRefused {
			m := new(dns.Msg)
			m.SetRcode(r, rc)
			w.WriteMsg(m)
		}
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

func startRunner(t *testing.T, cfg config, p *Pulse, probeAddr string) (*runner, string) {
	t.Helper()
	cfg.addr = "127.0.0.1:0"
	if cfg.tick == 0 {
		cfg.tick = 20 * time.Millisecond
	}
	if cfg.probeName == "" {
		cfg.probeName = "dnspulse-self-probe."
	}
	r := &runner{cfg: cfg, hub: p.hub, probeAddr: probeAddr}
	if err := r.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.stop() })
	return r, "http://" + r.ln.Addr().String() + heartbeat.Path
}

func getHeartbeat(t *testing.T, url string) *heartbeat.Heartbeat {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /pulse: %s %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	hb, err := heartbeat.Decode(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return hb
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestHeartbeatTicksAndSelfProbes(t *testing.T) {
	p := newTestPulse(writeRcode(dns.RcodeNameError, dns.RcodeNameError))
	dnsAddr := startDNS(t, p)
	_, url := startRunner(t, config{replica: "r1", minQueries: 5, servfailRatio: 0.25, p99: time.Second}, p, dnsAddr)

	first := getHeartbeat(t, url)
	if first.Replica != "r1" || first.Version != 1 || first.Verdict != "healthy" {
		t.Fatalf("heartbeat %+v", first)
	}
	if first.InFlight == nil || first.InFlight.Count != 0 || first.InFlight.OldestMicros != 0 {
		t.Fatalf("inflight %+v, want present and zero", first.InFlight)
	}
	var hb *heartbeat.Heartbeat
	waitFor(t, "seq to move and a self-probe to succeed", func() bool {
		hb = getHeartbeat(t, url)
		return hb.Seq > first.Seq+2 && hb.SelfProbe.OK && hb.SelfProbe.Rcode == "NOERROR"
	})
	// Three client queries: counted; the self-probes that ran meanwhile: not.
	c := new(dns.Client)
	for range 3 {
		m := new(dns.Msg)
		m.SetQuestion("nope.example.", dns.TypeA)
		if _, _, err := c.Exchange(m, dnsAddr); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the three queries in the heartbeat", func() bool {
		hb = getHeartbeat(t, url)
		return hb.Windows["10s"].Queries >= 3
	})
	if w := hb.Windows["10s"]; w.Queries != 3 || w.Rcodes["NXDOMAIN"] != 3 || w.NXDomainRatio != 1 {
		t.Fatalf("10s window %+v: want exactly the 3 client NXDOMAINs", w)
	}
}

func TestHeartbeatSelfProbeFailsWhenServingPathIsStuck(t *testing.T) {
	stuck := make(chan struct{})
	p := newTestPulse(writeRcode(dns.RcodeSuccess, 0))
	p.answerProbe = false // the probe goes down the chain, which hangs
	p.Next = testHandler(func() { <-stuck })
	dnsAddr := startDNS(t, p)
	defer close(stuck)
	_, url := startRunner(t, config{replica: "r1", minQueries: 5, servfailRatio: 0.25, p99: time.Second, probeTimeout: 30 * time.Millisecond}, p, dnsAddr)
	var hb *heartbeat.Heartbeat
	waitFor(t, "a failed self-probe", func() bool {
		hb = getHeartbeat(t, url)
		return !hb.SelfProbe.OK && hb.SelfProbe.Error != "no self-probe yet"
	})
	if hb.Verdict != "degraded" || len(hb.Reasons) == 0 || !strings.Contains(hb.Reasons[0], "self-probe failed: timeout") {
		t.Fatalf("verdict %q reasons %q", hb.Verdict, hb.Reasons)
	}
	// seq still moves while the serving path is stuck.
	seq := hb.Seq
	waitFor(t, "seq to move on", func() bool { return getHeartbeat(t, url).Seq > seq })
}

// TestHeartbeatShowsAPendingSelfProbe: a self-probe the serving path has not answered shows
// its age in every heartbeat until it ends, long before its timeout makes it a failure; a
// probe answered leaves none.
func TestHeartbeatShowsAPendingSelfProbe(t *testing.T) {
	var stuck atomic.Bool
	release := make(chan struct{})
	p := newTestPulse(writeRcode(dns.RcodeSuccess, 0))
	p.answerProbe = false // the probe goes down the chain
	p.Next = plugin.HandlerFunc(func(_ context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
		if stuck.Load() {
			<-release
		}
		m := new(dns.Msg)
		m.SetReply(r)
		return dns.RcodeSuccess, w.WriteMsg(m)
	})
	dnsAddr := startDNS(t, p)
	defer close(release)
	_, url := startRunner(t, config{replica: "r1", minQueries: 5, servfailRatio: 0.25, p99: time.Second, probeTimeout: 5 * time.Second}, p, dnsAddr)
	waitFor(t, "a self-probe answered", func() bool { return getHeartbeat(t, url).SelfProbe.Rcode == "NOERROR" })
	stuck.Store(true)
	var hb *heartbeat.Heartbeat
	waitFor(t, "a self-probe pending for 100ms", func() bool {
		hb = getHeartbeat(t, url)
		return hb.SelfProbe.PendingMicros >= 100_000
	})
	if !hb.SelfProbe.OK || hb.Verdict != "healthy" {
		t.Fatalf("a pending self-probe is not a failure before its timeout: %+v, verdict %q", hb.SelfProbe, hb.Verdict)
	}
	if hb.SelfProbe.PendingMicros > 5_000_000 {
		t.Fatalf("pending %dµs: more than the probe's timeout", hb.SelfProbe.PendingMicros)
	}
	stuck.Store(false)
	release <- struct{}{} // the pending probe is answered
	waitFor(t, "no self-probe pending once it was answered", func() bool {
		hb = getHeartbeat(t, url)
		return hb.SelfProbe.PendingMicros < 100_000
	})
}

func testHandler(block func()) *handlerFunc { return &handlerFunc{block: block} }

type handlerFunc struct{ block func() }

func (h *handlerFunc) ServeDNS(_ context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	h.block()
	return 0, nil
}
func (h *handlerFunc) Name() string { return "blocker" }

func TestVerdictThresholds(t *testing.T) {
	cfg := defaultConfig()
	hb := func(q uint64, sf float64, p99 uint64) *heartbeat.Heartbeat {
		return &heartbeat.Heartbeat{SelfProbe: heartbeat.SelfProbe{OK: true}, Windows: map[string]heartbeat.Window{
			"1s": {Queries: q, ServfailRatio: sf, LatencyMicros: heartbeat.Latency{P99: p99}}}}
	}
	if r := cfg.verdict(hb(100, 0.1, 1000)); len(r) != 0 {
		t.Errorf("healthy window judged degraded: %v", r)
	}
	if r := cfg.verdict(hb(100, 0.5, 1000)); len(r) != 1 || !strings.Contains(r[0], "servfail ratio 0.50 > 0.25") {
		t.Errorf("servfail: %v", r)
	}
	if r := cfg.verdict(hb(100, 0, 900_000)); len(r) != 1 || !strings.Contains(r[0], "p99 latency 900ms > 500ms") {
		t.Errorf("p99: %v", r)
	}
	if r := cfg.verdict(hb(5, 1, 900_000)); len(r) != 0 {
		t.Errorf("too few queries must not judge: %v", r)
	}
}

func TestRunnerStopLeaksNothing(t *testing.T) {
	before := runtime.NumGoroutine()
	p := newTestPulse(writeRcode(dns.RcodeSuccess, 0))
	for i := range 3 { // start, stop, start again on the same hub: a reload
		r := &runner{cfg: config{addr: "127.0.0.1:0", tick: 10 * time.Millisecond, replica: "r", probeName: "dnspulse-self-probe."}, hub: p.hub, probeAddr: "127.0.0.1:9"}
		if err := r.start(); err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
		addr := r.ln.Addr().String()
		if err := r.stop(); err != nil {
			t.Fatalf("stop %d: %v", i, err)
		}
		// The port is free again for a plain (non-reuseport) listener.
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("after stop, %s still taken: %v", addr, err)
		}
		ln.Close()
	}
	http.DefaultClient.CloseIdleConnections()
	waitFor(t, fmt.Sprintf("goroutines back to %d", before), func() bool { return runtime.NumGoroutine() <= before })
}

// TestStopDoesNotWaitForAnIdleNewConnection: a client that connected and has not sent its
// request yet (a poller between two polls) held a reload up for Shutdown's whole 2 s
// deadline, which then returned an error; now stop closes it after a short grace.
func TestStopDoesNotWaitForAnIdleNewConnection(t *testing.T) {
	p := newTestPulse(writeRcode(dns.RcodeSuccess, 0))
	r := &runner{cfg: config{addr: "127.0.0.1:0", tick: 10 * time.Millisecond, replica: "r", probeName: "dnspulse-self-probe."}, hub: p.hub}
	if err := r.start(); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", r.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := r.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	// Closed by the server: EOF once it accepted the connection, a reset when the listener
	// closed with the connection still in its accept queue. A timeout would mean it waited.
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read on the idle connection after stop: %v, want EOF or a reset (closed by the server)", err)
	}
}

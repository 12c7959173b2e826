//go:build !integration

// The hot-path soak runs CoreDNS in this test process (so that -race sees pulse and every
// plugin around it) with pulse in every server block, under concurrent clients, while the
// Corefile is edited and the reload plugin restarts the server. It runs in `make test-unit`
// (and so in `make test`); SOAK_DURATION (default 20s) sets its length.
package pulse_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/cancel"
	_ "github.com/coredns/coredns/plugin/erratic"
	_ "github.com/coredns/coredns/plugin/file"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/reload"
	_ "github.com/coredns/coredns/plugin/template"
	_ "github.com/coredns/coredns/plugin/timeouts"
	_ "github.com/coredns/coredns/plugin/transfer"
	"github.com/dnspulse/dnspulse/heartbeat"
	_ "github.com/dnspulse/dnspulse/plugin/pulse"

	"github.com/miekg/dns"
)

// soakcount is a test plugin placed right before pulse: the ground truth pulse's counts
// are checked against. It counts every client query that enters the chain and the kind
// it ends as, decided the way CoreDNS's metrics plugin decides an rcode (written, else
// returned when the server writes it, else dropped), and any panic in the chain.
type soakCounts struct {
	entered, returned, panics atomic.Int64
	mu                        sync.Mutex
	kinds                     map[string]uint64
}

var soak = &soakCounts{kinds: map[string]uint64{}}

func (s *soakCounts) add(kind string) {
	s.mu.Lock()
	s.kinds[kind]++
	s.mu.Unlock()
}

type soakPlugin struct{ Next plugin.Handler }

func (soakPlugin) Name() string { return "soakcount" }

func (p soakPlugin) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (status int, err error) {
	if len(r.Question) == 1 && strings.HasPrefix(strings.ToLower(r.Question[0].Name), "dnspulse-self-probe.") {
		return plugin.NextOrFailure(p.Name(), p.Next, ctx, w, r) // pulse's own; never counted
	}
	soak.entered.Add(1)
	fw := &firstWrite{ResponseWriter: w}
	status = dns.RcodeServerFailure
	defer func() {
		if v := recover(); v != nil {
			soak.panics.Add(1)
			panic(v)
		}
		rc, wrote := fw.first()
		switch {
		case wrote:
		case plugin.ClientWrite(status):
			soak.add("DROPPED")
			soak.returned.Add(1)
			return
		default:
			rc = status
		}
		soak.add(dns.RcodeToString[rc])
		soak.returned.Add(1)
	}()
	return p.Next.ServeDNS(ctx, fw, r)
}

type firstWrite struct {
	dns.ResponseWriter
	mu    sync.Mutex
	rcode int
	wrote bool
}

func (f *firstWrite) note(rc int) {
	f.mu.Lock()
	if !f.wrote {
		f.rcode, f.wrote = rc, true
	}
	f.mu.Unlock()
}

func (f *firstWrite) first() (int, bool) { f.mu.Lock(); defer f.mu.Unlock(); return f.rcode, f.wrote }

func (f *firstWrite) WriteMsg(m *dns.Msg) error { f.note(m.Rcode); return f.ResponseWriter.WriteMsg(m) }

func (f *firstWrite) Write(b []byte) (int, error) {
	if len(b) >= 4 {
		f.note(int(b[3] & 0x0f))
	}
	return f.ResponseWriter.Write(b)
}

var (
	soakOnce     sync.Once
	soakConf     atomic.Pointer[string] // the Corefile the reload plugin reads
	soakStarts   atomic.Int64           // instances started, reloads included
	soakInstance atomic.Pointer[caddy.Instance]
)

func setupSoak(t *testing.T) {
	soakOnce.Do(func() {
		plugin.Register("soakcount", func(c *caddy.Controller) error {
			c.Next()
			dnsserver.GetConfig(c).AddPlugin(func(next plugin.Handler) plugin.Handler { return soakPlugin{Next: next} })
			return nil
		})
		// pulse right before prometheus, as build/coredns splices it; soakcount before it.
		d := slices.Clone(dnsserver.Directives)
		i := slices.Index(d, "prometheus")
		d = slices.Insert(d, i, "soakcount", "pulse")
		if err := dnsserver.SetDirectives(d); err != nil {
			t.Fatal(err)
		}
		// What the reload plugin reads: CoreDNS's own loader reads -conf, not linked here.
		caddy.RegisterCaddyfileLoader("soak", caddy.LoaderFunc(func(serverType string) (caddy.Input, error) {
			p := soakConf.Load()
			if p == nil {
				return nil, nil
			}
			b, err := os.ReadFile(*p)
			if err != nil {
				return nil, err
			}
			return caddy.CaddyfileInput{Contents: b, Filepath: *p, ServerTypeName: serverType}, nil
		}))
		caddy.RegisterEventHook("soak", func(ev caddy.EventName, info any) error {
			if ev == caddy.InstanceStartupEvent {
				soakStarts.Add(1)
				soakInstance.Store(info.(*caddy.Instance))
			}
			return nil
		})
		caddy.Quiet, dnsserver.Quiet = true, true
	})
}

const soakZone = `$ORIGIN xfr.soak.
@	3600 IN SOA ns.xfr.soak. admin.xfr.soak. %d 7200 3600 1209600 3600
	3600 IN NS ns.xfr.soak.
ns	3600 IN A 192.0.2.53
%s`

func soakCorefile(dnsPort, pulsePort int, zonefile, upstream string, gen int) string {
	return fmt.Sprintf(`# generation %[5]d
.:%[1]d {
    bind 127.0.0.1
    timeouts {
        read 3s
        write 3s
        idle 5s
    }
    cancel 2s
    reload 2s 1s
    soakcount
    pulse 127.0.0.1:%[2]d {
        tick 20ms
    }
    template IN A ok.soak {
        answer "{{ .Name }} 60 IN A 192.0.2.%[5]d"
    }
    template IN A nx.soak {
        rcode NXDOMAIN
    }
    template IN A fail.soak {
        rcode SERVFAIL
    }
}
erratic.soak:%[1]d {
    bind 127.0.0.1
    soakcount
    pulse 127.0.0.1:%[2]d
    erratic {
        drop 3
        truncate 2
    }
}
xfr.soak:%[1]d {
    bind 127.0.0.1
    soakcount
    pulse 127.0.0.1:%[2]d
    file %[3]s
    transfer {
        to *
    }
}
stale.soak:%[1]d {
    bind 127.0.0.1
    soakcount
    pulse 127.0.0.1:%[2]d
    cache 30 {
        success 9984 30 1
        serve_stale 1h verify 50ms
    }
    forward . %[4]s
}
`, dnsPort, pulsePort, zonefile, upstream, gen)
}

type soakClient struct {
	addr                       string
	sent, answered, unanswered atomic.Int64
	axfr, ixfr, tcp, truncated atomic.Int64
	udp, tcpc                  *dns.Client
}

func (c *soakClient) exchange(cl *dns.Client, name string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	c.sent.Add(1)
	resp, _, err := cl.Exchange(m, c.addr)
	if err != nil {
		c.unanswered.Add(1)
		return nil
	}
	c.answered.Add(1)
	return resp
}

func (c *soakClient) transfer(m *dns.Msg) {
	c.sent.Add(1)
	tr := &dns.Transfer{ReadTimeout: 500 * time.Millisecond, DialTimeout: time.Second}
	ch, err := tr.In(m, c.addr)
	if err != nil {
		c.unanswered.Add(1)
		return
	}
	n := 0
	for env := range ch {
		if env.Error != nil {
			break
		}
		n++
	}
	if n == 0 {
		c.unanswered.Add(1)
		return
	}
	c.answered.Add(1)
}

// one sends the i-th query of the mix.
func (c *soakClient) one(i int) {
	name := fmt.Sprintf("q%d.", i%50)
	switch i % 16 {
	case 0, 1, 2, 3:
		c.exchange(c.udp, name+"ok.soak.", dns.TypeA)
	case 4:
		c.tcp.Add(1)
		c.exchange(c.tcpc, name+"ok.soak.", dns.TypeA)
	case 5:
		c.exchange(c.udp, name+"nx.soak.", dns.TypeA)
	case 6:
		c.exchange(c.udp, name+"fail.soak.", dns.TypeA)
	case 7, 8: // erratic: every third dropped, every other truncated (then retried over TCP)
		if r := c.exchange(c.udp, name+"erratic.soak.", dns.TypeA); r != nil && r.Truncated {
			c.truncated.Add(1)
			c.exchange(c.tcpc, name+"erratic.soak.", dns.TypeA)
		}
	case 9:
		m := new(dns.Msg)
		m.SetAxfr("xfr.soak.")
		c.axfr.Add(1)
		c.transfer(m)
	case 10:
		m := new(dns.Msg)
		m.SetIxfr("xfr.soak.", 1, "ns.xfr.soak.", "admin.xfr.soak.")
		c.ixfr.Add(1)
		c.transfer(m)
	case 11:
		m := new(dns.Msg)
		m.SetAxfr("erratic.soak.")
		c.axfr.Add(1)
		c.transfer(m)
	default:
		c.exchange(c.udp, fmt.Sprintf("s%d.stale.soak.", i%8), dns.TypeA)
	}
}

func pulseGoroutines() int {
	all := countGoroutines("\x00")
	return all - countGoroutines("dnspulse/dnspulse/plugin/pulse.")
}

// TestHotPathSoak: high concurrency through pulse with reloads, dropped, truncated, TCP,
// AXFR/IXFR through transfer and erratic, cancel, timeouts, and cache's serve_stale
// verify using writers after return while the upstream flaps. Nothing panics, pulse counts
// exactly the queries that entered the chain (per kind, dropped included), nothing stays
// in flight, and every goroutine pulse started ends with the server.
func TestHotPathSoak(t *testing.T) {
	setupSoak(t)
	dur := 20 * time.Second
	if s := os.Getenv("SOAK_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 || d > 45*time.Second {
			t.Fatalf("SOAK_DURATION %q: want a duration in (0, 45s]: the check reads pulse's 60 s window", s)
		}
		dur = d
	}
	up := startUpstream(t)
	baseline := countGoroutines("proxy.(*Transport).connManager")
	dir := t.TempDir()
	zonefile := filepath.Join(dir, "xfr.soak")
	var recs strings.Builder
	for i := range 200 {
		fmt.Fprintf(&recs, "h%d\t3600 IN A 192.0.2.%d\n", i, i%250+1)
	}
	if err := os.WriteFile(zonefile, fmt.Appendf(nil, soakZone, 2, recs.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	dnsPort, pulsePort := freePort(t), freePort(t)
	conf := filepath.Join(dir, "Corefile")
	write := func(gen int) { // atomically: the reload plugin must never read half a file
		tmp := conf + ".new"
		if err := os.WriteFile(tmp, []byte(soakCorefile(dnsPort, pulsePort, zonefile, up.addr, gen)), 0o644); err != nil {
			t.Error(err)
		}
		if err := os.Rename(tmp, conf); err != nil {
			t.Error(err)
		}
	}
	write(1)
	soakConf.Store(&conf)
	defer soakConf.Store(nil)
	startsBefore := soakStarts.Load()
	input, err := caddy.LoadCaddyfile("dns")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := caddy.Start(input); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stopAll := func() {
		if stopped {
			return
		}
		stopped = true
		if inst := soakInstance.Swap(nil); inst != nil {
			inst.ShutdownCallbacks() // what the process does on SIGTERM, then Stop
		}
		caddy.Stop()
	}
	defer stopAll()
	addr := fmt.Sprintf("127.0.0.1:%d", dnsPort)
	url := fmt.Sprintf("http://127.0.0.1:%d%s", pulsePort, heartbeat.Path)
	entered0 := soak.entered.Load()
	kinds0 := snapshotKinds()

	ctx, cancel := context.WithTimeout(context.Background(), dur)
	defer cancel()
	var bg sync.WaitGroup
	bg.Go(func() { // the upstream flaps: stale answers and verifies left running
		for gen := 0; ctx.Err() == nil; gen++ {
			up.silent.Store(gen%2 == 1)
			select {
			case <-ctx.Done():
			case <-time.After(1500 * time.Millisecond):
			}
		}
		up.silent.Store(false)
	})
	bg.Go(func() { // the Corefile changes; the reload plugin restarts the server
		for gen := 2; ctx.Err() == nil; gen++ {
			select {
			case <-ctx.Done():
				return
			case <-time.After(1200 * time.Millisecond):
			}
			write(gen%200 + 1)
		}
	})
	const clients = 64
	cl := &soakClient{addr: addr,
		udp:  &dns.Client{Net: "udp", Timeout: 250 * time.Millisecond},
		tcpc: &dns.Client{Net: "tcp", Timeout: 2 * time.Second}}
	var wg sync.WaitGroup
	for g := range clients {
		wg.Go(func() {
			for i := g; ctx.Err() == nil; i++ { // every client goes through the whole mix
				cl.one(i)
			}
		})
	}
	wg.Wait()
	bg.Wait()
	// The reload plugin applies the last edit, then has nothing left to restart: a restart
	// racing the shutdown below would shut the same instance down twice.
	last, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the last Corefile edit to be loaded", 10*time.Second, func() bool {
		inst := soakInstance.Load()
		return inst != nil && string(inst.Caddyfile().Body()) == string(last)
	})

	// Every query that entered the chain has returned (forward stuck on the silent upstream
	// is bounded by cancel), then pulse's 60 s window must hold exactly them.
	waitFor(t, "every query to return", 20*time.Second, func() bool { return soak.entered.Load() == soak.returned.Load() })
	entered := soak.entered.Load() - entered0
	want := diffKinds(snapshotKinds(), kinds0)
	var hb *heartbeat.Heartbeat
	ok := pollFor(10*time.Second, func() bool {
		hb = fetchHeartbeat(url)
		return hb != nil && hb.Windows["60s"].Queries == uint64(entered)
	})
	reloads := soakStarts.Load() - startsBefore - 1
	t.Logf("%v: %d sent by %d clients (%d answered, %d not: dropped or lost; %d over TCP, %d truncated, %d AXFR, %d IXFR), %d entered the chain, %d reloads, panics %d",
		dur, cl.sent.Load(), clients, cl.answered.Load(), cl.unanswered.Load(), cl.tcp.Load(), cl.truncated.Load(), cl.axfr.Load(), cl.ixfr.Load(), entered, reloads, soak.panics.Load())
	if hb == nil {
		t.Fatal("no heartbeat at the end of the soak")
	}
	w := hb.Windows["60s"]
	t.Logf("pulse 60s window: %d queries, rcodes %v, dropped %d; inflight %+v", w.Queries, w.Rcodes, w.Dropped, hb.InFlight)
	if !ok {
		t.Errorf("pulse counted %d queries, %d entered the chain", w.Queries, entered)
	}
	got := map[string]uint64{"DROPPED": w.Dropped}
	for k, n := range w.Rcodes {
		got[k] = n
	}
	for k := range got {
		if got[k] == 0 {
			delete(got, k)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("pulse's kinds %v, the chain's %v", got, want)
	}
	if want["DROPPED"] == 0 || want["SERVFAIL"] == 0 || want["NXDOMAIN"] == 0 || cl.axfr.Load() == 0 || cl.truncated.Load() == 0 {
		t.Errorf("the mix did not happen: kinds %v, %d AXFR, %d truncated", want, cl.axfr.Load(), cl.truncated.Load())
	}
	up.mu.Lock()
	verifies := len(up.askedSilent)
	up.mu.Unlock()
	if verifies == 0 {
		t.Error("no stale.soak query reached the silent upstream: serve_stale verify (writers used after return) was not exercised")
	}
	if reloads < 2 {
		t.Errorf("%d reloads during the soak, want at least 2", reloads)
	}
	if n := soak.panics.Load(); n != 0 {
		t.Errorf("%d panics in the chain", n)
	}
	if hb.InFlight == nil || hb.InFlight.Count != 0 || hb.InFlight.OldestMicros != 0 {
		t.Errorf("inflight %+v after every query returned, want 0", hb.InFlight)
	}

	stopAll()
	http.DefaultClient.CloseIdleConnections()
	waitFor(t, "pulse's goroutines to end with the server", 10*time.Second, func() bool { return pulseGoroutines() == 0 })
	// Cache's verifies may still wait on the upstream for a few seconds after the stop.
	// forward stops a proxy's connection manager only from the proxy's finalizer (CoreDNS
	// v1.15 plugin/pkg/proxy), which the last instance's proxy may never reach in this
	// process: those are not counted; every other goroutine must end.
	up.silent.Store(false)
	if !pollFor(20*time.Second, func() bool { runtime.GC(); return countGoroutines("proxy.(*Transport).connManager") <= baseline }) {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after the stop (forward's connection managers aside), %d before:\n%s",
			countGoroutines("proxy.(*Transport).connManager"), baseline, buf[:runtime.Stack(buf, true)])
	}
}

// countGoroutines counts the goroutines whose stack does not mention except.
func countGoroutines(except string) int {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if !strings.Contains(g, except) {
			n++
		}
	}
	return n
}

func snapshotKinds() map[string]uint64 {
	soak.mu.Lock()
	defer soak.mu.Unlock()
	m := make(map[string]uint64, len(soak.kinds))
	for k, v := range soak.kinds {
		m[k] = v
	}
	return m
}

func diffKinds(now, before map[string]uint64) map[string]uint64 {
	d := map[string]uint64{}
	for k, v := range now {
		if v > before[k] {
			d[k] = v - before[k]
		}
	}
	return d
}

func fetchHeartbeat(url string) *heartbeat.Heartbeat {
	resp, err := http.Get(url)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	hb, err := heartbeat.Decode(resp.Body)
	if err != nil {
		return nil
	}
	return hb
}

// pollFor polls cond every 20 ms until it holds or timeout passes.
func pollFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	if !pollFor(timeout, cond) {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// freePort returns a port free on 127.0.0.1 for both TCP and UDP.
func freePort(t *testing.T) int {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", ln.Addr().String())
		ln.Close()
		if err == nil {
			pc.Close()
			return port
		}
	}
	t.Fatal("no port free for both TCP and UDP")
	return 0
}

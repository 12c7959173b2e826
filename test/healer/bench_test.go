//go:build integration

package healer_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dnspulse/dnspulse/healer/api"
	"github.com/dnspulse/dnspulse/heartbeat"
)

// The detection benchmark (make bench-detect, hack/bench-detect.sh). Skipped unless
// BENCH_DETECT=1; BENCH_OUT names the markdown fragment it writes.

func benchEnabled(t *testing.T) {
	if os.Getenv("BENCH_DETECT") != "1" {
		t.Skip("BENCH_DETECT=1 runs the detection benchmark (make bench-detect)")
	}
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func envDuration(name string, def time.Duration) time.Duration {
	if v, err := time.ParseDuration(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func report(t *testing.T, text string) {
	t.Helper()
	t.Log("\n" + text)
	if p := os.Getenv("BENCH_OUT"); p != "" {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteString(text + "\n"); err != nil {
			t.Fatal(err)
		}
	}
}

type faultClass struct {
	name    string
	inject  func(t *testing.T, r *replicaProc)
	recover func(t *testing.T, r *replicaProc)
}

var faultClasses = []faultClass{
	{"process hung (SIGSTOP)",
		func(t *testing.T, r *replicaProc) { r.signal(t, syscall.SIGSTOP) },
		func(t *testing.T, r *replicaProc) { r.signal(t, syscall.SIGCONT) }},
	{"serving path stuck, HTTP alive (upstream black hole)",
		func(_ *testing.T, r *replicaProc) { r.up.mode.Store(modeBlackhole) },
		func(_ *testing.T, r *replicaProc) { r.up.mode.Store(modeNormal) }},
	{"upstream broken (forward to a dead port: SERVFAIL)",
		func(_ *testing.T, r *replicaProc) { r.up.stop() },
		func(t *testing.T, r *replicaProc) { r.up.start(t) }},
	{"replica slower (+80 ms)",
		func(_ *testing.T, r *replicaProc) { r.up.mode.Store(modeDelay) },
		func(_ *testing.T, r *replicaProc) { r.up.mode.Store(modeNormal) }},
	{"answers differently (stale data, a cluster.local name)",
		func(_ *testing.T, r *replicaProc) { r.up.mode.Store(modeDifferent) },
		func(_ *testing.T, r *replicaProc) { r.up.mode.Store(modeNormal) }},
	{"upstream answers REFUSED (an ACL on the replica's address)",
		func(_ *testing.T, r *replicaProc) { r.up.mode.Store(modeRefused) },
		func(_ *testing.T, r *replicaProc) { r.up.mode.Store(modeNormal) }},
}

func TestBenchDetect(t *testing.T) {
	benchEnabled(t)
	n := envInt("BENCH_INJECTIONS", 20)
	var rows []string
	for _, fc := range faultClasses {
		t.Run(fc.name, func(t *testing.T) {
			c := startCluster(t, "--check", "probe.cluster.local/A")
			var lat []time.Duration
			falses := 0
			for i := 0; i < n; i++ {
				victim := c.replicas[i%len(c.replicas)]
				mark := c.audit.mark(t)
				injected := time.Now()
				fc.inject(t, victim)
				deg := c.audit.waitFrom(t, mark, verdictWithin, victim.name+" degraded", isState(victim.name, "degraded"))
				lat = append(lat, deg.Time.Sub(injected))
				if i == 0 || deg.Time.Sub(injected) > 100*time.Millisecond {
					t.Logf("injection %d, %.1f ms: %s", i, ms(deg.Time.Sub(injected)), deg.Raw)
				}
				fc.recover(t, victim)
				for _, l := range c.audit.from(t, mark) {
					if l.Event == "state" && (l.To == "degraded" || l.To == "global") && l.Replica != victim.name {
						falses++
						t.Logf("false verdict: %s", l.Raw)
					}
				}
				c.audit.waitFrom(t, mark, verdictWithin, victim.name+" healthy again", func(l line) bool {
					return l.Event == "state" && l.Replica == victim.name && l.From != "healthy" && l.To == "healthy" && !l.Time.Before(deg.Time)
				})
				// Every replica healthy, and its 1s window clean of the last fault (a peer
				// still showing it would hide the next one), before the next injection.
				for _, r := range c.replicas {
					waitFor(t, verdictWithin, r.name+" 1s window clean", func() bool {
						hb, err := r.heartbeat()
						if err != nil {
							return false
						}
						w := hb.Windows[heartbeat.Window1s]
						return w.LatencyMicros.P99 < 10_000 && w.ServfailRatio == 0 && w.Rcodes["REFUSED"] == 0
					})
					waitFor(t, verdictWithin, r.name+" healthy", func() bool {
						c.audit.read(t)
						var last api.State
						for _, l := range c.audit.lines {
							if l.Event == "state" && l.Replica == r.name {
								last = l.To
							}
						}
						return last == "healthy"
					})
				}
			}
			slices.Sort(lat)
			med, worst := lat[len(lat)/2], lat[len(lat)-1]
			t.Logf("%s: n=%d median %s worst %s all %v", fc.name, n, med, worst, lat)
			rows = append(rows, fmt.Sprintf("| %s | %d | %.1f | %.1f | %.1f | %d |", fc.name, n,
				ms(lat[0]), ms(med), ms(worst), falses))
		})
	}
	report(t, "| fault class | injections | best ms | median ms | worst ms | false verdicts on peers |\n|---|---|---|---|---|---|\n"+strings.Join(rows, "\n"))
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// TestBenchFlapping: a replica hung for 300 ms every 2 s. Each stall must be found (degraded)
// as fast as a hang; the replica must be remediated at its third entry (guards.flapCount),
// without waiting --remediate-after, which no single stall lasts.
func TestBenchFlapping(t *testing.T) {
	benchEnabled(t)
	n := envInt("BENCH_FLAP_ROUNDS", 5)
	var lat []time.Duration
	var at []int
	for round := 0; round < n; round++ {
		c := startCluster(t)
		b := c.byName["dns-b"]
		mark := c.audit.mark(t)
		entries := 0
		for len(remediations(c.audit.from(t, mark), "dns-b")) == 0 && entries < 6 {
			m := c.audit.mark(t)
			injected := time.Now()
			b.signal(t, syscall.SIGSTOP)
			deg := c.audit.waitFrom(t, m, verdictWithin, "dns-b degraded", isState("dns-b", "degraded"))
			lat = append(lat, deg.Time.Sub(injected))
			entries++
			stall := time.NewTimer(300*time.Millisecond - time.Since(injected))
			<-stall.C
			b.signal(t, syscall.SIGCONT)
			c.audit.waitFrom(t, m, verdictWithin, "dns-b healthy again", isState("dns-b", "healthy"))
			gap := time.NewTimer(2*time.Second - time.Since(injected))
			<-gap.C
		}
		at = append(at, entries)
	}
	slices.Sort(lat)
	report(t, fmt.Sprintf("| flapping (hung 300 ms every 2 s) | %d stalls | %.1f | %.1f | %.1f | remediated at entry %v (flapCount 3) |",
		len(lat), ms(lat[0]), ms(lat[len(lat)/2]), ms(lat[len(lat)-1]), at))
}

// TestBenchBenign runs each benign situation for BENCH_BENIGN (default 30s) and counts the
// degraded states it raises (all false) and the actions; the staggered outage must end
// global.
func TestBenchBenign(t *testing.T) {
	benchEnabled(t)
	hold := envDuration("BENCH_BENIGN", 30*time.Second)
	type benign struct {
		name  string
		opts  clusterOpts
		start func(ctx context.Context, t *testing.T, c *cluster)
		// global: the situation is a global failure: every replica must end global.
		global bool
	}
	warmApart := func(t testing.TB, c *cluster) {
		for i, r := range c.replicas {
			if i > 0 {
				apart := time.NewTimer(time.Second)
				<-apart.C
			}
			m := new(dns.Msg)
			m.SetQuestion("probe.test.", dns.TypeA)
			if _, err := dns.Exchange(m, r.dnsAddr); err != nil {
				t.Fatalf("warming %s: %v", r.name, err)
			}
		}
	}
	cases := []benign{
		{name: "one client's SERVFAIL storm at one replica (2000 qps of a broken name)",
			start: func(ctx context.Context, _ *testing.T, c *cluster) {
				load(ctx, c.byName["dns-b"].dnsAddr, 2000, 8, func(int) string { return "bad.test." })
			}},
		{name: "NXDOMAIN storm at one replica (3000 qps)",
			start: func(ctx context.Context, _ *testing.T, c *cluster) {
				load(ctx, c.byName["dns-b"].dnsAddr, 3000, 8, func(i int) string { return fmt.Sprintf("n%d.nx.test.", i) })
			}},
		{name: "a round-robin name answered differently by every replica (--check rr.test/A)",
			opts: clusterOpts{healerArgs: []string{"--check", "rr.test/A"}}},
		{name: "an upstream outage reaching cached replicas 1 s apart (cache 30, TTL 3s)", global: true,
			opts: clusterOpts{corefile: "cache 30", ttl: 3, beforeHealer: warmApart},
			start: func(_ context.Context, _ *testing.T, c *cluster) {
				for _, r := range c.replicas {
					r.up.mode.Store(modeServfail)
				}
			}},
	}
	report(t, "\n| benign situation | held | degraded states (false) | remediation lines | suspect transitions | ended global |\n|---|---|---|---|---|---|")
	for _, bc := range cases {
		t.Run(bc.name, func(t *testing.T) {
			c := startClusterWith(t, bc.opts)
			mark := c.audit.mark(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if bc.start != nil {
				bc.start(ctx, t, c)
			}
			c.hold(t, hold)
			cancel()
			degraded, actions, suspects := 0, 0, 0
			globals := map[string]bool{}
			for _, l := range c.audit.from(t, mark) {
				switch {
				case l.Event == "state" && l.To == "degraded":
					degraded++
					t.Logf("false degraded: %s", l.Raw)
				case l.Event == "state" && l.To == "suspect":
					suspects++
					if suspects <= 3 {
						t.Logf("suspect: %s", l.Raw) // what a benign situation looks like to the healer
					}
				case l.Event == "state" && l.To == "global":
					globals[l.Replica] = true
				case l.Event == "remediation":
					actions++
					t.Logf("action: %s", l.Raw)
				}
			}
			report(t, fmt.Sprintf("| %s | %s | %d | %d | %d | %v |", bc.name, hold, degraded, actions, suspects, len(globals) == len(c.replicas)))
			if degraded+actions > 0 {
				t.Errorf("%d degraded states and %d actions in a benign situation", degraded, actions)
			}
			if bc.global && len(globals) != len(c.replicas) {
				t.Errorf("the outage never became global: %v", globals)
			}
		})
	}
}

// TestBenchSoak runs dnsperf against every replica for BENCH_SOAK (default 10m) with a
// healthy cluster and counts verdicts worse than suspect, and actions: all false.
func TestBenchSoak(t *testing.T) {
	benchEnabled(t)
	dnsperf, err := exec.LookPath("dnsperf")
	if err != nil {
		t.Fatalf("dnsperf not found (apt-get install -y dnsperf): %v", err)
	}
	soak := envDuration("BENCH_SOAK", 10*time.Minute)
	qps := envInt("BENCH_SOAK_QPS", 500)
	c := startCluster(t)
	mark := c.audit.mark(t)
	qfile := filepath.Join(t.TempDir(), "queries")
	var q strings.Builder
	for i := 0; i < 1000; i++ {
		switch i % 10 {
		case 0:
			fmt.Fprintf(&q, "n%d.nx.test A\n", i) // some NXDOMAIN, as in real traffic
		case 1:
			q.WriteString("probe.test A\n")
		default:
			q.WriteString("load.test A\n")
		}
	}
	if err := os.WriteFile(qfile, []byte(q.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	var procs []*exec.Cmd
	var outs []*strings.Builder
	for _, r := range c.replicas {
		host, port, _ := net.SplitHostPort(r.dnsAddr)
		cmd := exec.Command(dnsperf, "-s", host, "-p", port, "-d", qfile, "-l", strconv.Itoa(int(soak.Seconds())), "-Q", strconv.Itoa(qps), "-c", "4", "-q", "200")
		out := &strings.Builder{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		procs, outs = append(procs, cmd), append(outs, out)
	}
	for _, p := range procs {
		_ = p.Wait()
	}
	var sent []string
	for i, o := range outs {
		for _, l := range strings.Split(o.String(), "\n") {
			if strings.Contains(l, "Queries per second") || strings.Contains(l, "Queries completed") {
				sent = append(sent, c.replicas[i].name+": "+strings.TrimSpace(l))
			}
		}
	}
	verdicts, globals, actions, suspects := 0, 0, 0, 0
	for _, l := range c.audit.from(t, mark) {
		switch {
		case l.Event == "state" && l.To == "degraded":
			verdicts++
			t.Logf("false verdict: %s", l.Raw)
		case l.Event == "state" && l.To == "global":
			globals++
			t.Logf("false global verdict: %s", l.Raw)
		case l.Event == "remediation":
			actions++
			t.Logf("false action: %s", l.Raw)
		case l.Event == "state" && l.To == "suspect":
			suspects++
		}
	}
	t.Logf("dnsperf:\n%s", strings.Join(sent, "\n"))
	report(t, fmt.Sprintf("\nHealthy soak: %s, dnsperf -Q %d against each of 3 replicas (%s): **%d false degraded verdicts, %d false global verdicts (replica-state lines), %d remediation lines** (dry run, --remediate-after default); %d suspect transitions.",
		soak, qps, strings.Join(sent, "; "), verdicts, globals, actions, suspects))
	if verdicts+globals+actions > 0 {
		t.Errorf("%d degraded, %d global verdicts and %d actions in a healthy soak", verdicts, globals, actions)
	}
}

// procCPU is the process's user+system CPU time.
func procCPU(t *testing.T, pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const hz = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / hz
}

// procMem is VmRSS and VmHWM in KiB.
func procMem(t *testing.T, pid int) (rss, hwm int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == "VmRSS:" {
			rss, _ = strconv.ParseInt(f[1], 10, 64)
		}
		if len(f) >= 2 && f[0] == "VmHWM:" {
			hwm, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	return rss, hwm
}

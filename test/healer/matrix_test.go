//go:build integration

package healer_test

import (
	"context"
	"fmt"

	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dnspulse/dnspulse/healer/api"
	"github.com/dnspulse/dnspulse/healer/audit"
	"github.com/dnspulse/dnspulse/heartbeat"
)

// The fault-matrix rows of docs/design.md that need no Kubernetes, each against three real
// custom CoreDNS processes and the real healer in static mode with --dry-run.

const verdictWithin = 20 * time.Second

func isState(replica string, to api.State) func(line) bool {
	return func(l line) bool { return l.Event == "state" && l.Replica == replica && l.To == to }
}

// expectDegradedAndDryRun waits for the victim's degraded line and its dry-run
// remediation line, and checks no other replica was judged degraded.
func expectDegradedAndDryRun(t *testing.T, c *cluster, mark int, victim string) line {
	t.Helper()
	deg := c.audit.waitFrom(t, mark, verdictWithin, victim+" degraded", isState(victim, "degraded"))
	if len(deg.Reasons) == 0 {
		t.Errorf("degraded without reasons: %s", deg.Raw)
	}
	rem := c.audit.waitFrom(t, mark, verdictWithin, victim+" dry-run remediation", func(l line) bool {
		return l.Event == "remediation" && l.Replica == victim
	})
	if !rem.DryRun || rem.Result != "dry-run" || rem.Action == "" {
		t.Errorf("want a dry-run remediation, got %s", rem.Raw)
	}
	for _, l := range c.audit.from(t, mark) {
		if l.Event == "state" && l.To == "degraded" && l.Replica != victim {
			t.Errorf("a healthy peer was judged degraded: %s", l.Raw)
		}
		if l.Event == "remediation" && l.Replica != victim {
			t.Errorf("remediation of a peer: %s", l.Raw)
		}
	}
	t.Logf("verdict: %s", deg.Raw)
	return deg
}

// expectNoDegradedNoRemediation checks nothing after mark degraded any replica or acted.
func expectNoDegradedNoRemediation(t *testing.T, c *cluster, mark int) {
	t.Helper()
	for _, l := range c.audit.from(t, mark) {
		if l.Event == "state" && l.To == "degraded" {
			t.Errorf("degraded verdict: %s", l.Raw)
		}
		if l.Event == "remediation" {
			t.Errorf("remediation: %s", l.Raw)
		}
	}
}

func TestHungProcess(t *testing.T) {
	c := startCluster(t)
	mark := c.audit.mark(t)
	c.byName["dns-b"].signal(t, syscall.SIGSTOP) // the cleanup sends SIGCONT
	deg := expectDegradedAndDryRun(t, c, mark, "dns-b")
	if !strings.Contains(strings.Join(deg.Reasons, " "), "timeout") {
		t.Errorf("want probe timeouts among the reasons: %v", deg.Reasons)
	}
}

func TestServingPathStuckHTTPAlive(t *testing.T) {
	c := startCluster(t)
	b := c.byName["dns-b"]
	mark := c.audit.mark(t)
	b.up.mode.Store(modeBlackhole) // queries (and the self-probe) hang; /pulse still answers
	deg := expectDegradedAndDryRun(t, c, mark, "dns-b")
	if _, err := b.heartbeat(); err != nil {
		t.Errorf("the pulse listener was meant to stay alive: %v", err)
	}
	if !strings.Contains(strings.Join(deg.Reasons, " "), "self-probe") && !strings.Contains(strings.Join(deg.Reasons, " "), "stale") {
		t.Logf("note: internal reason is %v", deg.Reasons)
	}
}

func TestUpstreamFailingOnOneReplica(t *testing.T) {
	c := startCluster(t)
	mark := c.audit.mark(t)
	c.byName["dns-b"].up.stop() // its forward now goes to a dead loopback port: SERVFAIL
	deg := expectDegradedAndDryRun(t, c, mark, "dns-b")
	if !strings.Contains(strings.Join(deg.Reasons, " "), "SERVFAIL") {
		t.Errorf("want SERVFAIL among the reasons: %v", deg.Reasons)
	}
}

func TestOneReplicaSlower(t *testing.T) {
	c := startCluster(t)
	mark := c.audit.mark(t)
	c.byName["dns-b"].up.mode.Store(modeDelay) // +80 ms on every forwarded query of dns-b
	expectDegradedAndDryRun(t, c, mark, "dns-b")
}

// R2 holds for names the cluster answers itself (under --cluster-domain); probe.test, a
// forwarded name, is judged by its rcode only and does not flag it.
func TestOneReplicaAnswersDifferently(t *testing.T) {
	c := startCluster(t, "--check", "probe.cluster.local/A")
	mark := c.audit.mark(t)
	c.byName["dns-b"].up.mode.Store(modeDifferent)
	deg := expectDegradedAndDryRun(t, c, mark, "dns-b")
	if !strings.Contains(strings.Join(deg.Reasons, " "), "majority") {
		t.Errorf("want the majority disagreement among the reasons: %v", deg.Reasons)
	}
}

func expectGlobal(t *testing.T, c *cluster, mark int) {
	t.Helper()
	for _, r := range c.replicas {
		c.audit.waitFrom(t, mark, verdictWithin, r.name+" global", isState(r.name, "global"))
	}
	c.audit.waitFrom(t, mark, verdictWithin, "the global alert line", func(l line) bool { return l.Event == "global" })
	expectNoDegradedNoRemediation(t, c, mark)
}

func TestEveryReplicaFailingTheSameWay(t *testing.T) {
	c := startCluster(t)
	mark := c.audit.mark(t)
	for _, r := range c.replicas {
		r.up.mode.Store(modeServfail) // an upstream outage seen by everyone
	}
	expectGlobal(t, c, mark)
}

func TestHealerCutOffFromAll(t *testing.T) {
	c := startCluster(t)
	mark := c.audit.mark(t)
	for _, r := range c.replicas {
		r.signal(t, syscall.SIGSTOP)
	}
	expectGlobal(t, c, mark)
}

// holdUnderLoad runs load against one replica until its heartbeat shows it (cond), keeps
// it up for hold, then checks no verdict worse than suspect and no action.
func holdUnderLoad(t *testing.T, c *cluster, victim string, qps int, gen func(int) string, cond func(heartbeat.Window) bool, what string) {
	t.Helper()
	v := c.byName[victim]
	mark := c.audit.mark(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sent := load(ctx, v.dnsAddr, qps, 8, gen)
	waitFor(t, verdictWithin, what, func() bool {
		hb, err := v.heartbeat()
		return err == nil && cond(hb.Windows[heartbeat.Window1s])
	})
	// Let the healer judge a few seconds of it: the observable end is the heartbeat's
	// 1s window staying loaded over successive heartbeats.
	start, _ := v.heartbeat()
	waitFor(t, verdictWithin, "3 s of load", func() bool {
		hb, err := v.heartbeat()
		return err == nil && time.Duration(hb.Seq-start.Seq)*time.Duration(hb.Tick) >= 3*time.Second && cond(hb.Windows[heartbeat.Window1s])
	})
	cancel()
	t.Logf("%d queries sent to %s", sent.Load(), victim)
	expectNoDegradedNoRemediation(t, c, mark)
	for _, l := range c.audit.from(t, mark) {
		if l.Event == "state" && l.To == "global" {
			t.Errorf("global verdict under load: %s", l.Raw)
		}
	}
}

func TestNXDOMAINStormAtOneReplica(t *testing.T) {
	c := startCluster(t)
	holdUnderLoad(t, c, "dns-b", 3000, func(i int) string { return fmt.Sprintf("n%d.nx.test.", i) },
		func(w heartbeat.Window) bool { return w.NXDomainRatio > 0.5 }, "an NXDOMAIN ratio above 0.5 at dns-b")
}

func TestHeavyNormalLoadOnOneReplica(t *testing.T) {
	c := startCluster(t)
	holdUnderLoad(t, c, "dns-b", 4000, func(int) string { return "load.test." },
		func(w heartbeat.Window) bool { return w.Queries > 1500 }, "over 1500 queries a second at dns-b")
}

// Static mode's own remediation: --remediate-exec runs with the replica's name appended
// (here a script that "restarts" the hung replica by resuming it), and the replica comes
// back healthy.
func TestRemediateExecReplacesReplica(t *testing.T) {
	dir := t.TempDir()
	ran := filepath.Join(dir, "ran")
	script := filepath.Join(dir, "restart.sh")
	// The pid files are written below, before any fault, so the script finds them.
	body := fmt.Sprintf("#!/bin/sh\necho \"$1\" >> %s\nkill -CONT $(cat %s/\"$1\".pid)\n", ran, dir)
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	c := startCluster(t, "--dry-run=false", "--remediate-exec", script)
	for _, r := range c.replicas {
		if err := os.WriteFile(filepath.Join(dir, r.name+".pid"), []byte(strconv.Itoa(r.cmd.Process.Pid)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mark := c.audit.mark(t)
	c.byName["dns-b"].signal(t, syscall.SIGSTOP)
	rem := c.audit.waitFrom(t, mark, verdictWithin, "the exec remediation of dns-b", func(l line) bool {
		return l.Event == "remediation" && l.Replica == "dns-b"
	})
	if rem.DryRun || rem.Action != "exec" || rem.Result != "success" || !strings.Contains(rem.Message, "restart.sh dns-b") {
		t.Fatalf("want a successful exec of the script with dns-b, got %s", rem.Raw)
	}
	if b, err := os.ReadFile(ran); err != nil || strings.TrimSpace(string(b)) != "dns-b" {
		t.Errorf("script ran for %q (%v), want dns-b once", b, err)
	}
	c.audit.waitFrom(t, mark, verdictWithin, "dns-b healthy again", isState("dns-b", "healthy"))
}

// R9, R12: an upstream that refuses one replica's queries (an ACL on its source address).
func TestUpstreamRefusesOneReplica(t *testing.T) {
	c := startCluster(t)
	mark := c.audit.mark(t)
	c.byName["dns-b"].up.mode.Store(modeRefused)
	deg := expectDegradedAndDryRun(t, c, mark, "dns-b")
	if !strings.Contains(strings.Join(deg.Reasons, " "), "REFUSED") {
		t.Errorf("want REFUSED among the reasons: %v", deg.Reasons)
	}
}

// Flapping is a fault (guards.flapCount, default 3 in 5m): a replica that hangs for 300 ms
// every couple of seconds never stays degraded for --remediate-after, and is acted on at
// its third entry; its flapping is one audit line (and one Event).
func TestFlappingReplica(t *testing.T) {
	c := startCluster(t)
	b := c.byName["dns-b"]
	mark := c.audit.mark(t)
	entries := 0
	for len(remediations(c.audit.from(t, mark), "dns-b")) == 0 {
		if entries >= 6 {
			t.Fatalf("%d entries into degraded and no remediation", entries)
		}
		m := c.audit.mark(t)
		b.signal(t, syscall.SIGSTOP)
		c.audit.waitFrom(t, m, verdictWithin, "dns-b degraded", isState("dns-b", "degraded"))
		entries++
		stall := time.NewTimer(300 * time.Millisecond) // the stall itself is the fault: its length is the point
		<-stall.C
		b.signal(t, syscall.SIGCONT)
		c.audit.waitFrom(t, m, verdictWithin, "dns-b healthy again", isState("dns-b", "healthy"))
	}
	if entries != 3 {
		t.Errorf("remediated at entry %d, want 3", entries)
	}
	flaps := 0
	for _, l := range c.audit.from(t, mark) {
		if l.Event == audit.EventFlapping {
			flaps++
		}
	}
	if flaps != 1 {
		t.Errorf("%d flapping lines, want 1", flaps)
	}
}

func remediations(lines []line, replica string) []line {
	var out []line
	for _, l := range lines {
		if l.Event == "remediation" && l.Replica == replica && l.Result != "refused" {
			out = append(out, l)
		}
	}
	return out
}

// R12: one client's queries for a broken name SERVFAIL at one replica; the healer's probes
// pass: suspect at most.
func TestSingleClientServfailStorm(t *testing.T) {
	c := startCluster(t)
	holdUnderLoad(t, c, "dns-b", 2000, func(int) string { return "bad.test." },
		func(w heartbeat.Window) bool { return w.ServfailRatio > 0.5 }, "a SERVFAIL ratio above 0.5 at dns-b")
}

// R2 is off for a forwarded name: a round-robin (or CDN) name whose answers differ per
// replica is judged by its rcode only.
func TestRoundRobinNameIsNotStale(t *testing.T) {
	c := startCluster(t, "--check", "rr.test/A")
	mark := c.audit.mark(t)
	c.hold(t, 5*time.Second)
	expectNoDegradedNoRemediation(t, c, mark)
	for _, l := range c.audit.from(t, mark) {
		if l.Event == "state" && l.To != "healthy" {
			t.Errorf("a replica left healthy: %s", l.Raw)
		}
	}
}

// R1: with a cache, an upstream outage reaches each replica when its cache entry expires,
// here a second apart. The first to fail has peers that still answer, but from their caches
// (a TTL counted down): no witness, so not degraded; then all fail: global.
func TestUpstreamOutageReachingCachedReplicasApart(t *testing.T) {
	c := startClusterWith(t, clusterOpts{corefile: "cache 30", ttl: 3, beforeHealer: func(t testing.TB, c *cluster) {
		for i, r := range c.replicas { // fetch probe.test a second apart: the entries expire a second apart
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
	}})
	mark := c.audit.mark(t)
	for _, r := range c.replicas {
		r.up.mode.Store(modeServfail)
	}
	expectGlobal(t, c, mark)
}

// R13: a check every replica answers NXDOMAIN (a typo) is reported as misconfigured (after
// thresholds.brokenCheckAfter, 2s here instead of 30s) and left out: a hang is still found.
func TestBrokenCheckIsReported(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "healer.yaml")
	if err := os.WriteFile(cfg, []byte("thresholds:\n  brokenCheckAfter: 2s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := startClusterWith(t, clusterOpts{healerArgs: []string{"--config", cfg, "--check", "typo.test/A"}, skipHealthy: true})
	c.audit.wait(t, verdictWithin, "the typo check reported broken", func(l line) bool {
		return l.Event == audit.EventCheck && l.Fields["broken"] == true && l.Fields["check"] == "typo.test./A"
	})
	for _, r := range c.replicas {
		c.audit.wait(t, verdictWithin, r.name+" healthy with the broken check left out", isState(r.name, "healthy"))
	}
	c.pastWarmUp(t, 10*time.Second)
	mark := c.audit.mark(t)
	c.byName["dns-b"].signal(t, syscall.SIGSTOP)
	expectDegradedAndDryRun(t, c, mark, "dns-b")
}

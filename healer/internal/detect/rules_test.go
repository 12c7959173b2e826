package detect

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dnspulse/dnspulse/healer/api"
	"github.com/dnspulse/dnspulse/healer/internal/check"
	"github.com/dnspulse/dnspulse/healer/internal/config"
	"github.com/dnspulse/dnspulse/healer/internal/hbreader"
	"github.com/dnspulse/dnspulse/healer/internal/probe"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
	"github.com/dnspulse/dnspulse/heartbeat"
)

// The rules of issue 11, one scenario each, on the fake clock of simulate. Heartbeats are
// noisy (queries, latencies and the odd error vary per replica and tick) unless a rule
// needs otherwise: identical heartbeats would hide a rule that cries wolf.

// noisyHB is a healthy heartbeat whose figures wander as real ones do.
func noisyHB(name string, seq uint64) *heartbeat.Heartbeat {
	rng := rand.New(rand.NewPCG(seq, uint64(len(name))*7919+uint64(name[0])))
	q := 40 + rng.Uint64N(40)
	h := hb(seq, hbOpts{queries: q, p99: time.Duration(300+rng.IntN(2500)) * time.Microsecond})
	w := h.Windows[heartbeat.Window1s]
	if rng.IntN(4) == 0 { // a slow uncached query now and then
		w.LatencyMicros.P99, w.LatencyMicros.Max = 40_000+uint64(rng.IntN(60_000)), 100_000
	}
	if rng.IntN(5) == 0 { // a client's SERVFAIL now and then
		w.Rcodes["SERVFAIL"] = 1
		w.Rcodes["NOERROR"]--
	}
	h.Windows[heartbeat.Window1s] = w
	h.InFlight = &heartbeat.InFlight{Count: rng.Uint64N(3)}
	if h.InFlight.Count > 0 {
		h.InFlight.OldestMicros = 100 + rng.Uint64N(20_000)
	}
	return h
}

func noisyPulse(n string, _ time.Duration, seq uint64) hbreader.Result {
	return hbreader.Result{Latency: time.Millisecond, Kind: hbreader.OK, HB: noisyHB(n, seq)}
}

// noisyProbe is a healthy answer with the latency jitter of a loaded node.
func noisyProbe(n string, s time.Duration) probe.Result {
	r := okProbe(n, s)
	r.Latency = time.Duration(200+rand.IntN(3000)) * time.Microsecond
	return r
}

func rcodeProbe(rc int) probe.Result {
	return probe.Result{Latency: time.Millisecond, Rcode: rc, Failure: fmt.Sprintf("rcode %s (want NOERROR)", dns.RcodeToString[rc])}
}

func TestRulesOfJudgment(t *testing.T) {
	stallFrom, stallFor := faultAt, 70*time.Millisecond
	stalled := func(n string, s time.Duration) bool { return n == "b" && s >= stallFrom && s < stallFrom+stallFor }
	scenarios := []scenario{
		{
			// R9, R12: every answer of b is REFUSED (its upstream's ACL): wrong answers need no
			// span, and REFUSED is compared with the peers like every error rcode.
			name: "upstream answers REFUSED: degraded",
			probe: func(n string, s time.Duration) probe.Result {
				if n == "b" && after(s) {
					return rcodeProbe(dns.RcodeRefused)
				}
				return noisyProbe(n, s)
			},
			pulse: func(n string, s time.Duration, seq uint64) hbreader.Result {
				r := noisyPulse(n, s, seq)
				if n == "b" && after(s) {
					w := r.HB.Windows[heartbeat.Window1s]
					w.Rcodes["REFUSED"] = 6
					r.HB.Windows[heartbeat.Window1s] = w
				}
				return r
			},
			want:  map[string]api.State{"b": api.Degraded},
			never: map[string][]api.State{"a": {api.Degraded}, "c": {api.Degraded}},
		},
		{
			// R9, R12: b's upstream swallows the forwarded name: those probes time out for
			// good, and the heartbeat shows the oldest query in flight aging.
			name:  "upstream black hole on the forwarded name: degraded",
			probe: noisyProbe,
			fwd: func(n string, s time.Duration) probe.Result {
				if n == "b" && after(s) {
					return timeoutProbe()
				}
				return noisyProbe(n, s)
			},
			pulse: func(n string, s time.Duration, seq uint64) hbreader.Result {
				r := noisyPulse(n, s, seq)
				if n == "b" && after(s) {
					r.HB.InFlight = &heartbeat.InFlight{Count: 3, OldestMicros: uint64((s - faultAt).Microseconds())}
				}
				return r
			},
			want:  map[string]api.State{"b": api.Degraded},
			never: map[string][]api.State{"a": {api.Degraded}, "c": {api.Degraded}},
		},
		{
			// R9: a process not scheduled for 70 ms answers late: never degraded.
			name: "a 70 ms stall (not scheduled on a loaded node): never degraded",
			probe: func(n string, s time.Duration) probe.Result {
				if !stalled(n, s) {
					return noisyProbe(n, s)
				}
				if wait := stallFrom + stallFor - s; wait < 40*time.Millisecond {
					r := noisyProbe(n, s) // answered when the process runs again, in time
					r.Latency = wait + time.Millisecond
					return r
				}
				return timeoutProbe()
			},
			// The probes that timed out are answered when the process runs again.
			lateReply: func(n string, s time.Duration) time.Duration { return stallFrom + stallFor - s + time.Millisecond },
			pulse: func(n string, s time.Duration, seq uint64) hbreader.Result {
				if stalled(n, s) {
					return hbreader.Result{Latency: 40 * time.Millisecond, Kind: hbreader.Unreachable, Err: errors.New("no answer within the read timeout")}
				}
				return noisyPulse(n, s, seq)
			},
			never: map[string][]api.State{"a": {api.Degraded, api.Global}, "b": {api.Degraded, api.Global}, "c": {api.Degraded, api.Global}},
		},
		{
			// R12: one client's bad name SERVFAILs on b, but the healer's probes are fine:
			// suspect at most.
			name:  "a single client's SERVFAIL storm: never degraded",
			probe: noisyProbe,
			pulse: func(n string, s time.Duration, seq uint64) hbreader.Result {
				r := noisyPulse(n, s, seq)
				if n == "b" && after(s) {
					r.HB = hb(seq, hbOpts{queries: 400, servfail: 0.5})
					w := r.HB.Windows[heartbeat.Window1s]
					w.ServfailSourceEntropy = 0
					r.HB.Windows[heartbeat.Window1s] = w
				}
				return r
			},
			never: map[string][]api.State{"a": {api.Degraded}, "b": {api.Degraded, api.Global}, "c": {api.Degraded}},
		},
		{
			// R2 off for a name whose answers may differ (a CDN, round robin): rcode only.
			name: "a round-robin name answered differently per replica: never degraded",
			checks: []check.Check{
				{Name: "a.example.", Type: dns.TypeA, Majority: true},
				{Name: "cdn.example.", Type: dns.TypeA, Majority: false},
			},
			probeCheck: func(n string, c int, s time.Duration) probe.Result {
				r := noisyProbe(n, s)
				if c == 1 {
					r.AnswerKey = "cdn.example. A 10.0.0." + n
				}
				return r
			},
			probe: noisyProbe,
			pulse: noisyPulse,
			never: map[string][]api.State{"a": {api.Degraded, api.Suspect}, "b": {api.Degraded, api.Suspect}, "c": {api.Degraded, api.Suspect}},
		},
		{
			// R1: the forwarded name's cache expires on each replica seconds apart while the
			// upstream is down. The first to fail has peers that still answer, but from their
			// caches (the TTL counts down): no witness. Then all fail: global.
			name:   "an upstream outage reaching cached replicas seconds apart: global, never degraded",
			runFor: 4 * time.Second,
			probe:  noisyProbe,
			fwd: func(n string, s time.Duration) probe.Result {
				phase := map[string]time.Duration{"a": 50 * time.Millisecond, "b": 500 * time.Millisecond, "c": 900 * time.Millisecond}[n]
				ttl := time.Second
				fetched := phase + (s-phase)/ttl*ttl // the last refetch before s
				if s < phase {
					fetched = phase - ttl
				}
				if fetched >= faultAt {
					return rcodeProbe(dns.RcodeServerFailure)
				}
				r := noisyProbe(n, s)
				r.TTL = ttl - (s - fetched)
				return r
			},
			pulse: noisyPulse,
			want:  map[string]api.State{"a": api.Global, "b": api.Global, "c": api.Global},
			never: map[string][]api.State{"a": {api.Degraded}, "b": {api.Degraded}, "c": {api.Degraded}},
		},
		{
			// The common case on a loaded node: noise everywhere, no fault.
			name:   "noisy heartbeats and probes, no fault: healthy",
			runFor: 4 * time.Second,
			probe: func(n string, s time.Duration) probe.Result {
				if rand.IntN(200) == 0 { // a lost datagram now and then
					return timeoutProbe()
				}
				return noisyProbe(n, s)
			},
			pulse: noisyPulse,
			never: map[string][]api.State{"a": {api.Degraded, api.Global}, "b": {api.Degraded, api.Global}, "c": {api.Degraded, api.Global}},
		},
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			got := simulate(t, sc, config.DefaultThresholds())
			for _, n := range []string{"a", "b", "c"} {
				during := statesAfter(got[n], t0.Add(faultAt))
				for _, bad := range sc.never[n] {
					if slices.Contains(during, bad) {
						t.Errorf("%s reached %s: transitions %v", n, bad, got[n])
					}
				}
				if w, ok := sc.want[n]; ok && !slices.Contains(during, w) {
					t.Errorf("%s: want %s after the fault, got transitions %v", n, w, got[n])
				}
			}
		})
	}
}

// R6: the heartbeat alone never keeps a replica degraded once its probes are clean.
func TestInternalAloneDoesNotHoldDegraded(t *testing.T) {
	sc := scenario{
		probe: func(n string, s time.Duration) probe.Result {
			if n == "b" && after(s) && s < faultAt+300*time.Millisecond {
				return timeoutProbe()
			}
			return okProbe(n, s)
		},
		pulse: func(n string, s time.Duration, seq uint64) hbreader.Result {
			r := okPulse(n, s, seq)
			if n == "b" && after(s) {
				r.HB = hb(seq, hbOpts{selfFail: true}) // stays failing after the probes recover
			}
			return r
		},
	}
	got := simulate(t, sc, config.DefaultThresholds())
	var seq []api.State
	for _, tr := range got["b"] {
		seq = append(seq, tr.To)
	}
	i := slices.Index(seq, api.Degraded)
	if i < 0 {
		t.Fatalf("b never degraded: %v", got["b"])
	}
	if seq[len(seq)-1] == api.Degraded {
		t.Errorf("b still degraded with clean probes (its heartbeat alone holds it): %v", got["b"])
	}
}

// R14: a replica Ready for less than the warm-up is never degraded for being slower than its
// peers (a cold cache), but still for hard evidence (it hangs).
func TestYoungReplicaJudgedOnHardEvidenceOnly(t *testing.T) {
	slow := scenario{
		probe: func(n string, s time.Duration) probe.Result {
			r := okProbe(n, s)
			if n == "b" && after(s) {
				r.Latency = 90 * time.Millisecond
			}
			return r
		},
		pulse: func(n string, s time.Duration, seq uint64) hbreader.Result {
			r := okPulse(n, s, seq)
			if n == "b" && after(s) {
				r.HB = hb(seq, hbOpts{p99: 90 * time.Millisecond})
			}
			return r
		},
	}
	hung := scenario{
		probe: func(n string, s time.Duration) probe.Result {
			if n == "b" && after(s) {
				return timeoutProbe()
			}
			return okProbe(n, s)
		},
		pulse: func(n string, s time.Duration, seq uint64) hbreader.Result {
			if n == "b" && after(s) {
				return hbreader.Result{Latency: 40 * time.Millisecond, Kind: hbreader.Unreachable, Err: errors.New("timeout")}
			}
			return okPulse(n, s, seq)
		},
	}
	for _, tc := range []struct {
		sc    scenario
		young time.Duration
		want  bool
	}{
		{slow, 0, true}, {slow, time.Hour, false}, {hung, time.Hour, true},
	} {
		got := simulateYoung(t, tc.sc, tc.young)
		if d := slices.ContainsFunc(got["b"], func(tr Transition) bool { return tr.To == api.Degraded }); d != tc.want {
			t.Errorf("young for %v: degraded %v, want %v: %v", tc.young, d, tc.want, got["b"])
		}
	}
}

// R13: a check every replica answers NXDOMAIN (a typo) is reported after BrokenCheckAfter and
// left out: the other check's fault is still found. One passing replica brings it back.
func TestBrokenCheckIsReportedNotObeyed(t *testing.T) {
	th := config.DefaultThresholds()
	th.BrokenCheckAfter = config.D(500 * time.Millisecond)
	sc := scenario{
		checks: []check.Check{
			{Name: "a.example.", Type: dns.TypeA, Majority: true},
			{Name: "typo.example.", Type: dns.TypeA},
		},
		probeCheck: func(n string, c int, s time.Duration) probe.Result {
			if c == 1 {
				return rcodeProbe(dns.RcodeNameError)
			}
			if n == "b" && s >= faultAt+500*time.Millisecond {
				return timeoutProbe()
			}
			return okProbe(n, s)
		},
		probe: okProbe,
		pulse: func(n string, s time.Duration, seq uint64) hbreader.Result {
			if n == "b" && s >= faultAt+500*time.Millisecond {
				return hbreader.Result{Latency: 40 * time.Millisecond, Kind: hbreader.Unreachable, Err: errors.New("timeout")}
			}
			return okPulse(n, s, seq)
		},
		runFor: 3 * time.Second,
	}
	d, got := simulateDetector(t, sc, th, 0)
	changes := d.CheckChanges()
	if len(changes) != 1 || !changes[0].Broken || changes[0].Check != "typo.example./A" {
		t.Fatalf("check changes %+v, want typo.example./A broken", changes)
	}
	if !slices.ContainsFunc(got["b"], func(tr Transition) bool { return tr.To == api.Degraded }) {
		t.Errorf("b's hang not found with the broken check left out: %v", got["b"])
	}
	for _, n := range []string{"a", "c"} {
		if st := d.State(n); st != api.Healthy {
			t.Errorf("%s is %s with only the broken check failing, want healthy: %v", n, st, got[n])
		}
	}
}

// R10: a replica slower than its probes' timeout (here +80 ms against a 40 ms timeout) is
// degraded as soon as a hung one would be, about MinFailSpan after its first slow probe:
// its late replies end R9's run of timeouts, and waiting for enough of them would add the
// whole delay again. A 70 ms stall on a loaded node (TestRulesOfJudgment) stays below.
func TestSlowerThanTimeoutDetectedAsFastAsAHang(t *testing.T) {
	const delay = 80 * time.Millisecond
	for _, phase := range []time.Duration{0, 7 * time.Millisecond, 13 * time.Millisecond} {
		fault := faultAt + phase // the probes of b are sent at 7 ms + k x 20 ms
		sc := scenario{
			probe: func(n string, s time.Duration) probe.Result {
				if n == "b" && s >= fault {
					return timeoutProbe()
				}
				return noisyProbe(n, s)
			},
			lateReply: func(n string, s time.Duration) time.Duration { return delay },
			pulse: func(n string, s time.Duration, seq uint64) hbreader.Result {
				r := noisyPulse(n, s, seq)
				if n == "b" && s >= fault+delay/2 {
					r.HB.InFlight = &heartbeat.InFlight{Count: 4, OldestMicros: uint64(delay.Microseconds())}
				}
				return r
			},
		}
		got := simulate(t, sc, config.DefaultThresholds())
		var at time.Duration
		for _, tr := range got["b"] {
			if tr.To == api.Degraded && at == 0 {
				at = tr.At.Sub(t0) - fault
			}
		}
		// The first slow probe goes out within an interval of the fault; the evidence must
		// span MinFailSpan from it; the simulation judges every 5 ms.
		if limit := interval + config.DefaultThresholds().MinFailSpan.D() + 5*time.Millisecond; at <= 0 || at > limit {
			t.Errorf("fault %s after b's probe phase: degraded %s after the fault (want within %s); transitions %v", phase, at, limit, got["b"])
		}
		for _, n := range []string{"a", "c"} {
			if slices.Contains(statesAfter(got[n], t0.Add(faultAt)), api.Degraded) {
				t.Errorf("%s degraded: %v", n, got[n])
			}
		}
	}
}

// A healthy replica's routine answers (right, fast, in the majority) ask for no judgment;
// anything else about it does, and so does any answer of a replica that is not healthy.
func TestRoutineAnswersNeedNoJudgment(t *testing.T) {
	// healthy is a detector whose three replicas are judged healthy, and a feed at its clock.
	healthy := func() (*Detector, func(string, probe.Result)) {
		d := New(config.DefaultThresholds(), []check.Check{{Name: "a.example.", Type: dns.TypeA, Majority: true}}, 0)
		var targets []replica.Target
		for _, n := range []string{"a", "b", "c"} {
			targets = append(targets, replica.Target{Name: n, DNSAddr: n + ":53", PulseAddr: n + ":9155", Ready: true, Remediable: true})
		}
		d.SetTargets(targets, t0)
		at := t0
		feed := func(n string, r probe.Result) {
			at = at.Add(time.Millisecond)
			r.Replica, r.Sent = n, at
			d.ObserveProbe(r)
		}
		for range 10 {
			for _, n := range []string{"a", "b", "c"} {
				feed(n, okProbe(n, 0))
			}
			d.Evaluate(at)
		}
		if s := d.replicas["a"].state; s != api.Healthy {
			t.Fatalf("a is %s, want healthy", s)
		}
		return d, feed
	}
	slow := okProbe("a", 0)
	slow.Latency = 41 * time.Millisecond
	wrong := okProbe("a", 0)
	wrong.AnswerKey = "a.example. A 10.9.9.9"
	for name, tc := range map[string]struct {
		r     probe.Result
		dirty bool
	}{
		"routine":              {okProbe("a", 0), false},
		"slower than a margin": {slow, true},
		"timeout":              {timeoutProbe(), true},
		"REFUSED":              {rcodeProbe(dns.RcodeRefused), true},
		"not the majority's":   {wrong, true},
	} {
		d, feed := healthy()
		feed("a", tc.r)
		if got := d.replicas["a"].dirty; got != tc.dirty {
			t.Errorf("%s: asks for a judgment %v, want %v", name, got, tc.dirty)
		}
	}
	d, feed := healthy()
	d.replicas["a"].state = api.Suspect
	feed("a", okProbe("a", 0))
	if !d.replicas["a"].dirty {
		t.Error("a suspect replica's routine answer asks for no judgment")
	}
}

// A growing NXDOMAIN storm at one replica keeps it suspect, steadily: between two full
// judgments, its newer heartbeat is compared with what its peers pooled, less exactly what
// it had pooled itself. (Taking out its newer, larger counts instead wrapped the unsigned
// pool around, compared it with garbage, and flipped it between healthy and suspect at every
// line: 288 audit lines in a 30 s storm.)
func TestGrowingStormSteadilySuspect(t *testing.T) {
	sc := scenario{
		probe: noisyProbe,
		pulse: func(n string, s time.Duration, seq uint64) hbreader.Result {
			r := noisyPulse(n, s, seq)
			if n == "b" && after(s) {
				q := 100 + uint64((s-faultAt)/interval)*60 // the window fills up tick by tick
				r.HB = hb(seq, hbOpts{queries: q, nx: 0.9})
			}
			return r
		},
	}
	got := simulate(t, sc, config.DefaultThresholds())
	entries := 0
	for _, tr := range got["b"] {
		if !tr.At.Before(t0.Add(faultAt)) && tr.To == api.Suspect {
			entries++
		}
		if tr.To == api.Degraded {
			t.Errorf("b degraded by an NXDOMAIN storm: %v", tr)
		}
	}
	if entries != 1 {
		t.Errorf("b entered suspect %d times during the storm, want once: %v", entries, got["b"])
	}
}

// firstDegraded is when replica n was first degraded after the fault (0: never), and why.
func firstDegraded(got map[string][]Transition, n string) (time.Duration, []string) {
	for _, tr := range got[n] {
		if tr.To == api.Degraded && !tr.At.Before(t0.Add(faultAt)) {
			return tr.At.Sub(t0) - faultAt, tr.Reasons
		}
	}
	return 0, nil
}

// R12 on the latest 200 ms: a fault whose errors the 1 s window still dilutes below the bar
// (its first SERVFAILs among a second of good answers) fails the internal view as soon as
// the 200 ms window shows them; a pulse older than that window is judged on 1 s alone.
func TestErrorsInTheLatestWindowFailTheInternalView(t *testing.T) {
	sc := func(short bool) scenario {
		return scenario{
			probe: func(n string, s time.Duration) probe.Result {
				if n == "b" && after(s) {
					return probe.Result{Latency: time.Millisecond, Rcode: dns.RcodeServerFailure, Failure: "rcode SERVFAIL (want NOERROR)"}
				}
				return okProbe(n, s)
			},
			pulse: func(n string, s time.Duration, seq uint64) hbreader.Result {
				r := okPulse(n, s, seq)
				// 300 queries a second; after the fault, a third of b's SERVFAIL: 20 of the
				// latest 60, 7 of the second's 300 (0.023: below the 0.05 margin).
				o := hbOpts{queries: 300}
				if n == "b" && after(s) {
					o.servfail = 0.025
				}
				r.HB = hb(seq, o)
				if short {
					w := r.HB.Windows[heartbeat.Window1s]
					w.Queries, w.Rcodes = 60, map[string]uint64{"NOERROR": 60}
					if n == "b" && after(s) {
						w.Rcodes = map[string]uint64{"NOERROR": 40, "SERVFAIL": 20}
					}
					r.HB.Windows[heartbeat.Window200ms] = w
				}
				return r
			},
		}
	}
	got := simulate(t, sc(true), config.DefaultThresholds())
	at, why := firstDegraded(got, "b")
	if at == 0 || !strings.Contains(strings.Join(why, "; "), "SERVFAIL 20 of 60 queries in 200ms") {
		t.Fatalf("b not degraded on its latest 200 ms: at %s, %q; %v", at, why, got["b"])
	}
	for _, n := range []string{"a", "c"} {
		if slices.Contains(statesAfter(got[n], t0.Add(faultAt)), api.Degraded) {
			t.Errorf("%s degraded: %v", n, got[n])
		}
	}
	// Without the 200 ms window (an older pulse), the same second of traffic is below the
	// bar: the external view alone, a suspicion.
	got = simulate(t, sc(false), config.DefaultThresholds())
	if at, why := firstDegraded(got, "b"); at != 0 {
		t.Fatalf("b degraded on the 1 s window alone at %s: %q", at, why)
	}
	if !slices.Contains(statesAfter(got["b"], t0.Add(faultAt)), api.Suspect) {
		t.Fatalf("b not even suspect: %v", got["b"])
	}
}

// R12, the self-probe pending: a replica whose DNS port stopped answering (UDP filtered, the
// heartbeat still served) fails its internal view when its self-probe has been pending for
// an R10 outlier of its peers', long before the probe's own timeout; when every replica's
// self-probe waits alike (a loaded node), none is an outlier.
func TestPendingSelfProbeFailsTheInternalView(t *testing.T) {
	sc := func(everyone bool) scenario {
		return scenario{
			probe: func(n string, s time.Duration) probe.Result {
				if n == "b" && after(s) {
					return timeoutProbe()
				}
				return okProbe(n, s)
			},
			pulse: func(n string, s time.Duration, seq uint64) hbreader.Result {
				r := okPulse(n, s, seq)
				if (n == "b" || everyone) && after(s) {
					r.HB.SelfProbe.PendingMicros = 60_000
				}
				return r
			},
		}
	}
	got := simulate(t, sc(false), config.DefaultThresholds())
	at, why := firstDegraded(got, "b")
	if at == 0 || !strings.Contains(strings.Join(why, "; "), "self-probe unanswered for 60ms (peers 0s)") {
		t.Fatalf("b not degraded on its pending self-probe: at %s, %q; %v", at, why, got["b"])
	}
	got = simulate(t, sc(true), config.DefaultThresholds())
	if at, why := firstDegraded(got, "b"); at != 0 {
		t.Fatalf("b degraded when every self-probe waits alike, at %s: %q", at, why)
	}
}

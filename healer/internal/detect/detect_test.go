package detect

import (
	"errors"
	"fmt"
	"slices"
	"sort"
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

// The simulation: three replicas probed and polled every 20 ms on a fake clock; the fault
// starts at faultAt. Each scenario says what a replica's probe and poll look like at a
// given time; the detector is fed the results at their arrival time and judged every 5 ms.

const (
	interval = 20 * time.Millisecond
	faultAt  = time.Second
	runFor   = 2 * time.Second
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

type probeFn func(name string, sent time.Duration) probe.Result
type pulseFn func(name string, sent time.Duration, seq uint64) hbreader.Result

func okProbe(string, time.Duration) probe.Result {
	return probe.Result{Latency: 300 * time.Microsecond, Rcode: dns.RcodeSuccess, AnswerKey: "a.example. A 10.0.0.1"}
}

func timeoutProbe() probe.Result {
	return probe.Result{Latency: 40 * time.Millisecond, Err: errors.New("timeout"), Timeout: true}
}

type hbOpts struct {
	servfail, nx float64
	p99          time.Duration
	selfFail     bool
	queries      uint64
	verdict      string
}

func hb(seq uint64, o hbOpts) *heartbeat.Heartbeat {
	if o.p99 == 0 {
		o.p99 = 500 * time.Microsecond
	}
	if o.queries == 0 {
		o.queries = 50
	}
	if o.verdict == "" {
		o.verdict = heartbeat.VerdictHealthy
	}
	// A slow replica is slow for every query: p90 too (the internal view compares p90
	// under 100 queries a second).
	p90 := max(uint64(300), uint64(o.p99.Microseconds()))
	w := heartbeat.Window{
		Queries: o.queries, Rcodes: map[string]uint64{"NOERROR": o.queries},
		LatencyMicros: heartbeat.Latency{P50: 200, P90: p90, P99: uint64(o.p99.Microseconds()), Max: uint64(o.p99.Microseconds())},
		ServfailRatio: o.servfail, NXDomainRatio: o.nx,
	}
	if o.servfail > 0 {
		w.Rcodes["SERVFAIL"] = uint64(o.servfail * float64(o.queries))
	}
	if o.nx > 0 {
		w.Rcodes["NXDOMAIN"] = uint64(o.nx * float64(o.queries))
	}
	w.Rcodes["NOERROR"] -= w.Rcodes["SERVFAIL"] + w.Rcodes["NXDOMAIN"]
	h := &heartbeat.Heartbeat{
		Version: 1, Seq: seq, Time: t0, Tick: heartbeat.Duration(interval),
		Windows:   map[string]heartbeat.Window{"1s": w, "10s": w, "60s": w},
		SelfProbe: heartbeat.SelfProbe{OK: !o.selfFail, Rcode: "NOERROR", Time: t0},
		Verdict:   o.verdict,
	}
	if o.selfFail {
		h.SelfProbe.Rcode, h.SelfProbe.Error = "", "timeout"
	}
	return h
}

func okPulse(_ string, _ time.Duration, seq uint64) hbreader.Result {
	return hbreader.Result{Latency: time.Millisecond, Kind: hbreader.OK, HB: hb(seq, hbOpts{})}
}

type scenario struct {
	name  string
	probe probeFn
	pulse pulseFn
	// fresh, when set, adds the canary check.
	fresh replica.FreshnessSource
	// fwd, when set, adds a second check (a forwarded name) whose results it gives.
	fwd probeFn
	// want: the worst state each replica must reach after the fault ("" = not checked),
	// and states it must never reach.
	want  map[string]api.State
	never map[string][]api.State
	// lateReply, when set, says how long after its send a probe that timed out is answered
	// after all (0: never).
	lateReply func(name string, sent time.Duration) time.Duration
	// checks, when set, replaces the default check list (a.example, majority); probeCheck
	// then gives each check's result.
	checks     []check.Check
	probeCheck func(name string, c int, sent time.Duration) probe.Result
	// runFor, when set, replaces runFor.
	runFor time.Duration
}

type event struct {
	at    time.Duration
	probe *probe.Result
	pulse *hbreader.Result
}

func simulate(t *testing.T, sc scenario, th config.Thresholds) map[string][]Transition {
	t.Helper()
	_, got := simulateDetector(t, sc, th, 0)
	return got
}

// simulateYoung runs sc with replicas young (R14) for the given time after they are Ready.
func simulateYoung(t *testing.T, sc scenario, young time.Duration) map[string][]Transition {
	t.Helper()
	_, got := simulateDetector(t, sc, config.DefaultThresholds(), young)
	return got
}

// simulateDetector is simulate that returns the detector too.
func simulateDetector(t *testing.T, sc scenario, th config.Thresholds, young time.Duration) (*Detector, map[string][]Transition) {
	t.Helper()
	names := []string{"a", "b", "c"}
	checks := []check.Check{{Name: "a.example.", Type: dns.TypeA, Majority: true}}
	if sc.checks != nil {
		checks = append([]check.Check(nil), sc.checks...)
	}
	if sc.fresh != nil {
		checks = append(checks, check.Check{Name: "canary.example.", Type: dns.TypeCNAME, Canary: true})
	}
	fwdCheck := -1
	if sc.fwd != nil {
		fwdCheck = len(checks)
		checks = append(checks, check.Check{Name: "fwd.example.", Type: dns.TypeA, Majority: true})
	}
	d := New(th, checks, young)
	var targets []replica.Target
	for _, n := range names {
		targets = append(targets, replica.Target{Name: n, DNSAddr: n + ":53", PulseAddr: n + ":9155", Ready: true, Remediable: true})
	}
	d.SetTargets(targets, t0)

	var evs []event
	for i, n := range names {
		phase := time.Duration(i) * 7 * time.Millisecond
		seq := uint64(100)
		end := runFor
		if sc.runFor > 0 {
			end = sc.runFor
		}
		for sent := phase; sent < end; sent += interval {
			for c := range checks {
				var r probe.Result
				switch {
				case c == fwdCheck:
					r = sc.fwd(n, sent)
				case sc.probeCheck != nil && !checks[c].Canary:
					r = sc.probeCheck(n, c, sent)
				default:
					r = sc.probe(n, sent)
				}
				if checks[c].Canary {
					r.Canary = true
					r.CanaryOK, r.CanaryWhy = sc.fresh.Accept(n, t0.Add(sent), 0)
				}
				r.Replica, r.Check, r.Sent = n, c, t0.Add(sent)
				evs = append(evs, event{at: sent + r.Latency, probe: &r})
				if sc.lateReply != nil && r.Timeout {
					if late := sc.lateReply(n, sent); late > 0 {
						lr := okProbe(n, sent)
						lr.Replica, lr.Check, lr.Sent, lr.Latency, lr.LateReply = n, c, t0.Add(sent), late, true
						evs = append(evs, event{at: sent + late, probe: &lr})
					}
				}
			}
			p := sc.pulse(n, sent+3*time.Millisecond, seq)
			if p.Kind == hbreader.OK && p.HB.Seq == seq {
				seq++
			}
			p.Replica, p.Sent = n, t0.Add(sent+3*time.Millisecond)
			evs = append(evs, event{at: sent + 3*time.Millisecond + p.Latency, pulse: &p})
		}
	}
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].at < evs[j].at })
	got := map[string][]Transition{}
	record := func(trs []Transition) {
		for _, tr := range trs {
			got[tr.Replica] = append(got[tr.Replica], tr)
		}
	}
	next := time.Duration(0)
	for _, ev := range evs {
		for next < ev.at {
			record(d.Evaluate(t0.Add(next)))
			next += 5 * time.Millisecond
		}
		if ev.probe != nil {
			d.ObserveProbe(*ev.probe)
		} else {
			d.ObserveHeartbeat(*ev.pulse)
		}
		record(d.Evaluate(t0.Add(ev.at)))
	}
	return d, got
}

func statesAfter(trs []Transition, after time.Time) []api.State {
	var s []api.State
	for _, tr := range trs {
		if !tr.At.Before(after) {
			s = append(s, tr.To)
		}
	}
	return s
}

func after(d time.Duration) bool { return d >= faultAt }

type fakeFresh struct{ behind string }

func (f fakeFresh) Question() string { return "canary.example." }
func (f fakeFresh) Accept(target string, at time.Time, _ time.Duration) (bool, string) {
	if target == f.behind && at.Sub(t0) >= faultAt {
		return false, "answer is a value replaced 4s ago (max lag 3s)"
	}
	return true, ""
}

func TestFaultMatrix(t *testing.T) {
	scenarios := []scenario{
		{
			name: "process hung (SIGSTOP): probes time out, heartbeat unreachable",
			probe: func(n string, s time.Duration) probe.Result {
				if n == "b" && after(s) {
					return timeoutProbe()
				}
				return okProbe(n, s)
			},
			pulse: func(n string, s time.Duration, seq uint64) hbreader.Result {
				if n == "b" && after(s) {
					return hbreader.Result{Latency: 40 * time.Millisecond, Kind: hbreader.Unreachable, Err: errors.New("no answer within the poll timeout")}
				}
				return okPulse(n, s, seq)
			},
			want: map[string]api.State{"b": api.Degraded}, never: map[string][]api.State{"a": {api.Degraded, api.Global}, "c": {api.Degraded, api.Global}, "b": {api.Global}},
		},
		{
			name: "serving path stuck, HTTP alive: probes time out, self-probe failing",
			probe: func(n string, s time.Duration) probe.Result {
				if n == "b" && after(s) {
					return timeoutProbe()
				}
				return okProbe(n, s)
			},
			pulse: func(n string, s time.Duration, seq uint64) hbreader.Result {
				r := okPulse(n, s, seq)
				if n == "b" && after(s) {
					r.HB = hb(seq, hbOpts{selfFail: true})
				}
				return r
			},
			want: map[string]api.State{"b": api.Degraded}, never: map[string][]api.State{"a": {api.Degraded}, "c": {api.Degraded}},
		},
		{
			name: "this replica's upstream broken: SERVFAIL probes, servfail ratio high vs peers",
			probe: func(n string, s time.Duration) probe.Result {
				if n == "b" && after(s) {
					return probe.Result{Latency: time.Millisecond, Rcode: dns.RcodeServerFailure, Failure: "rcode SERVFAIL (want NOERROR)"}
				}
				return okProbe(n, s)
			},
			pulse: func(n string, s time.Duration, seq uint64) hbreader.Result {
				r := okPulse(n, s, seq)
				if n == "b" && after(s) {
					// Five SERVFAIL (the healer's probes) among 50 queries within the first
					// tick: a significant excess over clean peers (p < 0.01).
					r.HB = hb(seq, hbOpts{servfail: 0.1})
				}
				return r
			},
			want: map[string]api.State{"b": api.Degraded}, never: map[string][]api.State{"a": {api.Degraded}, "c": {api.Degraded}},
		},
		{
			name: "this replica slow (+80 ms): latency outlier vs peers, p99 outlier",
			probe: func(n string, s time.Duration) probe.Result {
				r := okProbe(n, s)
				if n == "b" && after(s) {
					r.Latency = 80 * time.Millisecond
				}
				return r
			},
			pulse: func(n string, s time.Duration, seq uint64) hbreader.Result {
				r := okPulse(n, s, seq)
				if n == "b" && after(s-80*time.Millisecond) {
					r.HB = hb(seq, hbOpts{p99: 80 * time.Millisecond})
				}
				return r
			},
			want: map[string]api.State{"b": api.Degraded}, never: map[string][]api.State{"a": {api.Degraded}, "c": {api.Degraded}},
		},
		{
			name: "this replica answers differently: degraded although the heartbeat looks fine",
			probe: func(n string, s time.Duration) probe.Result {
				r := okProbe(n, s)
				if n == "b" && after(s) {
					r.AnswerKey = "a.example. A 10.9.9.9"
				}
				return r
			},
			pulse: okPulse,
			want:  map[string]api.State{"b": api.Degraded}, never: map[string][]api.State{"a": {api.Degraded, api.Suspect}, "c": {api.Degraded, api.Suspect}},
		},
		{
			name:  "this replica lost its apiserver watch: the canary stays behind",
			probe: okProbe,
			pulse: okPulse,
			fresh: fakeFresh{behind: "b"},
			want:  map[string]api.State{"b": api.Degraded}, never: map[string][]api.State{"a": {api.Degraded}, "c": {api.Degraded}},
		},
		{
			name: "every replica failing the same way (upstream outage): global, never degraded",
			probe: func(n string, s time.Duration) probe.Result {
				if after(s) {
					return probe.Result{Latency: time.Millisecond, Rcode: dns.RcodeServerFailure, Failure: "rcode SERVFAIL (want NOERROR)"}
				}
				return okProbe(n, s)
			},
			pulse: func(n string, s time.Duration, seq uint64) hbreader.Result {
				r := okPulse(n, s, seq)
				if after(s) {
					r.HB = hb(seq, hbOpts{servfail: 0.9, verdict: heartbeat.VerdictDegraded})
				}
				return r
			},
			want:  map[string]api.State{"a": api.Global, "b": api.Global, "c": api.Global},
			never: map[string][]api.State{"a": {api.Degraded}, "b": {api.Degraded}, "c": {api.Degraded}},
		},
		{
			name: "healer cut off from every replica: global, never degraded",
			probe: func(n string, s time.Duration) probe.Result {
				if after(s) {
					return timeoutProbe()
				}
				return okProbe(n, s)
			},
			pulse: func(n string, s time.Duration, seq uint64) hbreader.Result {
				if after(s) {
					return hbreader.Result{Latency: 40 * time.Millisecond, Kind: hbreader.Unreachable, Err: errors.New("timeout")}
				}
				return okPulse(n, s, seq)
			},
			want:  map[string]api.State{"a": api.Global, "b": api.Global, "c": api.Global},
			never: map[string][]api.State{"a": {api.Degraded}, "b": {api.Degraded}, "c": {api.Degraded}},
		},
		{
			name:  "NXDOMAIN storm from one client on one replica: suspect at most",
			probe: okProbe,
			pulse: func(n string, s time.Duration, seq uint64) hbreader.Result {
				r := okPulse(n, s, seq)
				if n == "b" && after(s) {
					r.HB = hb(seq, hbOpts{nx: 0.95, queries: 20000})
				}
				return r
			},
			want:  map[string]api.State{"b": api.Suspect},
			never: map[string][]api.State{"a": {api.Degraded, api.Global}, "b": {api.Degraded, api.Global}, "c": {api.Degraded, api.Global}},
		},
		{
			name: "one replica under heavy but normal load: healthy",
			probe: func(n string, s time.Duration) probe.Result {
				r := okProbe(n, s)
				if n == "b" && after(s) {
					r.Latency = 4 * time.Millisecond
				}
				return r
			},
			pulse: func(n string, s time.Duration, seq uint64) hbreader.Result {
				r := okPulse(n, s, seq)
				if n == "b" && after(s) {
					r.HB = hb(seq, hbOpts{queries: 50000, p99: 8 * time.Millisecond})
				}
				return r
			},
			never: map[string][]api.State{"a": {api.Degraded, api.Suspect, api.Global}, "b": {api.Degraded, api.Suspect, api.Global}, "c": {api.Degraded, api.Suspect, api.Global}},
		},
		{
			name: "probes fail but the heartbeat is fine: one view only, suspect",
			probe: func(n string, s time.Duration) probe.Result {
				if n == "b" && after(s) {
					return timeoutProbe()
				}
				return okProbe(n, s)
			},
			pulse: okPulse,
			want:  map[string]api.State{"b": api.Suspect},
			never: map[string][]api.State{"b": {api.Degraded, api.Global}, "a": {api.Degraded}, "c": {api.Degraded}},
		},
		{
			name:  "heartbeat unreachable but probes fine: suspect",
			probe: okProbe,
			pulse: func(n string, s time.Duration, seq uint64) hbreader.Result {
				if n == "b" && after(s) {
					return hbreader.Result{Latency: time.Millisecond, Kind: hbreader.Unreachable, Err: errors.New("connection refused")}
				}
				return okPulse(n, s, seq)
			},
			want:  map[string]api.State{"b": api.Suspect},
			never: map[string][]api.State{"b": {api.Degraded, api.Global}},
		},
		{
			name: "foreign body at the pulse address and sporadic probe failures: not degraded",
			probe: func(n string, s time.Duration) probe.Result {
				if n == "b" && after(s) && (s/interval)%4 == 0 {
					return timeoutProbe()
				}
				return okProbe(n, s)
			},
			pulse: func(n string, s time.Duration, seq uint64) hbreader.Result {
				if n == "b" && after(s) {
					return hbreader.Result{Latency: time.Millisecond, Kind: hbreader.Invalid, Err: heartbeat.ErrForeign}
				}
				return okPulse(n, s, seq)
			},
			want:  map[string]api.State{"b": api.Suspect},
			never: map[string][]api.State{"b": {api.Degraded, api.Global}},
		},
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			got := simulate(t, sc, config.DefaultThresholds())
			for _, n := range []string{"a", "b", "c"} {
				before := statesAfter(got[n], t0)
				if slices.Contains(before, api.Unknown) && len(before) == 1 {
					t.Errorf("%s: never left unknown", n)
				}
				during := statesAfter(got[n], t0.Add(faultAt))
				for _, bad := range sc.never[n] {
					if slices.Contains(during, bad) {
						t.Errorf("%s reached %s: transitions %v", n, bad, got[n])
					}
				}
				if w, ok := sc.want[n]; ok && !slices.Contains(during, w) {
					t.Errorf("%s: want %s after the fault, got transitions %v", n, w, got[n])
				}
				// Before the fault every replica settles healthy, nothing worse.
				for _, tr := range got[n] {
					if tr.At.Sub(t0) < faultAt && (tr.To == api.Degraded || tr.To == api.Global || tr.To == api.Suspect) {
						t.Errorf("%s: %s before the fault: %v", n, tr.To, tr)
					}
				}
			}
		})
	}
}

// TestDetectionLatency checks the order of magnitude the design aims at (timing figures
// come from the benchmark; this only proves the rules need no long history).
// The upstream fails for every replica: the forwarded name SERVFAILs everywhere while the
// cluster name answers. Mixed with the passing check, one replica's probe sequence never
// looks failing as a whole; judged per check, every replica fails the same check: global,
// and none degraded. One replica alone failing it is degraded (its upstream is broken).
func TestOneCheckFailingEverywhereIsGlobal(t *testing.T) {
	servfail := func(string, time.Duration) probe.Result {
		return probe.Result{Latency: time.Millisecond, Rcode: dns.RcodeServerFailure, Failure: "rcode SERVFAIL, want NOERROR"}
	}
	pulse := func(n string, s time.Duration, seq uint64) hbreader.Result {
		r := okPulse(n, s, seq)
		if after(s) {
			r.HB = hb(seq, hbOpts{servfail: 0.5, queries: 200})
		}
		return r
	}
	got := simulate(t, scenario{
		probe: okProbe,
		fwd: func(n string, s time.Duration) probe.Result {
			if after(s) {
				return servfail(n, s)
			}
			return okProbe(n, s)
		},
		pulse: pulse,
	}, config.DefaultThresholds())
	for _, n := range []string{"a", "b", "c"} {
		states := statesAfter(got[n], t0.Add(faultAt))
		if !slices.Contains(states, api.Global) || slices.Contains(states, api.Degraded) {
			t.Errorf("%s: states %v after the fault; want global and never degraded", n, states)
		}
	}

	got = simulate(t, scenario{
		probe: okProbe,
		fwd: func(n string, s time.Duration) probe.Result {
			if n == "b" && after(s) {
				return servfail(n, s)
			}
			return okProbe(n, s)
		},
		pulse: func(n string, s time.Duration, seq uint64) hbreader.Result {
			if n == "b" {
				return pulse(n, s, seq)
			}
			return okPulse(n, s, seq)
		},
	}, config.DefaultThresholds())
	if states := statesAfter(got["b"], t0.Add(faultAt)); !slices.Contains(states, api.Degraded) {
		t.Errorf("b alone failing the forwarded check: states %v, want degraded", states)
	}
	for _, n := range []string{"a", "c"} {
		if states := statesAfter(got[n], t0.Add(faultAt)); slices.Contains(states, api.Degraded) || slices.Contains(states, api.Global) {
			t.Errorf("%s: states %v, want neither degraded nor global", n, states)
		}
	}
}

func TestDetectionLatency(t *testing.T) {
	sc := scenario{
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
	got := simulate(t, sc, config.DefaultThresholds())
	for _, tr := range got["b"] {
		if tr.To == api.Degraded {
			if lat := tr.At.Sub(t0.Add(faultAt)); lat > 200*time.Millisecond {
				t.Errorf("degraded %s after the fault, want within 200ms", lat)
			}
			return
		}
	}
	t.Fatalf("b never degraded: %v", got["b"])
}

// A fault that reaches the replicas a few milliseconds apart (an upstream outage seen by
// each replica's next query) must still be global, not a local degradation of the first.
func TestStaggeredGlobalFaultIsNotLocal(t *testing.T) {
	start := map[string]time.Duration{"a": faultAt + 3*time.Millisecond, "b": faultAt, "c": faultAt + 2*time.Millisecond}
	sc := scenario{
		probe: func(n string, s time.Duration) probe.Result {
			if s >= start[n] {
				return timeoutProbe()
			}
			return okProbe(n, s)
		},
		pulse: func(n string, s time.Duration, seq uint64) hbreader.Result {
			if s >= start[n] {
				return hbreader.Result{Latency: 40 * time.Millisecond, Kind: hbreader.Unreachable, Err: errors.New("timeout")}
			}
			return okPulse(n, s, seq)
		},
	}
	got := simulate(t, sc, config.DefaultThresholds())
	for n, trs := range got {
		for _, tr := range trs {
			if tr.To == api.Degraded {
				t.Errorf("%s degraded in a global fault: %v", n, tr)
			}
		}
	}
}

func TestRecoveryAfterDegraded(t *testing.T) {
	sc := scenario{
		probe: func(n string, s time.Duration) probe.Result {
			if n == "b" && after(s) && s < faultAt+300*time.Millisecond {
				return timeoutProbe()
			}
			return okProbe(n, s)
		},
		pulse: func(n string, s time.Duration, seq uint64) hbreader.Result {
			if n == "b" && after(s) && s < faultAt+300*time.Millisecond {
				return hbreader.Result{Latency: 40 * time.Millisecond, Kind: hbreader.Unreachable, Err: errors.New("timeout")}
			}
			return okPulse(n, s, seq)
		},
	}
	got := simulate(t, sc, config.DefaultThresholds())
	var seq []api.State
	for _, tr := range got["b"] {
		seq = append(seq, tr.To)
	}
	i := slices.Index(seq, api.Degraded)
	if i < 0 || seq[len(seq)-1] != api.Healthy {
		t.Fatalf("want degraded then healthy, got %v", seq)
	}
	if slices.Contains(seq[i+1:], api.Degraded) {
		t.Errorf("flapped back to degraded: %v", seq)
	}
}

func TestNoMajorityWithTwoReplicas(t *testing.T) {
	d := New(config.DefaultThresholds(), []check.Check{{Name: "a.example.", Type: dns.TypeA, Majority: true}}, 0)
	d.SetTargets([]replica.Target{
		{Name: "a", DNSAddr: "a:53", Ready: true, Remediable: true},
		{Name: "b", DNSAddr: "b:53", Ready: true, Remediable: true},
	}, t0)
	now := t0
	for i := 0; i < 20; i++ {
		now = now.Add(interval)
		d.ObserveProbe(probe.Result{Replica: "a", Sent: now, Latency: time.Millisecond, AnswerKey: "x"})
		d.ObserveProbe(probe.Result{Replica: "b", Sent: now, Latency: time.Millisecond, AnswerKey: "y"})
		for _, tr := range d.Evaluate(now) {
			if tr.To == api.Degraded {
				t.Fatalf("degraded without a majority: %v", tr)
			}
		}
	}
}

func TestPeerMedian(t *testing.T) {
	s := sortedVals{1, 2, 3}
	for _, tc := range []struct {
		own  float64
		self bool
		want float64
	}{{1, true, 3}, {2, true, 3}, {3, true, 2}, {9, false, 2}} {
		if got, ok := s.peerMedian(tc.own, tc.self); !ok || got != tc.want {
			t.Errorf("peerMedian(%v,%v) = %v, want %v", tc.own, tc.self, got, tc.want)
		}
	}
	if _, ok := (sortedVals{5}).peerMedian(5, true); ok {
		t.Error("no peers must be not ok")
	}
}

// BenchmarkEvaluate100 is the detector's cost per evaluation with 100 replicas, the
// healer's scale target.
func BenchmarkEvaluate100(b *testing.B)  { benchmarkEvaluate(b, 100) }
func BenchmarkEvaluate1000(b *testing.B) { benchmarkEvaluate(b, 1000) }

// The engine's load at 1,000 replicas: a burst of results every 4 ms (6% of the replicas,
// 15,000 results a second) and a judgment after each; Partial is Evaluate (the cost follows
// the changes), All judges every replica every time (what it did before).
func BenchmarkEvaluateBurst1000Partial(b *testing.B) { benchmarkBurst(b, 1000, false) }
func BenchmarkEvaluateBurst1000All(b *testing.B)     { benchmarkBurst(b, 1000, true) }

func benchmarkBurst(b *testing.B, n int, all bool) {
	d := New(config.DefaultThresholds(), []check.Check{{Name: "a.example.", Type: dns.TypeA, Majority: true}}, 0)
	var ts []replica.Target
	for i := 0; i < n; i++ {
		ts = append(ts, replica.Target{Name: fmt.Sprintf("r%04d", i), DNSAddr: "x", PulseAddr: "y", Ready: true, Remediable: true})
	}
	d.SetTargets(ts, t0)
	now := t0
	k := 0
	hbs := make([]hbreader.Result, 16) // built ahead: the detector's cost is measured, not the test's
	for i := range hbs {
		hbs[i] = okPulse("", 0, uint64(i))
	}
	feed := func(m int) {
		for j := 0; j < m; j++ {
			tg := ts[k%n]
			k++
			r := okProbe(tg.Name, 0)
			r.Replica, r.Sent = tg.Name, now
			d.ObserveProbe(r)
			p := hbs[(k/n)%len(hbs)]
			p.Replica = tg.Name
			d.ObserveHeartbeat(p)
		}
	}
	for range 10 * n / 60 {
		now = now.Add(4 * time.Millisecond)
		feed(60)
		d.Evaluate(now)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		now = now.Add(4 * time.Millisecond)
		feed(60)
		if all {
			d.evaluateAll(now)
		} else {
			d.Evaluate(now)
		}
	}
}

func benchmarkEvaluate(b *testing.B, n int) {
	d := New(config.DefaultThresholds(), []check.Check{{Name: "a.example.", Type: dns.TypeA, Majority: true}}, 0)
	var ts []replica.Target
	for i := 0; i < n; i++ {
		ts = append(ts, replica.Target{Name: fmt.Sprintf("r%04d", i), DNSAddr: "x", PulseAddr: "y", Ready: true, Remediable: true})
	}
	d.SetTargets(ts, t0)
	now := t0
	for k := 0; k < 10; k++ {
		now = now.Add(interval)
		for _, tg := range ts {
			r := okProbe(tg.Name, 0)
			r.Replica, r.Sent = tg.Name, now
			d.ObserveProbe(r)
			p := okPulse(tg.Name, 0, uint64(k))
			p.Replica = tg.Name
			d.ObserveHeartbeat(p)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d.Evaluate(now)
	}
}

// An overloaded host stalls every replica within a few milliseconds of each other for
// 100-150 ms (both views time out): no replica is worse than its peers, so none is
// degraded. (Stalls that start tens of milliseconds apart are indistinguishable from a
// local fault within the detection target; the healer's own stalls are filtered as Late.)
func TestStaggeredStallsAreNotLocal(t *testing.T) {
	stalls := map[string][][2]time.Duration{
		"a": {{faultAt, faultAt + 150*time.Millisecond}, {faultAt + 400*time.Millisecond, faultAt + 520*time.Millisecond}},
		"b": {{faultAt + 8*time.Millisecond, faultAt + 160*time.Millisecond}, {faultAt + 390*time.Millisecond, faultAt + 500*time.Millisecond}},
		"c": {{faultAt + 12*time.Millisecond, faultAt + 120*time.Millisecond}, {faultAt + 410*time.Millisecond, faultAt + 560*time.Millisecond}},
	}
	stalled := func(n string, s time.Duration) bool {
		for _, w := range stalls[n] {
			if s >= w[0] && s < w[1] {
				return true
			}
		}
		return false
	}
	sc := scenario{
		probe: func(n string, s time.Duration) probe.Result {
			if stalled(n, s) {
				return timeoutProbe()
			}
			return okProbe(n, s)
		},
		pulse: func(n string, s time.Duration, seq uint64) hbreader.Result {
			if stalled(n, s) {
				return hbreader.Result{Latency: 40 * time.Millisecond, Kind: hbreader.Unreachable, Err: errors.New("timeout")}
			}
			return okPulse(n, s, seq)
		},
	}
	got := simulate(t, sc, config.DefaultThresholds())
	for n, trs := range got {
		for _, tr := range trs {
			if tr.To == api.Degraded {
				t.Errorf("%s degraded by host-wide stalls: %v", n, tr)
			}
		}
	}
}

// A global failure that ends unevenly: the last replica to recover is not degraded.
// (TestStaggeredStallsAreNotLocal covers an episode too short to be declared global.)
func TestUnevenRecoveryFromGlobal(t *testing.T) {
	end := map[string]time.Duration{"a": faultAt + 600*time.Millisecond, "b": faultAt + 600*time.Millisecond, "c": faultAt + 750*time.Millisecond}
	sc := scenario{
		probe: func(n string, s time.Duration) probe.Result {
			if after(s) && s < end[n] {
				return timeoutProbe()
			}
			return okProbe(n, s)
		},
		pulse: func(n string, s time.Duration, seq uint64) hbreader.Result {
			if after(s) && s < end[n] {
				return hbreader.Result{Latency: 40 * time.Millisecond, Kind: hbreader.Unreachable, Err: errors.New("timeout")}
			}
			return okPulse(n, s, seq)
		},
	}
	got := simulate(t, sc, config.DefaultThresholds())
	sawGlobal := false
	for n, trs := range got {
		for _, tr := range trs {
			if tr.To == api.Degraded {
				t.Errorf("%s degraded after a global failure: %v", n, tr)
			}
			sawGlobal = sawGlobal || tr.To == api.Global
		}
	}
	if !sawGlobal {
		t.Error("no global verdict")
	}
}

// A replica that fails while starting (not Ready) is suspect at most, and once Ready its
// start-up failures are forgotten: no stale degraded verdict to act on.
func TestStartingReplicaIsNeverDegradedOnItsStartup(t *testing.T) {
	d := New(config.DefaultThresholds(), []check.Check{{Name: "a.example.", Type: dns.TypeA, Majority: true}}, 0)
	ready := func(b bool) []replica.Target {
		return []replica.Target{
			{Name: "a", DNSAddr: "a:53", Ready: true, Remediable: true},
			{Name: "b", DNSAddr: "b:53", Ready: true, Remediable: true},
			{Name: "new", DNSAddr: "n:53", Ready: b, Remediable: true},
		}
	}
	d.SetTargets(ready(false), t0)
	now := t0
	for i := 0; i < 30; i++ {
		now = now.Add(interval)
		for _, n := range []string{"a", "b"} {
			r := okProbe(n, 0)
			r.Replica, r.Sent = n, now
			d.ObserveProbe(r)
		}
		r := timeoutProbe()
		r.Replica, r.Sent = "new", now
		d.ObserveProbe(r)
		for _, tr := range d.Evaluate(now.Add(41 * time.Millisecond)) {
			if tr.Replica == "new" && tr.To == api.Degraded {
				t.Fatalf("a starting replica was judged degraded: %v", tr)
			}
		}
	}
	if st := d.State("new"); st != api.Suspect {
		t.Fatalf("starting replica failing probes: %s, want suspect", st)
	}
	d.SetTargets(ready(true), t0)
	now = now.Add(interval)
	for _, n := range []string{"a", "b", "new"} {
		r := okProbe(n, 0)
		r.Replica, r.Sent = n, now
		d.ObserveProbe(r)
	}
	d.Evaluate(now.Add(time.Millisecond))
	if st := d.State("new"); st == api.Degraded || st == api.Suspect {
		t.Errorf("ready replica answering fine is %s: start-up failures not forgotten", st)
	}
}

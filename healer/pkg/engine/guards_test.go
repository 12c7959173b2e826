package engine

import (
	"strings"
	"testing"
	"time"

	"github.com/dnspulse/dnspulse/healer/pkg/detect"
	"github.com/dnspulse/dnspulse/healer/pkg/replica"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func targets(names ...string) []replica.Target {
	var ts []replica.Target
	for _, n := range names {
		ts = append(ts, replica.Target{Name: n, Ready: true, Remediable: true})
	}
	return ts
}

func TestGuards(t *testing.T) {
	cfg := GuardConfig{MinAvailable: 1, MaxDegraded: 1, Cooldown: 5 * time.Minute, GlobalCooldown: time.Minute, RetryBackoff: 5 * time.Second, RetryBackoffMax: 20 * time.Second}
	ts := targets("a", "b", "c")
	healthyBut := func(deg ...string) map[string]detect.State {
		s := map[string]detect.State{"a": detect.Healthy, "b": detect.Healthy, "c": detect.Healthy}
		for _, d := range deg {
			s[d] = detect.Degraded
		}
		return s
	}
	for _, tc := range []struct {
		name   string
		setup  func(g *guards)
		target replica.Target
		states map[string]detect.State
		now    time.Time
		act    bool
		wait   bool
		why    string
	}{
		{name: "one degraded, peers healthy: act", target: ts[1], states: healthyBut("b"), now: t0, act: true},
		{name: "not ready", target: replica.Target{Name: "b", Remediable: true}, states: healthyBut("b"), now: t0, why: "not Ready"},
		{name: "not remediable", target: replica.Target{Name: "b", Ready: true, Why: "owned by a StatefulSet"}, states: healthyBut("b"), now: t0, why: "StatefulSet"},
		{name: "one in flight", setup: func(g *guards) { g.start("a") }, target: ts[1], states: healthyBut("b"), now: t0, wait: true},
		{name: "more degraded than max-degraded", target: ts[1], states: healthyBut("b", "c"), now: t0, why: "--max-degraded"},
		{name: "too few healthy peers", target: ts[1], states: map[string]detect.State{"a": detect.Suspect, "b": detect.Degraded, "c": detect.Unknown}, now: t0, why: "--min-available"},
		{
			name: "replica cooldown", target: ts[1], states: healthyBut("b"), now: t0.Add(2 * time.Minute), why: "--cooldown",
			setup: func(g *guards) { g.start("b"); g.done(t0, "b", replica.Outcome{Result: "success"}) },
		},
		{
			name: "replica cooldown over", target: ts[1], states: healthyBut("b"), now: t0.Add(6 * time.Minute), act: true,
			setup: func(g *guards) { g.start("b"); g.done(t0, "b", replica.Outcome{Result: "success"}) },
		},
		{
			name: "global cooldown", target: ts[1], states: healthyBut("b"), now: t0.Add(30 * time.Second), why: "--global-cooldown",
			setup: func(g *guards) { g.start("c"); g.done(t0, "c", replica.Outcome{Result: "dry-run"}) },
		},
		{
			name: "blocked by a PDB: wait for RetryAfter", target: ts[1], states: healthyBut("b"), now: t0.Add(9 * time.Second), wait: true,
			setup: func(g *guards) {
				g.start("b")
				g.done(t0, "b", replica.Outcome{Result: "blocked", RetryAfter: 10 * time.Second})
			},
		},
		{
			name: "blocked by a PDB: retry after RetryAfter", target: ts[1], states: healthyBut("b"), now: t0.Add(11 * time.Second), act: true,
			setup: func(g *guards) {
				g.start("b")
				g.done(t0, "b", replica.Outcome{Result: "blocked", RetryAfter: 10 * time.Second})
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGuards(cfg)
			if tc.setup != nil {
				tc.setup(g)
			}
			v := g.check(tc.now, t0.Add(-time.Hour), t0.Add(-time.Hour), tc.target, tc.states, ts)
			if v.act != tc.act || v.wait != tc.wait || (tc.why != "" && !strings.Contains(v.why, tc.why)) || (!v.act && !v.wait && v.guard == "") {
				t.Errorf("got %+v, want act=%v wait=%v why~%q", v, tc.act, tc.wait, tc.why)
			}
		})
	}
}

func TestActAfter(t *testing.T) {
	g := newGuards(GuardConfig{MinAvailable: 1, MaxDegraded: 1, ActAfter: time.Second})
	ts := targets("a", "b", "c")
	states := map[string]detect.State{"a": detect.Healthy, "b": detect.Degraded, "c": detect.Healthy}
	if v := g.check(t0.Add(500*time.Millisecond), t0, t0.Add(-time.Hour), ts[1], states, ts); !v.wait || v.act {
		t.Errorf("degraded for 500ms: want wait, got %+v", v)
	}
	if v := g.check(t0.Add(time.Second), t0, t0.Add(-time.Hour), ts[1], states, ts); !v.act {
		t.Errorf("degraded for 1s: want act, got %+v", v)
	}
}

func TestWarmUp(t *testing.T) {
	g := newGuards(GuardConfig{MinAvailable: 1, MaxDegraded: 1, WarmUp: 10 * time.Second})
	ts := targets("a", "b", "c")
	states := map[string]detect.State{"a": detect.Healthy, "b": detect.Degraded, "c": detect.Healthy}
	degradedSince := t0.Add(-time.Minute)
	readySince := t0
	if v := g.check(t0.Add(9*time.Second), degradedSince, readySince, ts[1], states, ts); v.act || v.wait || v.guard != "warm-up" || !strings.Contains(v.why, "--warm-up") {
		t.Errorf("Ready for 9s of a 10s warm-up: want a warm-up refusal, got %+v", v)
	}
	if v := g.check(t0.Add(9*time.Second), degradedSince, time.Time{}, ts[1], states, ts); v.act || v.guard != "warm-up" {
		t.Errorf("never seen Ready: want a warm-up refusal, got %+v", v)
	}
	if v := g.check(t0.Add(10*time.Second), degradedSince, readySince, ts[1], states, ts); !v.act {
		t.Errorf("Ready for 10s: want act, got %+v", v)
	}
}

func TestBlockedBackoffDoubles(t *testing.T) {
	g := newGuards(GuardConfig{RetryBackoff: 5 * time.Second, RetryBackoffMax: 12 * time.Second, MaxDegraded: 1})
	now := t0
	var waits []time.Duration
	for i := 0; i < 4; i++ {
		g.start("b")
		g.done(now, "b", replica.Outcome{Result: "blocked"})
		waits = append(waits, g.retryAt["b"].Sub(now))
		now = g.retryAt["b"]
	}
	want := []time.Duration{5 * time.Second, 10 * time.Second, 12 * time.Second, 12 * time.Second}
	for i := range want {
		if waits[i] != want[i] {
			t.Fatalf("waits %v, want %v", waits, want)
		}
	}
}

// An evicted replica still terminating (not Ready) may still be judged degraded; it must
// not count against --max-degraded when the next replica fails for real.
func TestTerminatingDegradedDoesNotBlockTheNext(t *testing.T) {
	g := newGuards(GuardConfig{MinAvailable: 1, MaxDegraded: 1})
	ts := targets("a", "b", "c", "d")
	ts[0].Ready = false // a: evicted, in its lameduck
	states := map[string]detect.State{"a": detect.Degraded, "b": detect.Degraded, "c": detect.Healthy, "d": detect.Healthy}
	if v := g.check(t0, t0.Add(-time.Hour), t0.Add(-time.Hour), ts[1], states, ts); !v.act {
		t.Fatalf("b degraded, a terminating: want act, got %+v", v)
	}
	ts[0].Ready = true
	if v := g.check(t0, t0.Add(-time.Hour), t0.Add(-time.Hour), ts[1], states, ts); v.act || v.guard != "max-degraded" {
		t.Fatalf("two Ready replicas degraded: want max-degraded, got %+v", v)
	}
}

package engine

import (
	"strings"
	"testing"
	"time"

	"github.com/dnspulse/dnspulse/healer/api"
	"github.com/dnspulse/dnspulse/healer/internal/config"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func targets(names ...string) []replica.Target {
	var ts []replica.Target
	for _, n := range names {
		ts = append(ts, replica.Target{Name: n, Ready: true, Remediable: true, ContainersReady: true})
	}
	return ts
}

func TestGuards(t *testing.T) {
	cfg := config.Guards{MinAvailable: 1, MaxDegraded: 1, Cooldown: config.D(5 * time.Minute), GlobalCooldown: config.D(time.Minute), RetryBackoff: config.D(5 * time.Second), RetryBackoffMax: config.D(20 * time.Second)}
	ts := targets("a", "b", "c")
	healthyBut := func(deg ...string) map[string]api.State {
		s := map[string]api.State{"a": api.Healthy, "b": api.Healthy, "c": api.Healthy}
		for _, d := range deg {
			s[d] = api.Degraded
		}
		return s
	}
	for _, tc := range []struct {
		name   string
		setup  func(g *guards, rg map[string]*replicaGuard)
		target replica.Target
		states map[string]api.State
		now    time.Time
		act    bool
		wait   bool
		why    string
	}{
		{name: "one degraded, peers healthy: act", target: ts[1], states: healthyBut("b"), now: t0, act: true},
		{name: "not ready", target: replica.Target{Name: "b", Remediable: true, ContainersReady: true}, states: healthyBut("b"), now: t0, why: "not Ready"},
		{name: "not remediable", target: replica.Target{Name: "b", Ready: true, ContainersReady: true, Why: "owned by a StatefulSet"}, states: healthyBut("b"), now: t0, why: "StatefulSet"},
		{name: "one in flight", setup: func(g *guards, _ map[string]*replicaGuard) { g.start("a") }, target: ts[1], states: healthyBut("b"), now: t0, wait: true},
		{name: "more degraded than max-degraded", target: ts[1], states: healthyBut("b", "c"), now: t0, why: "--max-degraded"},
		{name: "too few healthy peers", target: ts[1], states: map[string]api.State{"a": api.Suspect, "b": api.Degraded, "c": api.Unknown}, now: t0, why: "--min-available"},
		{
			name: "replica cooldown", target: ts[1], states: healthyBut("b"), now: t0.Add(2 * time.Minute), why: "--cooldown",
			setup: func(g *guards, rg map[string]*replicaGuard) {
				g.start("b")
				g.done(t0, rg["b"], replica.Outcome{Result: "success"})
			},
		},
		{
			name: "replica cooldown over", target: ts[1], states: healthyBut("b"), now: t0.Add(6 * time.Minute), act: true,
			setup: func(g *guards, rg map[string]*replicaGuard) {
				g.start("b")
				g.done(t0, rg["b"], replica.Outcome{Result: "success"})
			},
		},
		{
			name: "global cooldown", target: ts[1], states: healthyBut("b"), now: t0.Add(30 * time.Second), why: "--global-cooldown",
			setup: func(g *guards, rg map[string]*replicaGuard) {
				g.start("c")
				g.done(t0, rg["c"], replica.Outcome{Result: "dry-run"})
			},
		},
		{
			name: "blocked by a PDB: wait for RetryAfter", target: ts[1], states: healthyBut("b"), now: t0.Add(9 * time.Second), wait: true,
			setup: func(g *guards, rg map[string]*replicaGuard) {
				g.start("b")
				g.done(t0, rg["b"], replica.Outcome{Result: "blocked", RetryAfter: 10 * time.Second})
			},
		},
		{
			name: "blocked by a PDB: retry after RetryAfter", target: ts[1], states: healthyBut("b"), now: t0.Add(11 * time.Second), act: true,
			setup: func(g *guards, rg map[string]*replicaGuard) {
				g.start("b")
				g.done(t0, rg["b"], replica.Outcome{Result: "blocked", RetryAfter: 10 * time.Second})
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGuards(cfg)
			rg := map[string]*replicaGuard{"a": {}, "b": {}, "c": {}}
			if tc.setup != nil {
				tc.setup(g, rg)
			}
			v := g.check(tc.now, candidate{target: tc.target, degradedSince: t0.Add(-time.Hour), readySince: t0.Add(-time.Hour), g: rg[tc.target.Name]}, fleetOf(ts, tc.states))
			if v.act != tc.act || v.wait != tc.wait || (tc.why != "" && !strings.Contains(v.why, tc.why)) || (!v.act && !v.wait && v.guard == "") {
				t.Errorf("got %+v, want act=%v wait=%v why~%q", v, tc.act, tc.wait, tc.why)
			}
		})
	}
}

func TestActAfter(t *testing.T) {
	g := newGuards(config.Guards{MinAvailable: 1, MaxDegraded: 1, RemediateAfter: config.D(time.Second)})
	ts := targets("a", "b", "c")
	states := map[string]api.State{"a": api.Healthy, "b": api.Degraded, "c": api.Healthy}
	c := candidate{target: ts[1], degradedSince: t0, readySince: t0.Add(-time.Hour), g: &replicaGuard{}}
	if v := g.check(t0.Add(500*time.Millisecond), c, fleetOf(ts, states)); !v.wait || v.act {
		t.Errorf("degraded for 500ms: want wait, got %+v", v)
	}
	if v := g.check(t0.Add(time.Second), c, fleetOf(ts, states)); !v.act {
		t.Errorf("degraded for 1s: want act, got %+v", v)
	}
}

func TestWarmUp(t *testing.T) {
	g := newGuards(config.Guards{MinAvailable: 1, MaxDegraded: 1, WarmUp: config.D(10 * time.Second)})
	ts := targets("a", "b", "c")
	states := map[string]api.State{"a": api.Healthy, "b": api.Degraded, "c": api.Healthy}
	c := candidate{target: ts[1], degradedSince: t0.Add(-time.Minute), readySince: t0, g: &replicaGuard{}}
	f := fleetOf(ts, states)
	if v := g.check(t0.Add(9*time.Second), c, f); v.act || v.wait || v.guard != guardWarmUp || !strings.Contains(v.why, "--warm-up") {
		t.Errorf("Ready for 9s of a 10s warm-up: want a warm-up refusal, got %+v", v)
	}
	never := c
	never.readySince = time.Time{}
	if v := g.check(t0.Add(9*time.Second), never, f); v.act || v.guard != guardWarmUp {
		t.Errorf("never seen Ready: want a warm-up refusal, got %+v", v)
	}
	if v := g.check(t0.Add(10*time.Second), c, f); !v.act {
		t.Errorf("Ready for 10s: want act, got %+v", v)
	}
}

func TestBlockedBackoffDoubles(t *testing.T) {
	g := newGuards(config.Guards{RetryBackoff: config.D(5 * time.Second), RetryBackoffMax: config.D(12 * time.Second), MaxDegraded: 1})
	now := t0
	var waits []time.Duration
	var rg replicaGuard
	for i := 0; i < 4; i++ {
		g.start("b")
		g.done(now, &rg, replica.Outcome{Result: "blocked"})
		waits = append(waits, rg.retryAt.Sub(now))
		now = rg.retryAt
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
	g := newGuards(config.Guards{MinAvailable: 1, MaxDegraded: 1})
	ts := targets("a", "b", "c", "d")
	ts[0].Ready = false // a: evicted, in its lameduck
	states := map[string]api.State{"a": api.Degraded, "b": api.Degraded, "c": api.Healthy, "d": api.Healthy}
	c := candidate{target: ts[1], degradedSince: t0.Add(-time.Hour), readySince: t0.Add(-time.Hour), g: &replicaGuard{}}
	if v := g.check(t0, c, fleetOf(ts, states)); !v.act {
		t.Fatalf("b degraded, a terminating: want act, got %+v", v)
	}
	ts[0].Ready = true
	if v := g.check(t0, c, fleetOf(ts, states)); v.act || v.guard != guardMaxDegraded {
		t.Fatalf("two Ready replicas degraded: want max-degraded, got %+v", v)
	}
}

// fleetOf is what Engine.fleetNow computes from the detector's states.
func fleetOf(ts []replica.Target, states map[string]api.State) fleet {
	var f fleet
	for _, t := range ts {
		if !t.Ready {
			continue
		}
		switch states[t.Name] {
		case api.Degraded:
			f.unconfirmed++
		case api.Healthy:
			f.healthyReady++
		}
	}
	return f
}

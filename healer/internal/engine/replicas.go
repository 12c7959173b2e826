package engine

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/dnspulse/dnspulse/healer/api"
	"github.com/dnspulse/dnspulse/healer/audit"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
)

// replicaState is everything the engine keeps about one replica, forgotten in one piece
// when the replica is gone. (Its evidence and state are the detector's.)
type replicaState struct {
	target replica.Target
	// state is the detector's, as its transitions said (Engine.moveState).
	state api.State
	// readyAt is when the replica was first seen Ready here (G3): a readiness flap later
	// does not make it fresh again.
	readyAt time.Time
	// degradedSince and reasons are those of the current degraded episode (zero: none).
	degradedSince time.Time
	reasons       []string
	// refused is the guard whose refusal is already recorded in this episode.
	refused guard
	// boostedUntil: the replica is probed and read faster until then.
	boostedUntil time.Time
	guard        replicaGuard
	// entries are the times it entered degraded within the flap window; flapNotified when
	// its flapping was last announced (one Event per window, not one per entry).
	entries      []time.Time
	flapNotified time.Time
	// drained: this healer drained it and has not evicted or undrained it since; drains are
	// the times of its drains within the drain window (the budget).
	drained bool
	drains  []time.Time
	// partitionReported: its partition (G13) was reported in this episode.
	partitionReported bool
	// metrics are its per-result series, looked up once.
	metrics replicaMetrics
}

// enterDegraded records an entry into degraded at now and says whether the replica is
// flapping: FlapCount entries within FlapWindow.
func (r *replicaState) enterDegraded(now time.Time, count int, window time.Duration) bool {
	kept := r.entries[:0]
	for _, t := range r.entries {
		if now.Sub(t) < window {
			kept = append(kept, t)
		}
	}
	r.entries = append(kept, now)
	return len(r.entries) >= count
}

// flapping says whether the replica entered degraded FlapCount times within the window.
func (r *replicaState) flapping(now time.Time, count int, window time.Duration) bool {
	n := 0
	for _, t := range r.entries {
		if now.Sub(t) < window {
			n++
		}
	}
	return n >= count
}

// sync re-reads the discovered replicas and follows their changes.
func (e *Engine) sync(ctx context.Context) {
	ts := e.mode.Discovery.Targets()
	if slices.EqualFunc(ts, e.order, func(t replica.Target, r *replicaState) bool { return t == r.target }) {
		return
	}
	now := e.now()
	seen := make(map[string]bool, len(ts))
	order := make([]*replicaState, 0, len(ts))
	for _, t := range ts {
		seen[t.Name] = true
		r, ok := e.replicas[t.Name]
		if !ok {
			r = &replicaState{state: api.Unknown}
			e.inState[api.Unknown]++
			e.replicas[t.Name] = r
			e.cfg.Audit.Info(audit.EventReplica, t.Name, map[string]any{
				"replica": t.Name, "dns": t.DNSAddr, "pulse": t.PulseAddr, "ready": t.Ready, "remediable": t.Remediable, "why": t.Why,
			})
			e.cfg.Metrics.SetState(t.Name, api.Unknown)
		}
		if r.readyAt.IsZero() && t.Ready {
			r.readyAt = now
		}
		r.target = t
		order = append(order, r)
	}
	for name, r := range e.replicas {
		if !seen[name] {
			e.unboost(r)
			e.inState[r.state]--
			delete(e.replicas, name)
			e.cfg.Metrics.Forget(name)
			e.cfg.Audit.Info(audit.EventReplicaGone, name, map[string]any{"replica": name})
		}
	}
	e.order = order
	e.det.SetTargets(ts, now)
	e.probes.Sync(ctx, ts)
	e.reads.Sync(ctx, ts)
	e.reportProbeSchedule()
}

// reportProbeSchedule says what the probes keep: every replica every --probe-interval, or,
// when --max-probe-qps cannot pay for that, every replica less often (evenly): then a
// warning and an audit line, since detection is slower by as much.
func (e *Engine) reportProbeSchedule() {
	iv, n, qps := e.probes.Schedule()
	checks := len(e.probes.Checks())
	if want := e.cfg.Probe.Interval.D(); iv > want {
		msg := fmt.Sprintf("%d replicas x %d checks every %s would be %.0f probes/s, above --max-probe-qps %d: every replica is probed every %s instead",
			n, checks, want, float64(n*checks)/want.Seconds(), e.cfg.Probe.MaxQPS, iv)
		e.log.Warn(msg)
		e.cfg.Audit.Info(audit.EventProbeQPSCap, msg, nil)
		return
	}
	e.log.Info("probe schedule", "replicas", n, "checks", checks, "every", iv, "probesPerSecond", int(qps))
}

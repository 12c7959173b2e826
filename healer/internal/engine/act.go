package engine

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dnspulse/dnspulse/healer/api"
	"github.com/dnspulse/dnspulse/healer/audit"
	"github.com/dnspulse/dnspulse/healer/internal/detect"
)

// boostFor is how long a suspect replica is probed and read faster.
const boostFor = 500 * time.Millisecond

// evaluate judges every replica, records and announces the changes, then remediates.
func (e *Engine) evaluate(ctx context.Context, now time.Time) {
	for _, tr := range e.det.Evaluate(now) {
		var detection time.Duration
		if (tr.To == api.Degraded || tr.To == api.Global) && !tr.Since.IsZero() {
			detection = tr.At.Sub(tr.Since)
			if tr.To == api.Degraded {
				e.cfg.Metrics.DetectionLatency.Observe(detection.Seconds())
			}
		}
		e.cfg.Audit.StateChange(tr.At, tr.Replica, tr.From, tr.To, tr.Reasons, detection)
		e.cfg.Metrics.Transitions.WithLabelValues(string(tr.From), string(tr.To)).Inc()
		e.cfg.Metrics.SetState(tr.Replica, tr.To)
		e.log.Info("replica state", "replica", tr.Replica, "from", tr.From, "to", tr.To, "reasons", tr.Reasons)
		r := e.replicas[tr.Replica]
		if r == nil {
			continue
		}
		e.moveState(r, tr.To)
		if (tr.To == api.Suspect || tr.To == api.Degraded) && e.mayBoost(r, tr.At) {
			// Sharper evidence, sooner: confirm or clear the suspicion at 4x the rate.
			e.probes.Boost(tr.Replica, boostFor)
			e.reads.Boost(tr.Replica, boostFor)
		}
		switch tr.To {
		case api.Suspect:
			// A drain may follow in a moment: its dry run can go now (the mode checks that
			// it leads and that the replica can be drained; a dry-run healer drains nothing).
			if e.drainer != nil && !e.cfg.Guards.DryRun && r.target.Ready && !r.target.Drained {
				e.drainer.Anticipate(r.target)
			}
		case api.Degraded:
			r.reasons, r.degradedSince = tr.Reasons, tr.At
			e.degradedEvent(r, tr)
		case api.Global:
			e.mode.Notifier.Notify(r.target, api.ReasonGlobalDNSFailure, strings.Join(tr.Reasons, "; "))
		}
		if tr.From == api.Degraded {
			r.degradedSince, r.reasons, r.refused, r.partitionReported = time.Time{}, nil, "", false
			r.guard.forget()
		}
	}
	e.checkChanges()
	e.global()
	e.followReplacement(ctx, now)
	e.remediate(ctx, now)
}

// degradedEvent announces an entry into degraded: a ReplicaDegraded Event, or, for a replica
// that keeps entering it (flapping), one ReplicaFlapping Event per flap window instead of
// a storm of them. The audit log keeps every transition.
func (e *Engine) degradedEvent(r *replicaState, tr detect.Transition) {
	g := e.cfg.Guards
	if !r.enterDegraded(tr.At, g.FlapCount, g.FlapWindow.D()) {
		e.mode.Notifier.Notify(r.target, api.ReasonReplicaDegraded, strings.Join(tr.Reasons, "; "))
		return
	}
	if !r.flapNotified.IsZero() && tr.At.Sub(r.flapNotified) < g.FlapWindow.D() {
		return
	}
	r.flapNotified = tr.At
	msg := fmt.Sprintf("entered degraded %d times within %s: flapping is a fault, remediated without waiting --remediate-after (every other guard applies); latest: %s",
		len(r.entries), g.FlapWindow.D(), strings.Join(tr.Reasons, "; "))
	e.mode.Notifier.Notify(r.target, api.ReasonReplicaFlapping, msg)
	e.cfg.Audit.Info(audit.EventFlapping, msg, map[string]any{"replica": r.target.Name, "entries": len(r.entries)})
}

// checkChanges reports the checks that became broken (R13) or good again: an audit line, a
// metric and an Event on the healer's pod.
func (e *Engine) checkChanges() {
	for _, c := range e.det.CheckChanges() {
		e.cfg.Audit.Info(audit.EventCheck, c.Why, map[string]any{"check": c.Check, "broken": c.Broken})
		e.cfg.Metrics.SetCheckBroken(c.Check, c.Broken)
		if c.Broken {
			e.log.Warn("check misconfigured", "check", c.Check, "why", c.Why)
			e.mode.Notifier.NotifyHealer(api.ReasonCheckMisconfigured, c.Check+": "+c.Why)
		} else {
			e.log.Info("check good again", "check", c.Check)
		}
	}
}

// mayBoost bounds the replicas probed faster at once (a tenth of them, at least two), so
// that a noisy fleet cannot multiply the healer's load (and its own noise) by four. Every
// boost lasts boostFor, so they end in the order they began: a queue counts them without
// a pass over the fleet per transition.
func (e *Engine) mayBoost(r *replicaState, now time.Time) bool {
	for len(e.boosts) > 0 && !now.Before(e.boosts[0].until) {
		if b := e.boosts[0]; b.r.boostedUntil.Equal(b.until) {
			e.boosted-- // its latest boost ended (an earlier one of a re-boosted replica does not count)
		}
		e.boosts = e.boosts[1:]
	}
	active := e.boosted
	if now.Before(r.boostedUntil) {
		active-- // r itself
	}
	if active >= max(2, len(e.order)/10) {
		return false
	}
	if !now.Before(r.boostedUntil) {
		e.boosted++
	}
	r.boostedUntil = now.Add(boostFor)
	e.boosts = append(e.boosts, boost{r: r, until: r.boostedUntil})
	return true
}

// boost is one replica's boost and when it ends.
type boost struct {
	r     *replicaState
	until time.Time
}

// unboost forgets a replica that is gone.
func (e *Engine) unboost(r *replicaState) {
	if e.now().Before(r.boostedUntil) {
		e.boosted--
	}
	r.boostedUntil = time.Time{}
}

// moveState keeps the engine's count of replicas per state (what global and remediate
// look at) as the detector's transitions move them: a judgment every few milliseconds
// must not look up every replica's state to find none degraded.
func (e *Engine) moveState(r *replicaState, to api.State) {
	e.inState[r.state]--
	r.state = to
	e.inState[to]++
}

// global writes one "global" line when every replica starts failing together, and one
// when that ends: the alert, since no replica is evicted for it (R4).
func (e *Engine) global() {
	if e.inState[api.Global] == 0 && len(e.globalSet) == 0 {
		return
	}
	var set []string
	for _, r := range e.order {
		if e.det.State(r.target.Name) == api.Global {
			set = append(set, r.target.Name)
		}
	}
	if slices.Equal(set, e.globalSet) {
		return
	}
	if len(set) > 0 && len(e.globalSet) == 0 {
		e.cfg.Audit.GlobalChange(true, set, []string{"every ready replica failing at once: alert only, no remediation"})
		e.log.Warn("global DNS failure: every replica failing; no remediation", "replicas", set)
	} else if len(set) == 0 {
		e.cfg.Audit.GlobalChange(false, e.globalSet, []string{"global failure over"})
	}
	e.globalSet = set
}

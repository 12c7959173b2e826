package engine

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/dnspulse/dnspulse/healer/api"
	"github.com/dnspulse/dnspulse/healer/audit"
	"github.com/dnspulse/dnspulse/healer/internal/config"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
)

// op is one remediation step the engine runs in the background: evict (the Remediator's
// action), drain or undrain. One runs at a time (G5).
type op struct {
	action api.Action // ActionDrain, ActionUndrain, or the Remediator's
	name   string
	target replica.Target
	out    replica.Outcome
	dryRun bool
}

// fleetNow summarises the fleet for the guards.
func (e *Engine) fleetNow() fleet {
	var f fleet
	for _, r := range e.order {
		if !r.target.Ready {
			continue
		}
		switch e.det.State(r.target.Name) {
		case api.Degraded:
			if !clusterConfirms(r.target) {
				f.unconfirmed++
			}
		case api.Healthy:
			f.healthyReady++
		}
	}
	return f
}

func (e *Engine) candidate(r *replicaState) candidate {
	g := e.cfg.Guards
	// A partition reported in this episode stays one until the replica leaves degraded: the
	// pod's readiness moving under the healer's own undrain (its evidence forgotten as it turns
	// Ready again) is not new evidence, and only the cluster's view may then confirm (G13).
	unreachable := e.det.Unreachable(r.target.Name) || r.partitionReported
	return candidate{target: r.target, degradedSince: r.degradedSince, readySince: r.readyAt,
		flapping: r.flapping(e.now(), g.FlapCount, g.FlapWindow.D()), unreachable: unreachable, g: &r.guard}
}

// remediate takes at most one step (G5): undrain a replica that recovered; report a
// partition; evict a degraded replica when every guard allows, or drain it when every guard
// but the wait for proof does (G1, G13). A follower, or a leader whose memory is not loaded
// yet, judges and logs but never acts (G11).
func (e *Engine) remediate(ctx context.Context, now time.Time) {
	if !e.leading(ctx) || e.guards.inFlight != "" {
		return
	}
	for _, r := range e.order {
		if r.drained && e.det.State(r.target.Name) != api.Degraded {
			e.startOp(ctx, api.ActionUndrain, r, nil, "recovered before its eviction")
			return
		}
	}
	if e.inState[api.Degraded] == 0 {
		return // nothing below applies but to a degraded replica
	}
	var f fleet
	counted := false
	for _, r := range e.order {
		if e.det.State(r.target.Name) != api.Degraded {
			continue
		}
		if !counted {
			f, counted = e.fleetNow(), true
		}
		c := e.candidate(r)
		d := e.guards.check(now, c, f)
		switch {
		case d.act:
			e.guards.start(r.target.Name)
			e.startOp(ctx, "", r, r.reasonsOrDefault(), "")
			return
		case d.guard == guardIndependent && now.Sub(r.degradedSince) >= e.cfg.Guards.PartitionAfter.D() && !r.partitionReported:
			e.reportPartition(r, now)
			if r.drained {
				e.startOp(ctx, api.ActionUndrain, r, nil, "cut off from the healer, serving as far as the cluster sees: not drained without proof")
				return
			}
		case d.drain && !r.partitionReported && e.drainer != nil && !r.drained && !r.target.Drained && r.mayDrain(now, e.cfg.Guards):
			e.startOp(ctx, api.ActionDrain, r, r.reasonsOrDefault(), "")
			return
		case !d.act && !d.wait:
			e.recordRefusal(r, d)
		}
	}
}

func (r *replicaState) reasonsOrDefault() []string {
	if len(r.reasons) > 0 {
		return slices.Clone(r.reasons)
	}
	return []string{"degraded"}
}

// mayDrain applies the drain budget: DrainsPerWindow drains of one replica per DrainWindow.
func (r *replicaState) mayDrain(now time.Time, g config.Guards) bool {
	n := 0
	for _, t := range r.drains {
		if now.Sub(t) < g.DrainWindow.D() {
			n++
		}
	}
	return n < g.DrainsPerWindow
}

// recordRefusal writes a guard's refusal once per episode and guard.
func (e *Engine) recordRefusal(r *replicaState, d decision) {
	if r.refused == d.guard {
		return
	}
	r.refused = d.guard
	e.cfg.Audit.Remediated(r.target.Name, api.ActionNone, e.cfg.Guards.DryRun, api.ResultRefused, d.why)
	e.cfg.Metrics.Remediations.WithLabelValues(string(api.ActionNone), string(api.ResultRefused)).Inc()
	reason := api.ReasonRemediationSkipped
	if d.guard == guardBudget {
		reason = api.ReasonBudgetSpent
	}
	e.mode.Notifier.Notify(r.target, reason, d.why)
}

// reportPartition says, once per episode, that a replica is degraded on unreachability
// alone while the cluster sees it serving: the healer's network path to it is cut, not the
// replica (G13).
func (e *Engine) reportPartition(r *replicaState, now time.Time) {
	r.partitionReported = true
	lease := "no pulse Lease read"
	if r.target.LeaseKnown {
		lease = "its pulse Lease fresh"
	}
	msg := fmt.Sprintf("the healer has not reached this replica for %s, but the kubelet sees it ready and %s: a network partition between the healer and the replica's node (%s), not a fault of the replica; no eviction",
		now.Sub(r.degradedSince).Round(time.Second), lease, r.target.Node)
	e.log.Warn("partition", "replica", r.target.Name, "node", r.target.Node)
	e.cfg.Audit.Info(audit.EventPartition, msg, map[string]any{"replica": r.target.Name, "node": r.target.Node})
	e.mode.Notifier.Notify(r.target, api.ReasonPartition, msg)
}

// startOp runs one step in the background; its outcome comes back through e.outcomes.
func (e *Engine) startOp(ctx context.Context, action api.Action, r *replicaState, reasons []string, why string) {
	t, dryRun := r.target, e.cfg.Guards.DryRun
	if dryRun && (action == api.ActionDrain || action == api.ActionUndrain) {
		// A dry run drains nothing: it says it would, and goes on as if it had.
		if action == api.ActionDrain {
			r.drains = append(r.drains, e.now())
		}
		r.drained = action == api.ActionDrain
		e.cfg.Audit.Remediated(t.Name, action, true, api.ResultDryRun, "would "+string(action)+" the replica")
		return
	}
	e.guards.start(r.target.Name)
	var intent *replica.Memory
	var intentSeq uint64
	if action == "" && !dryRun && e.mode.Memory != nil {
		m := withEviction(e.guards.memory, t, e.now(), e.order)
		intent, intentSeq = &m, e.memoryOut.next()
	}
	go func() {
		var o replica.Outcome
		switch action {
		case api.ActionDrain:
			o = e.drainer.Drain(ctx, t, reasons)
		case api.ActionUndrain:
			o = e.drainer.Undrain(ctx, t, why)
		default:
			o = e.evictWriteAhead(ctx, t, reasons, dryRun, intent, intentSeq)
		}
		if o.Action == "" {
			o.Action = action
		}
		select {
		case e.outcomes <- op{action: action, name: t.Name, target: t, out: o, dryRun: dryRun}:
		case <-ctx.Done():
		}
	}()
}

// finish records a step's outcome.
func (e *Engine) finish(ctx context.Context, o op) {
	now := e.now()
	r := e.replicas[o.name]
	action := o.out.Action
	if action == "" {
		action = api.ActionNone
	}
	e.cfg.Audit.Remediated(o.name, action, o.dryRun, o.out.Result, o.out.Message)
	e.cfg.Metrics.Remediations.WithLabelValues(string(action), string(o.out.Result)).Inc()
	e.log.Info("remediation", "replica", o.name, "action", action, "dryRun", o.dryRun, "result", o.out.Result, "message", o.out.Message)
	switch o.action {
	case api.ActionDrain:
		e.guards.inFlight = ""
		if r != nil {
			r.drains = append(r.drains, now)
			r.drained = o.out.Result == api.ResultSuccess
			if o.out.Result == api.ResultBlocked || o.out.Result == api.ResultError {
				e.guards.done(now, &r.guard, o.out) // backs off like a refused eviction
				r.guard.lastAction = time.Time{}
			}
		}
		return
	case api.ActionUndrain:
		e.guards.inFlight = ""
		if r != nil && o.out.Result != api.ResultError {
			r.drained = false
		}
		return
	}
	var rg replicaGuard // a replica gone meanwhile: its guard state goes with it
	if r != nil {
		rg = r.guard
		r.drained = false
	}
	e.guards.done(now, &rg, o.out)
	if r != nil {
		r.guard = rg
	}
	if o.out.Result == api.ResultSuccess && !o.dryRun {
		e.remember(ctx, o.target, now)
	} else if !o.dryRun {
		e.saveMemory(ctx) // undo the write-ahead: nothing was evicted
	}
}

// evictWriteAhead saves the guards' memory with the eviction in it (intent) before evicting:
// a leader killed between the Eviction and the save after it would leave the next leader
// without the cooldown and the awaited replacement (G5, G11). Not saved: not evicted.
func (e *Engine) evictWriteAhead(ctx context.Context, t replica.Target, reasons []string, dryRun bool, intent *replica.Memory, seq uint64) replica.Outcome {
	if intent != nil {
		if err := e.memoryOut.save(ctx, e.mode.Memory, *intent, seq); err != nil {
			return replica.Outcome{Action: api.ActionEvict, Result: api.ResultError,
				Message: "the guards' memory could not be saved before the eviction, so no eviction: " + err.Error()}
		}
	}
	return e.mode.Remediator.Remediate(ctx, t, reasons, dryRun)
}

// remember records an eviction in the shared memory (cooldowns, budgets, the replacement
// awaited) and saves it for any leader.
func (e *Engine) remember(ctx context.Context, t replica.Target, now time.Time) {
	e.guards.memory = withEviction(e.guards.memory, t, now, e.order)
	e.saveMemory(ctx)
}

// withEviction is m with an eviction of t at now: the actions of the last hour and this one,
// and its replacement awaited (a replica of its owner that none of the others is). m is not
// changed.
func withEviction(m replica.Memory, t replica.Target, now time.Time, replicas []*replicaState) replica.Memory {
	var kept []replica.ActionRecord
	for _, a := range m.Actions {
		if now.Sub(a.At) < time.Hour {
			kept = append(kept, a)
		}
	}
	m.Actions = append(kept, replica.ActionRecord{Replica: t.Name, Owner: t.Owner, Node: t.Node, At: now})
	p := &replica.Pending{Replica: t.Name, Owner: t.Owner, At: now}
	for _, r := range replicas {
		if r.target.Owner == t.Owner && r.target.Name != t.Name {
			p.Existing = append(p.Existing, r.target.Name)
		}
	}
	m.Pending = p
	return m
}

// followReplacement ends the wait for an evicted replica's replacement (G5): a replica of
// the same owner that did not exist at the eviction is Ready and judged healthy (in static
// mode, the replica itself healthy again), or ReplacementTimeout passed.
func (e *Engine) followReplacement(ctx context.Context, now time.Time) {
	p := e.guards.memory.Pending
	if p == nil {
		return
	}
	for _, r := range e.order {
		t := r.target
		fresh := t.Owner == p.Owner && t.Owner != "" && t.Name != p.Replica && !slices.Contains(p.Existing, t.Name)
		same := p.Owner == "" && t.Name == p.Replica
		if (fresh || same) && t.Ready && e.det.State(t.Name) == api.Healthy {
			e.cfg.Audit.Info(audit.EventReplacement, fmt.Sprintf("%s replaces %s: Ready and healthy after %s", t.Name, p.Replica, now.Sub(p.At).Round(time.Millisecond)),
				map[string]any{"replica": p.Replica, "replacement": t.Name, "result": "healthy"})
			e.guards.memory.Pending = nil
			e.saveMemory(ctx)
			return
		}
	}
	if now.Sub(p.At) >= e.cfg.Guards.ReplacementTimeout.D() {
		msg := fmt.Sprintf("no healthy replacement for %s within %s: the next remediation may go on", p.Replica, e.cfg.Guards.ReplacementTimeout.D())
		e.log.Warn(msg)
		e.cfg.Audit.Info(audit.EventReplacement, msg, map[string]any{"replica": p.Replica, "result": "timeout"})
		e.guards.memory.Pending = nil
		e.saveMemory(ctx)
	}
}

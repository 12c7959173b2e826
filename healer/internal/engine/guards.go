package engine

import (
	"fmt"
	"time"

	"github.com/dnspulse/dnspulse/healer/api"
	"github.com/dnspulse/dnspulse/healer/internal/config"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
)

// guard names the guard that said no or not yet: stable while a refusal's message and
// figures change, so that a refusal is recorded once per episode and guard. Each is a
// paragraph of docs/design.md ("Guards").
type guard string

const (
	guardRemediateAfter guard = "remediate-after"  // G1: degraded long enough (wait; drain allowed)
	guardReady          guard = "ready"            // G2: Ready, drained by us, or broken per the kubelet
	guardWarmUp         guard = "warm-up"          // G3: Ready long enough
	guardRemediable     guard = "remediable"       // G4: a controller recreates it
	guardInFlight       guard = "in-flight"        // G5: one remediation at a time, to a healthy replacement (wait)
	guardRetry          guard = "retry"            // G6: backoff after blocked/error (wait)
	guardCooldown       guard = "cooldown"         // G7: per replica
	guardGlobalCooldown guard = "global-cooldown"  // G8: between any two
	guardMaxDegraded    guard = "max-degraded"     // G9: not a wide fault
	guardMinAvailable   guard = "min-available"    // G10: enough healthy peers remain
	guardLeader         guard = "leader"           // G11: only the leader acts, with its memory loaded
	guardBudget         guard = "budget"           // G12: evictions per owner and per node in an hour
	guardIndependent    guard = "independent-view" // G13: unreachable alone is not proof (wait; drain allowed)
)

// decision is the guards' answer on one degraded replica.
type decision struct {
	act bool // evict now
	// drain: not yet evicted (G1, G13 wait), but every guard that an eviction must pass
	// passes: it may be drained now, reversibly.
	drain bool
	// wait: not now, but no refusal to record either.
	wait  bool
	guard guard
	why   string
}

// replicaGuard is what the guards remember of one replica (kept in its replicaState).
type replicaGuard struct {
	lastAction time.Time
	retryAt    time.Time
	backoff    time.Duration
}

// fleet summarises every replica for the guards, once per evaluation (O(n), not per
// degraded replica).
type fleet struct {
	// unconfirmed: Ready replicas degraded without the cluster's own view confirming it
	// (G9): replicas whose failure the kubelet or their Lease see too serve nothing, and
	// healing them one at a time cannot make things worse; the others may share a cause.
	unconfirmed  int
	healthyReady int // Ready replicas judged healthy
}

// candidate is one degraded replica the guards are asked about.
type candidate struct {
	target        replica.Target
	degradedSince time.Time
	readySince    time.Time // first seen Ready; zero: never
	// flapping: the replica entered degraded FlapCount times within FlapWindow; it has
	// proven its fault and does not wait RemediateAfter (G1).
	flapping bool
	// unreachable: degraded on unreachability alone (detect.Unreachable).
	unreachable bool
	g           *replicaGuard
}

// clusterConfirms says whether the cluster's own view, independent of the healer's network
// path, sees the replica fail: the kubelet's readiness gone, or its pulse Lease stale or
// degraded.
func clusterConfirms(t replica.Target) bool {
	return !t.ContainersReady || t.LeaseKnown && !t.LeaseFresh
}

// confirmed says whether an eviction has its proof (G13): evidence beyond unreachability,
// or the cluster's own view agreeing.
func (c candidate) confirmed() bool {
	return !c.unreachable || !c.target.ClusterView || clusterConfirms(c.target)
}

// guards remembers the actions in flight and overall, and decides whether one more is
// safe. Pure: the time is passed in, so every guard is tested with a fake clock.
type guards struct {
	cfg      config.Guards
	inFlight string
	lastAny  time.Time
	// memory is the evictions of the last hour and the replacement awaited, shared by
	// every leader (replica.Memory).
	memory replica.Memory
}

func newGuards(cfg config.Guards) *guards { return &guards{cfg: cfg} }

// check decides on remediating c, given the fleet.
func (g *guards) check(now time.Time, c candidate, f fleet) decision {
	t, cfg := c.target, g.cfg
	switch {
	case t.Terminating:
		return decision{guard: guardReady, why: "replica is terminating: its replacement is on the way"}
	case !t.Ready && t.ContainersReady:
		return decision{guard: guardReady, why: "replica is not Ready, and not for a fault the kubelet sees: nothing to gain"}
	case c.readySince.IsZero() || now.Sub(c.readySince) < cfg.WarmUp.D():
		return decision{guard: guardWarmUp, why: fmt.Sprintf("--warm-up: replica Ready for %s (< %s): a fresh replica is judged, not remediated", now.Sub(c.readySince).Round(100*time.Millisecond), cfg.WarmUp.D())}
	case !t.Remediable:
		why := t.Why
		if why == "" {
			why = "not remediable"
		}
		return decision{guard: guardRemediable, why: "replica is not remediable: " + why}
	case g.inFlight != "":
		return decision{wait: true, guard: guardInFlight, why: "remediation of " + g.inFlight + " in flight"}
	case g.memory.Pending != nil:
		return decision{wait: true, guard: guardInFlight, why: fmt.Sprintf("the replacement of %s (evicted at %s) is not yet Ready and healthy", g.memory.Pending.Replica, g.memory.Pending.At.Format(time.RFC3339))}
	case now.Before(c.g.retryAt):
		return decision{wait: true, guard: guardRetry, why: fmt.Sprintf("retry after %s", c.g.retryAt.Format(time.RFC3339))}
	}
	if last := c.g.lastAction; !last.IsZero() && now.Sub(last) < cfg.Cooldown.D() {
		return decision{guard: guardCooldown, why: fmt.Sprintf("--cooldown: replica remediated %s ago (< %s)", now.Sub(last).Round(time.Second), cfg.Cooldown.D())}
	}
	if !g.lastAny.IsZero() && now.Sub(g.lastAny) < cfg.GlobalCooldown.D() {
		return decision{guard: guardGlobalCooldown, why: fmt.Sprintf("--global-cooldown: last remediation %s ago (< %s)", now.Sub(g.lastAny).Round(time.Second), cfg.GlobalCooldown.D())}
	}
	if d, spent := g.budgetSpent(now, t); spent {
		return d
	}
	unconfirmed := f.unconfirmed
	if !t.Ready && !clusterConfirms(t) {
		unconfirmed++ // counted by the fleet only when Ready
	}
	if unconfirmed > cfg.MaxDegraded {
		return decision{guard: guardMaxDegraded, why: fmt.Sprintf("--max-degraded: %d replicas degraded on evidence the cluster does not confirm (> %d): not a local fault, no action", unconfirmed, cfg.MaxDegraded)}
	}
	if f.healthyReady < cfg.MinAvailable {
		return decision{guard: guardMinAvailable, why: fmt.Sprintf("--min-available: %d healthy peers (< %d) would remain", f.healthyReady, cfg.MinAvailable)}
	}
	if !c.confirmed() {
		return decision{wait: true, drain: true, guard: guardIndependent,
			why: "the healer cannot reach the replica, but the cluster still sees it serving (kubelet readiness, its Lease): no eviction without an independent view"}
	}
	if !c.flapping && now.Sub(c.degradedSince) < cfg.RemediateAfter.D() {
		return decision{wait: true, drain: true, guard: guardRemediateAfter, why: fmt.Sprintf("degraded for %s, evicting after %s", now.Sub(c.degradedSince), cfg.RemediateAfter.D())}
	}
	return decision{act: true}
}

// budgetSpent applies G12: at most EvictionsPerOwner evictions of the replica's owner and
// EvictionsPerNode on its node in the last hour (from the shared memory).
func (g *guards) budgetSpent(now time.Time, t replica.Target) (decision, bool) {
	owner, node := 0, 0
	for _, a := range g.memory.Actions {
		if now.Sub(a.At) >= time.Hour {
			continue
		}
		if t.Owner != "" && a.Owner == t.Owner {
			owner++
		}
		if t.Node != "" && a.Node == t.Node {
			node++
		}
	}
	switch {
	case t.Owner != "" && owner >= g.cfg.EvictionsPerOwner:
		return decision{guard: guardBudget, why: fmt.Sprintf("eviction budget spent: %d evictions of this replica's owner in the last hour (guards.evictionsPerOwner %d)", owner, g.cfg.EvictionsPerOwner)}, true
	case t.Node != "" && node >= g.cfg.EvictionsPerNode:
		return decision{guard: guardBudget, why: fmt.Sprintf("eviction budget spent: %d evictions on node %s in the last hour (guards.evictionsPerNode %d)", node, t.Node, g.cfg.EvictionsPerNode)}, true
	}
	return decision{}, false
}

func (g *guards) start(name string) { g.inFlight = name }

// done records an outcome in rg (the replica's) and when the replica may be tried again.
// A remediation blocked or failed waits the longer of the remediator's word (a PDB's
// Retry-After) and --retry-backoff, doubled on each retry up to --retry-backoff-max.
func (g *guards) done(now time.Time, rg *replicaGuard, o replica.Outcome) {
	g.inFlight = ""
	switch o.Result {
	case api.ResultSuccess, api.ResultDryRun:
		rg.lastAction, g.lastAny = now, now
		rg.backoff, rg.retryAt = 0, time.Time{}
	case api.ResultBlocked, api.ResultError:
		wait := rg.backoff
		if wait <= 0 {
			wait = g.cfg.RetryBackoff.D()
		} else {
			wait = min(2*wait, g.cfg.RetryBackoffMax.D())
		}
		rg.backoff = wait
		rg.retryAt = now.Add(max(wait, o.RetryAfter))
	default: // refused: do not retry soon
		rg.retryAt = now.Add(max(g.cfg.Cooldown.D(), g.cfg.RetryBackoff.D()))
	}
}

// forget drops a replica's retry state once it is no longer degraded (cooldowns stay).
func (rg *replicaGuard) forget() { rg.retryAt, rg.backoff = time.Time{}, 0 }

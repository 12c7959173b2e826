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
	guardRemediateAfter guard = "remediate-after" // G1: degraded long enough (wait)
	guardReady          guard = "ready"           // G2: only a Ready replica
	guardWarmUp         guard = "warm-up"         // G3: Ready long enough
	guardRemediable     guard = "remediable"      // G4: a controller recreates it
	guardInFlight       guard = "in-flight"       // G5: one remediation at a time (wait)
	guardRetry          guard = "retry"           // G6: backoff after blocked/error (wait)
	guardCooldown       guard = "cooldown"        // G7: per replica
	guardGlobalCooldown guard = "global-cooldown" // G8: between any two
	guardMaxDegraded    guard = "max-degraded"    // G9: not a wide fault
	guardMinAvailable   guard = "min-available"   // G10: enough healthy peers remain
	guardLeader         guard = "leader"          // G11: only the leader acts
)

// decision is the guards' answer on one degraded replica.
type decision struct {
	act bool
	// wait: not now, but no refusal to record either (G1, G5, G6).
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
	degradedReady int // Ready replicas judged degraded
	healthyReady  int // Ready replicas judged healthy
}

// candidate is one degraded replica the guards are asked about.
type candidate struct {
	target        replica.Target
	degradedSince time.Time
	readySince    time.Time // first seen Ready; zero: never
	// flapping: the replica entered degraded FlapCount times within FlapWindow; it has
	// proven its fault and does not wait RemediateAfter (G1).
	flapping bool
	g        *replicaGuard
}

// guards remembers the actions in flight and overall, and decides whether one more is
// safe. Pure: the time is passed in, so every guard is tested with a fake clock.
type guards struct {
	cfg      config.Guards
	inFlight string
	lastAny  time.Time
}

func newGuards(cfg config.Guards) *guards { return &guards{cfg: cfg} }

// check decides on remediating c, given the fleet.
func (g *guards) check(now time.Time, c candidate, f fleet) decision {
	t, cfg := c.target, g.cfg
	switch {
	case !c.flapping && now.Sub(c.degradedSince) < cfg.RemediateAfter.D():
		return decision{wait: true, guard: guardRemediateAfter, why: fmt.Sprintf("degraded for %s, acting after %s", now.Sub(c.degradedSince), cfg.RemediateAfter.D())}
	case !t.Ready:
		return decision{guard: guardReady, why: "replica is not Ready: it is not serving, nothing to gain"}
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
	case now.Before(c.g.retryAt):
		return decision{wait: true, guard: guardRetry, why: fmt.Sprintf("retry after %s", c.g.retryAt.Format(time.RFC3339))}
	}
	if last := c.g.lastAction; !last.IsZero() && now.Sub(last) < cfg.Cooldown.D() {
		return decision{guard: guardCooldown, why: fmt.Sprintf("--cooldown: replica remediated %s ago (< %s)", now.Sub(last).Round(time.Second), cfg.Cooldown.D())}
	}
	if !g.lastAny.IsZero() && now.Sub(g.lastAny) < cfg.GlobalCooldown.D() {
		return decision{guard: guardGlobalCooldown, why: fmt.Sprintf("--global-cooldown: last remediation %s ago (< %s)", now.Sub(g.lastAny).Round(time.Second), cfg.GlobalCooldown.D())}
	}
	// A replica on its way out (evicted, terminating: not Ready) serves nothing; counting
	// it would make the next real fault look like a wide one. The candidate itself counts.
	degraded := f.degradedReady
	if !t.Ready {
		degraded++
	}
	if degraded > cfg.MaxDegraded {
		return decision{guard: guardMaxDegraded, why: fmt.Sprintf("--max-degraded: %d replicas degraded (> %d): not a local fault, no action", degraded, cfg.MaxDegraded)}
	}
	if f.healthyReady < cfg.MinAvailable {
		return decision{guard: guardMinAvailable, why: fmt.Sprintf("--min-available: %d healthy peers (< %d) would remain", f.healthyReady, cfg.MinAvailable)}
	}
	return decision{act: true}
}

func (g *guards) start(name string) { g.inFlight = name }

// done records an outcome in rg (the replica's) and when the replica may be tried again.
func (g *guards) done(now time.Time, rg *replicaGuard, o replica.Outcome) {
	g.inFlight = ""
	switch o.Result {
	case api.ResultSuccess, api.ResultDryRun:
		rg.lastAction, g.lastAny = now, now
		rg.backoff, rg.retryAt = 0, time.Time{}
	case api.ResultBlocked, api.ResultError:
		wait := o.RetryAfter
		if wait <= 0 {
			wait = rg.backoff
			if wait <= 0 {
				wait = g.cfg.RetryBackoff.D()
			} else {
				wait = min(2*wait, g.cfg.RetryBackoffMax.D())
			}
			rg.backoff = wait
		}
		rg.retryAt = now.Add(wait)
	default: // refused: do not retry soon
		rg.retryAt = now.Add(max(g.cfg.Cooldown.D(), g.cfg.RetryBackoff.D()))
	}
}

// forget drops a replica's retry state once it is no longer degraded (cooldowns stay).
func (rg *replicaGuard) forget() { rg.retryAt, rg.backoff = time.Time{}, 0 }

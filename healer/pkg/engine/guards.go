package engine

import (
	"fmt"
	"time"

	"github.com/dnspulse/dnspulse/healer/pkg/detect"
	"github.com/dnspulse/dnspulse/healer/pkg/replica"
)

// GuardConfig is what every mode shares (DESIGN.md: guards on every action).
type GuardConfig struct {
	MinAvailable    int
	MaxDegraded     int
	Cooldown        time.Duration
	GlobalCooldown  time.Duration
	RetryBackoff    time.Duration
	RetryBackoffMax time.Duration
	// ActAfter: a replica must have been degraded this long before it is remediated. The
	// verdict stays fast; the action waits out a stall that resolves by itself.
	ActAfter time.Duration
	// WarmUp: a replica must have been Ready this long before it is remediated. A fresh
	// replacement (cold cache, a watch just synced) or any replica seen right after the
	// healer starts can look worse than its peers for a moment; when unsure, do not evict.
	WarmUp time.Duration
}

// guards remembers past actions and decides whether one more is safe. Pure: the time is
// passed in, so every guard is tested with a fake clock.
type guards struct {
	cfg        GuardConfig
	inFlight   string
	lastAction map[string]time.Time
	lastAny    time.Time
	retryAt    map[string]time.Time
	backoff    map[string]time.Duration
}

func newGuards(cfg GuardConfig) *guards {
	return &guards{cfg: cfg, lastAction: map[string]time.Time{}, retryAt: map[string]time.Time{}, backoff: map[string]time.Duration{}}
}

// verdict of the guards on one degraded replica.
type verdict struct {
	act bool
	// wait: not now, but no refusal to record either (in flight, retry backoff).
	wait bool
	why  string
	// guard names the guard that said no, stable while the message's figures change, so
	// that a refusal is recorded once per episode and guard.
	guard string
}

// check decides on remediating t, degraded since 'since' and Ready since 'readySince'.
// states holds every replica's state, targets every replica.
func (g *guards) check(now, since, readySince time.Time, t replica.Target, states map[string]detect.State, targets []replica.Target) verdict {
	switch {
	case now.Sub(since) < g.cfg.ActAfter:
		return verdict{wait: true, why: fmt.Sprintf("degraded for %s, acting after %s", now.Sub(since), g.cfg.ActAfter)}
	case !t.Ready:
		return verdict{guard: "ready", why: "replica is not Ready: it is not serving, nothing to gain"}
	case readySince.IsZero() || now.Sub(readySince) < g.cfg.WarmUp:
		return verdict{guard: "warm-up", why: fmt.Sprintf("--warm-up: replica Ready for %s (< %s): a fresh replica is judged, not remediated", now.Sub(readySince).Round(100*time.Millisecond), g.cfg.WarmUp)}
	case !t.Remediable:
		why := t.Why
		if why == "" {
			why = "not remediable"
		}
		return verdict{guard: "remediable", why: "replica is not remediable: " + why}
	case g.inFlight != "":
		return verdict{wait: true, why: "remediation of " + g.inFlight + " in flight"}
	case now.Before(g.retryAt[t.Name]):
		return verdict{wait: true, why: fmt.Sprintf("retry after %s", g.retryAt[t.Name].Format(time.RFC3339))}
	}
	if last, ok := g.lastAction[t.Name]; ok && now.Sub(last) < g.cfg.Cooldown {
		return verdict{guard: "cooldown", why: fmt.Sprintf("--cooldown: replica remediated %s ago (< %s)", now.Sub(last).Round(time.Second), g.cfg.Cooldown)}
	}
	if !g.lastAny.IsZero() && now.Sub(g.lastAny) < g.cfg.GlobalCooldown {
		return verdict{guard: "global-cooldown", why: fmt.Sprintf("--global-cooldown: last remediation %s ago (< %s)", now.Sub(g.lastAny).Round(time.Second), g.cfg.GlobalCooldown)}
	}
	degraded, healthy := 0, 0
	for _, p := range targets {
		switch states[p.Name] {
		case detect.Degraded:
			// A replica on its way out (evicted, terminating: not Ready) serves nothing;
			// counting it would make the next real fault look like a wide one.
			if p.Ready || p.Name == t.Name {
				degraded++
			}
		case detect.Healthy:
			if p.Name != t.Name && p.Ready {
				healthy++
			}
		}
	}
	if degraded > g.cfg.MaxDegraded {
		return verdict{guard: "max-degraded", why: fmt.Sprintf("--max-degraded: %d replicas degraded (> %d): not a local fault, no action", degraded, g.cfg.MaxDegraded)}
	}
	if healthy < g.cfg.MinAvailable {
		return verdict{guard: "min-available", why: fmt.Sprintf("--min-available: %d healthy peers (< %d) would remain", healthy, g.cfg.MinAvailable)}
	}
	return verdict{act: true}
}

func (g *guards) start(name string) { g.inFlight = name }

// done records an outcome and when the replica may be tried again.
func (g *guards) done(now time.Time, name string, o replica.Outcome) {
	g.inFlight = ""
	switch o.Result {
	case "success", "dry-run":
		g.lastAction[name], g.lastAny = now, now
		delete(g.backoff, name)
		delete(g.retryAt, name)
	case "blocked", "error":
		wait := o.RetryAfter
		if wait <= 0 {
			wait = g.backoff[name]
			if wait <= 0 {
				wait = g.cfg.RetryBackoff
			} else {
				wait = min(2*wait, g.cfg.RetryBackoffMax)
			}
			g.backoff[name] = wait
		}
		g.retryAt[name] = now.Add(wait)
	default: // refused: do not retry soon
		g.retryAt[name] = now.Add(max(g.cfg.Cooldown, g.cfg.RetryBackoff))
	}
}

// forget drops a replica's retry state once it is no longer degraded (cooldowns stay).
func (g *guards) forget(name string) {
	delete(g.retryAt, name)
	delete(g.backoff, name)
}

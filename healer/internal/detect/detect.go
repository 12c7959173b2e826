// Package detect fuses the two views of every replica, the healer's own probes (external)
// and the replica's heartbeat (internal), into one state per replica, by the rules of
// docs/design.md ("How the healer judges"): in short,
//
//   - degraded only when both views fail, or one view is gone and the other fails, and a
//     healthy peer witnesses that the fault is this replica's alone (R1); an answer that
//     differs from the majority (R2), or a freshness canary that stays behind (R3), is
//     degraded on the external view alone;
//   - every ready replica failing at once is global: restarting one cannot help (R4, R5);
//   - anything less is suspect at most (R8).
//
// The Detector is pure logic: it is fed results and asked for a judgment at a given time,
// so every rule is tested with a fake clock. It is not safe for concurrent use; the
// engine calls it from one goroutine.
//
// Files: evidence.go takes results in, majority.go counts answers, external.go and
// internal.go judge each view, peers.go compares a replica with its peers, evaluate.go
// and judge.go apply the rules.
package detect

import (
	"slices"
	"time"

	"github.com/dnspulse/dnspulse/healer/api"
	"github.com/dnspulse/dnspulse/healer/internal/check"
	"github.com/dnspulse/dnspulse/healer/internal/config"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
)

// Transition is one change of a replica's state.
type Transition struct {
	Replica string
	From    api.State
	To      api.State
	Reasons []string
	At      time.Time
	// Since is when the evidence for To began (the first failing probe's send time, the
	// first mismatch, ...), for the detection latency; zero when unknown.
	Since time.Time
}

// Detector holds every replica's evidence and state.
type Detector struct {
	th       config.Thresholds
	checks   []check.Check
	young    time.Duration // R14: how long a replica is young after it became Ready
	replicas map[string]*evidence
	majority map[int]*majorityCache
	global   globalEpisode
	// maxTTL is the longest answer TTL seen per check: an answer with less was cached.
	maxTTL map[int]time.Duration
	// checkHealth and broken follow the checks that every replica answers wrong (R13).
	checkHealth  [maxChecks]checkHealth
	broken       [maxChecks]bool
	checkChanges []CheckChange
	// scratch is the last full judgment (its views and the peers' summary), updated in
	// place by the partial ones that follow it; index maps a name to its place there.
	scratch evaluation
	index   map[string]int
	// dirty are the replicas with new evidence since the last judgment; lastFull the time of
	// the last full one; changed that the set of replicas changed since.
	dirty    []*evidence
	lastFull time.Time
	changed  bool
	// probedAt is the latest time a probe result speaks for (a reply's arrival, a timeout's
	// judgment): see probesAsOf.
	probedAt time.Time
}

// New makes a detector for the given checks (indexed as probe.Result.Check); a replica is
// young for the given time after it became Ready (the guards' warm-up).
func New(th config.Thresholds, checks []check.Check, young time.Duration) *Detector {
	return &Detector{th: th, checks: checks, young: young, replicas: make(map[string]*evidence),
		majority: map[int]*majorityCache{}, maxTTL: map[int]time.Duration{}, index: map[string]int{}}
}

// SetTargets replaces the set of replicas at now; the evidence of those that stay is kept.
func (d *Detector) SetTargets(targets []replica.Target, now time.Time) {
	d.changed = true // judged all at once next time
	seen := make(map[string]bool, len(targets))
	for _, t := range targets {
		seen[t.Name] = true
		r, ok := d.replicas[t.Name]
		if !ok {
			r = newEvidence(api.Unknown)
			d.replicas[t.Name] = r
		} else if r.target.DNSAddr != t.DNSAddr || r.target.PulseAddr != t.PulseAddr || t.Ready && !r.target.Ready {
			// R11: a new address is a new process (a replacement pod), and a replica that
			// just became Ready has finished starting: what it did before proves nothing
			// about it now, so start afresh rather than act on a judgment of its start-up.
			*r = *newEvidence(r.state)
		}
		if t.Ready && r.readyAt.IsZero() {
			r.readyAt = now
		}
		r.target = t
	}
	for name, r := range d.replicas {
		if !seen[name] {
			delete(d.replicas, name)
			if r.dirty {
				d.dirty = slices.DeleteFunc(d.dirty, func(x *evidence) bool { return x == r })
			}
		}
	}
}

// State returns a replica's current state (Unknown for one not known).
func (d *Detector) State(name string) api.State {
	if r, ok := d.replicas[name]; ok {
		return r.state
	}
	return api.Unknown
}

// States returns every replica's state.
func (d *Detector) States() map[string]api.State {
	out := make(map[string]api.State, len(d.replicas))
	for n, r := range d.replicas {
		out[n] = r.state
	}
	return out
}

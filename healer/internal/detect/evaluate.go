package detect

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dnspulse/dnspulse/healer/api"
)

// evaluation is one judgment of every replica: the views of each, and the peers' summary.
// It lives for one call of Evaluate (its slices are reused by the next).
type evaluation struct {
	now      time.Time
	names    []string    // sorted
	replicas []*evidence // by names
	ext      []externalView
	peers    peerSummary
}

// globalEpisode follows "every ready replica failing" across evaluations (R4, R5).
type globalEpisode struct {
	// active: the failure was declared global (and still is).
	active bool
	// since: every ready replica has been failing since then (zero: not all failing).
	since time.Time
	// ended: the last time an episode of everyone failing ended, declared global or not.
	ended time.Time
}

// fullEvery bounds how long a replica goes unjudged when no new evidence of it comes (the
// time-driven rules: spans, graces, a global episode): every replica is judged at least this
// often; in between, only those with new evidence are.
const fullEvery = 50 * time.Millisecond

// Evaluate judges the replicas at now and returns the transitions, sorted by replica. Its
// cost follows the changes, not the fleet: between two full judgments (every fullEvery, and
// whenever a replica's probes fail or a global episode is under way) only the replicas with
// new evidence are judged, against the peers' summary of the last full judgment. A full one
// costs O(n log n) for n replicas; neither allocates but for reasons.
func (d *Detector) Evaluate(now time.Time) []Transition {
	if d.partialOK(now) {
		if out, ok := d.evaluateDirty(now); ok {
			return out
		}
	}
	return d.evaluateAll(now)
}

// markDirty notes new evidence of r.
func (d *Detector) markDirty(r *evidence) {
	if !r.dirty {
		r.dirty = true
		d.dirty = append(d.dirty, r)
	}
}

func (d *Detector) clearDirty() {
	for _, r := range d.dirty {
		r.dirty = false
	}
	d.dirty = d.dirty[:0]
}

// partialOK says whether judging only the replicas with new evidence is enough now.
func (d *Detector) partialOK(now time.Time) bool {
	return !d.lastFull.IsZero() && !d.changed && now.Sub(d.lastFull) < fullEvery && !now.Before(d.lastFull) &&
		!d.global.active && d.global.since.IsZero()
}

// evaluateDirty judges the replicas with new evidence against the last full judgment; ok is
// false when a full one is needed (a replica's probes fail: R1's witness and R4 look at
// everyone).
func (d *Detector) evaluateDirty(now time.Time) ([]Transition, bool) {
	ev := &d.scratch
	ev.now = now
	slices.SortFunc(d.dirty, func(a, b *evidence) int { return strings.Compare(a.target.Name, b.target.Name) })
	for _, r := range d.dirty {
		i, ok := d.index[r.target.Name]
		if !ok {
			return nil, false
		}
		e := d.judgeExternal(r, now)
		d.applyLatency(ev, r, &e)
		if e.failing {
			return nil, false
		}
		ev.ext[i] = e
	}
	var out []Transition
	for _, r := range d.dirty {
		i := d.index[r.target.Name]
		to, reasons, since, learn := d.judge(ev, i)
		if learn {
			r.ownLatency.Observe(ev.ext[i].latency)
		}
		if tr, ok := d.transition(r, to, reasons, since, now); ok {
			out = append(out, tr)
		}
	}
	d.clearDirty()
	return out, true
}

// transition moves r to state to, returning the Transition when it changes.
func (d *Detector) transition(r *evidence, to api.State, reasons []string, since, now time.Time) (Transition, bool) {
	if to == r.state {
		return Transition{}, false
	}
	if reasons == nil {
		reasons = []string{}
	}
	tr := Transition{Replica: r.target.Name, From: r.state, To: to, Reasons: reasons, At: now, Since: since}
	r.state = to
	return tr, true
}

// evaluateAll judges every replica.
func (d *Detector) evaluateAll(now time.Time) []Transition {
	d.lastFull, d.changed = now, false
	d.clearDirty()
	ev := d.prepare(now)
	d.updateChecks(ev)
	global, failing, ready := d.updateGlobal(ev)
	var out []Transition
	for i := range ev.names {
		r := ev.replicas[i]
		var to api.State
		var reasons []string
		var since time.Time
		if global && r.target.Ready && ev.ext[i].known {
			// R4: every ready replica failing at once: an alert, never an action.
			to, since = api.Global, ev.ext[i].since
			reasons = append([]string{fmt.Sprintf("every ready replica failing (%d of %d)", failing, ready)}, ev.ext[i].reasons...)
		} else {
			var learn bool
			to, reasons, since, learn = d.judge(ev, i)
			if learn {
				r.ownLatency.Observe(ev.ext[i].latency)
			}
		}
		if tr, ok := d.transition(r, to, reasons, since, now); ok {
			out = append(out, tr)
		}
	}
	return out
}

// prepare builds the evaluation: every replica's external view, the peers' summary, and
// the latency outliers against the peers (R10).
func (d *Detector) prepare(now time.Time) *evaluation {
	ev := &d.scratch
	ev.now = now
	if len(ev.names) != len(d.replicas) || !d.namesCurrent(ev.names) {
		ev.names = ev.names[:0]
		for n := range d.replicas {
			ev.names = append(ev.names, n)
		}
		slices.Sort(ev.names)
		clear(d.index)
		for i, n := range ev.names {
			d.index[n] = i
		}
	}
	ev.replicas = ev.replicas[:0]
	ev.ext = slices.Grow(ev.ext[:0], len(ev.names))[:len(ev.names)]
	ev.peers.reset()
	pe := &ev.peers
	for i, n := range ev.names {
		r := d.replicas[n]
		ev.replicas = append(ev.replicas, r)
		ev.ext[i] = d.judgeExternal(r, now)
		r.pooled = pooled{}
		if !r.target.Ready {
			continue
		}
		if ev.ext[i].latency > 0 {
			r.pooled.probeLat, r.pooled.hasProbeLat = float64(ev.ext[i].latency), true
			pe.probeLat = append(pe.probeLat, r.pooled.probeLat)
		}
		if r.hbCurrent() {
			pe.add(r.lastHB, d.th.MinQueries, &r.pooled)
		}
		if r.canaryMiss == 0 && !r.canaryOKAt.IsZero() && ev.ext[i].known {
			pe.canaryOK.add(n, r.canaryOKAt)
		}
	}
	pe.sort()
	for i, r := range ev.replicas {
		d.applyLatency(ev, r, &ev.ext[i])
	}
	return ev
}

// applyLatency applies R10 to r's external view e against the peers' median probe latency.
func (d *Detector) applyLatency(ev *evaluation, r *evidence, e *externalView) {
	if e.latency == 0 {
		return
	}
	mf, ok := ev.peers.probeLat.peerMedian(r.pooled.probeLat, r.pooled.hasProbeLat)
	if !ok {
		return
	}
	m := time.Duration(mf)
	since, latest, bound := d.slowSince(e, m, ev.now, d.probesAsOf(ev.now))
	if since.IsZero() {
		return
	}
	e.failing = true
	atLeast := ""
	if bound {
		atLeast = "at least "
	}
	e.reasons = append(e.reasons, fmt.Sprintf("probes slower than peers (%s) for %s, the latest %s%s",
		m.Round(100*time.Microsecond), ev.now.Sub(since).Round(time.Millisecond), atLeast, latest.Round(time.Millisecond)))
	if e.since.IsZero() || since.Before(e.since) {
		e.since = since
	}
}

// isYoung says whether r became Ready less than the warm-up ago (R14).
func (ev *evaluation) isYoung(r *evidence, young time.Duration) bool {
	return r.readyAt.IsZero() || ev.now.Sub(r.readyAt) < young
}

// namesCurrent says whether names (sorted, as long as the replicas) are the replicas.
func (d *Detector) namesCurrent(names []string) bool {
	for _, n := range names {
		if _, ok := d.replicas[n]; !ok {
			return false
		}
	}
	return true
}

// updateGlobal applies R4 and R5: the failure is global once every ready replica known to
// the probes has been failing for GlobalAfter, and stays global while they all fail. A
// blip that touches everyone (an upstream hiccup) raises no alert; until GlobalAfter the
// replicas are judged one by one, and with no healthy witness none is degraded.
func (d *Detector) updateGlobal(ev *evaluation) (global bool, failing, ready int) {
	for i, r := range ev.replicas {
		if !r.target.Ready || !ev.ext[i].known {
			continue
		}
		ready++
		if ev.ext[i].failing {
			failing++
		}
	}
	g := &d.global
	allFailing := ready > 0 && failing == ready
	switch {
	case !allFailing:
		if !g.since.IsZero() {
			g.ended = ev.now
		}
		g.since = time.Time{}
	case g.since.IsZero():
		g.since = ev.now
	}
	g.active = allFailing && (g.active || ev.now.Sub(g.since) >= d.th.GlobalAfter.D())
	return g.active, failing, ready
}

package detect

import (
	"fmt"
	"slices"
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

// Evaluate judges every replica at now and returns the transitions, sorted by replica. It
// costs O(n log n) for n replicas and allocates only for reasons, so the engine can call
// it on every burst of results.
func (d *Detector) Evaluate(now time.Time) []Transition {
	ev := d.prepare(now)
	d.updateChecks(ev)
	global, failing, ready := d.updateGlobal(ev)
	var out []Transition
	for i, n := range ev.names {
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
		if to == r.state {
			continue
		}
		if reasons == nil {
			reasons = []string{}
		}
		out = append(out, Transition{Replica: n, From: r.state, To: to, Reasons: reasons, At: now, Since: since})
		r.state = to
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
	}
	ev.replicas = ev.replicas[:0]
	ev.ext = slices.Grow(ev.ext[:0], len(ev.names))[:len(ev.names)]
	ev.peers.reset()
	pe := &ev.peers
	for i, n := range ev.names {
		r := d.replicas[n]
		ev.replicas = append(ev.replicas, r)
		ev.ext[i] = d.judgeExternal(r, now)
		if !r.target.Ready {
			continue
		}
		if ev.ext[i].latency > 0 {
			pe.probeLat = append(pe.probeLat, float64(ev.ext[i].latency))
		}
		if r.hbCurrent() {
			pe.add(r.lastHB, d.th.MinQueries)
		}
		if r.canaryMiss == 0 && !r.canaryOKAt.IsZero() && ev.ext[i].known {
			pe.canaryOK.add(n, r.canaryOKAt)
		}
	}
	pe.sort()
	for i, r := range ev.replicas {
		e := &ev.ext[i]
		if e.latency == 0 {
			continue
		}
		mf, ok := pe.probeLat.peerMedian(float64(e.latency), r.target.Ready)
		if !ok {
			continue
		}
		m := time.Duration(mf)
		since := d.slowSince(e, m, now)
		if since.IsZero() {
			continue
		}
		e.failing = true
		e.reasons = append(e.reasons, fmt.Sprintf("probes slower than peers (%s) for %s, the latest %s",
			m.Round(100*time.Microsecond), now.Sub(since).Round(time.Millisecond), e.lastAnswered().latency.Round(time.Millisecond)))
		if e.since.IsZero() || since.Before(e.since) {
			e.since = since
		}
	}
	return ev
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

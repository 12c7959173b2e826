package detect

import (
	"slices"
	"time"

	"github.com/dnspulse/dnspulse/heartbeat"
)

// judgedWindows are the heartbeat windows whose rcode shares R12 compares: the latest 200 ms
// (a fresh fault shows there within a tick or two, where the 1 s window dilutes it with the
// second before) and the 1 s window (steadier, and the only one of an older pulse).
var judgedWindows = [...]string{heartbeat.Window200ms, heartbeat.Window1s}

// windowPool is the traffic of one window, pooled over ready replicas.
type windowPool struct {
	queries uint64
	kinds   [len(rcodeKinds)]uint64
}

func (w *windowPool) add(o *windowPool) {
	w.queries += o.queries
	for k := range w.kinds {
		w.kinds[k] += o.kinds[k]
	}
}

// without is w less o (o must be in w).
func (w windowPool) without(o *windowPool) windowPool {
	w.queries -= o.queries
	for k := range w.kinds {
		w.kinds[k] -= o.kinds[k]
	}
	return w
}

// peerSummary is what every replica is compared with, computed once per evaluation from
// the ready replicas.
type peerSummary struct {
	probeLat sortedVals // recent probe latency (ns) of ready replicas with one
	latency  sortedVals // 1 s window latency (µs, see quantile) of ready replicas with MinQueries
	oldest   sortedVals // oldest query in flight (µs) of ready replicas that report it
	pending  sortedVals // age of the self-probe pending (µs, 0: none) of ready replicas
	// The pooled judgedWindows of the ready replicas with a current heartbeat.
	windows  [len(judgedWindows)]windowPool
	canaryOK top2 // canaryOKAt of ready replicas whose canary is fresh
}

func (pe *peerSummary) reset() {
	pe.probeLat, pe.latency, pe.oldest, pe.pending = pe.probeLat[:0], pe.latency[:0], pe.oldest[:0], pe.pending[:0]
	pe.windows, pe.canaryOK = [len(judgedWindows)]windowPool{}, top2{}
}

// pooled is what one replica put in the peers' summary at the last full judgment. The
// judgments in between compare its newer evidence with its peers' by taking exactly that out
// (its newer figures are not what the summary holds: taking them out instead would compare
// it with garbage, an unsigned count going below zero).
type pooled struct {
	inWindow                                       [len(judgedWindows)]bool // its window is in windows
	windows                                        [len(judgedWindows)]windowPool
	probeLat, latency, oldest, pending             float64
	hasProbeLat, hasLatency, hasOldest, hasPending bool
}

// add pools one ready replica's heartbeat, and says what it pooled into p.
func (pe *peerSummary) add(hb *heartbeat.Heartbeat, minQueries int, p *pooled) {
	for j, key := range judgedWindows {
		w, ok := hb.Windows[key]
		if !ok {
			continue
		}
		p.inWindow[j] = true
		p.windows[j].queries = w.Queries
		for k := range rcodeKinds {
			p.windows[j].kinds[k] = kindCount(&w, k)
		}
		pe.windows[j].add(&p.windows[j])
	}
	if w := hb.Windows[heartbeat.Window1s]; w.Queries >= uint64(minQueries) {
		p.latency, p.hasLatency = float64(quantile(&w)), true
		pe.latency = append(pe.latency, p.latency)
	}
	if hb.InFlight != nil {
		p.oldest, p.hasOldest = float64(hb.InFlight.OldestMicros), true
		pe.oldest = append(pe.oldest, p.oldest)
	}
	// An older pulse does not report it: as if none were pending, which is the rule.
	p.pending, p.hasPending = float64(hb.SelfProbe.PendingMicros), true
	pe.pending = append(pe.pending, p.pending)
}

func (pe *peerSummary) sort() {
	for _, s := range []sortedVals{pe.probeLat, pe.latency, pe.oldest, pe.pending} {
		slices.Sort(s)
	}
}

// sortedVals holds one value per ready replica, sorted, to take the median of a
// replica's peers (all but itself) in O(log n).
type sortedVals []float64

// peerMedian is the median of the values without one occurrence of own (when self: own
// must then be among them, as pooled); ok is false when no peer has a value.
func (s sortedVals) peerMedian(own float64, self bool) (float64, bool) {
	m := len(s)
	if self {
		m--
	}
	if m <= 0 {
		return 0, false
	}
	j := m / 2
	if !self {
		return s[j], true
	}
	k, _ := slices.BinarySearch(s, own)
	if j < k {
		return s[j], true
	}
	return s[j+1], true
}

// top2 keeps the two latest times with their replicas, to find the latest among a
// replica's peers in O(1).
type top2 struct {
	t1, t2 time.Time
	n1     string
}

func (t *top2) add(name string, at time.Time) {
	switch {
	case at.After(t.t1):
		t.t2, t.t1, t.n1 = t.t1, at, name
	case at.After(t.t2):
		t.t2 = at
	}
}

// latestExcept is the latest time of a replica other than name.
func (t *top2) latestExcept(name string) time.Time {
	if t.n1 == name {
		return t.t2
	}
	return t.t1
}

// witnessSlack: a peer's success counts as proof that the fault is this replica's only
// when it was sent (and its answer fetched) a little after this replica's first failure, so
// that a fault that hits every replica within a few milliseconds of each other (an upstream
// outage) is not taken for a local one.
const witnessSlack = 5 * time.Millisecond

// witnessClean: a witness must have failed no probe sent from this long before the
// replica's first failure on.
const witnessClean = 20 * time.Millisecond

// witness says whether a ready peer proves that a fault of replica i starting at 'since' is
// local (R1): the peer answered, well, a probe of the failing check (any check when
// several fail) sent after it, with an answer fetched after it (a cached answer only proves
// the cache), failed none sent from shortly before it on, and its own heartbeat is fine. A
// host or network hiccup that touches every replica within a few milliseconds, or an
// upstream outage that reaches each replica when its cache entry expires, leaves no such
// witness, so it is never taken for one replica's fault.
func (d *Detector) witness(ev *evaluation, i int, since time.Time) bool {
	check := ev.ext[i].failCheck
	for j, r := range ev.replicas {
		pe := &ev.ext[j]
		if j == i || !r.target.Ready || !pe.known || pe.failing || r.internalBad() || !pe.lastBad.Before(since.Add(-witnessClean)) {
			continue
		}
		for k := len(pe.last) - 1; k >= 0; k-- {
			o := &pe.last[k]
			if !o.sent.After(since.Add(witnessSlack)) {
				break
			}
			if o.good() && (check < 0 || o.check == check) && d.fetchedAt(o).After(since) {
				return true
			}
		}
	}
	return false
}

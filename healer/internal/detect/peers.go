package detect

import (
	"slices"
	"time"
)

// peerSummary is what every replica is compared with, computed once per evaluation from
// the ready replicas.
type peerSummary struct {
	probeLat          sortedVals // recent probe latency (ns) of ready replicas with one
	servfail, nx, p99 sortedVals // 1 s window of ready replicas with a current heartbeat
	canaryOK          top2       // canaryOKAt of ready replicas whose canary is fresh
}

func (pe *peerSummary) reset() {
	pe.probeLat, pe.servfail, pe.nx, pe.p99 = pe.probeLat[:0], pe.servfail[:0], pe.nx[:0], pe.p99[:0]
	pe.canaryOK = top2{}
}

func (pe *peerSummary) sort() {
	for _, s := range []sortedVals{pe.probeLat, pe.servfail, pe.nx, pe.p99} {
		slices.Sort(s)
	}
}

// sortedVals holds one value per ready replica, sorted, to take the median of a
// replica's peers (all but itself) in O(log n).
type sortedVals []float64

// peerMedian is the median of the values without one occurrence of own (when self is
// among them); ok is false when no peer has a value.
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
// when it was sent a little after this replica's first failure, so that a fault that hits
// every replica within a few milliseconds of each other (an upstream outage) is not taken
// for a local one.
const witnessSlack = 5 * time.Millisecond

// witnessClean: a witness must have failed no probe sent from this long before the
// replica's first failure on.
const witnessClean = 20 * time.Millisecond

// witness says whether a ready peer proves that a fault of replica i starting at 'since'
// is local (R1): the peer answered a probe sent after it, failed none sent from shortly
// before it on, and its own heartbeat is fine. A host or network hiccup that touches every
// replica within a few milliseconds (an overloaded node, an upstream outage reaching each
// replica's next query) leaves no such witness, so it is never taken for one replica's
// fault.
func (ev *evaluation) witness(i int, since time.Time) bool {
	for j, r := range ev.replicas {
		pe := &ev.ext[j]
		if j == i || !r.target.Ready || !pe.known || pe.failing || r.internalBad() {
			continue
		}
		if pe.lastOK.After(since.Add(witnessSlack)) && pe.lastFail.Before(since.Add(-witnessClean)) {
			return true
		}
	}
	return false
}

package detect

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/dnspulse/dnspulse/healer/internal/hbreader"
	"github.com/dnspulse/dnspulse/heartbeat"
)

// internalView is what the heartbeat says of one replica at one time.
type internalView struct {
	known bool
	gone  bool
	// failing: the heartbeat itself says the replica is broken (stale seq, self-probe
	// failing, pulse's own verdict), no comparison needed.
	failing bool
	// relFailing: worse than its peers (an error rcode, the latency, a query in flight).
	relFailing bool
	reasons    []string
	suspect    []string
}

// rcodeKind is one outcome whose share the internal view compares with the peers' (R12).
type rcodeKind struct {
	name  string // as the heartbeat spells it; "DROPPED" is Window.Dropped
	error bool   // an error fails the view; NXDOMAIN is a suspicion only
}

var rcodeKinds = [...]rcodeKind{
	{"SERVFAIL", true}, {"REFUSED", true}, {"NOTIMP", true}, {"FORMERR", true}, {"DROPPED", true}, {"NXDOMAIN", false},
}

func kindCount(w *heartbeat.Window, k int) uint64 {
	if rcodeKinds[k].name == "DROPPED" {
		return w.Dropped
	}
	return w.Rcodes[rcodeKinds[k].name]
}

// lowSourceEntropy: SERVFAIL answers whose client prefixes have less entropy than this come
// from one client (or one node's pods): its queries, more likely than the replica.
const lowSourceEntropy = 0.5

// significance is ln(1/p) for the excess of an rcode to count: p < 0.01. A few errors
// (4 of 50 against clean peers) are enough within a tick: the internal view alone never
// degrades a replica, the probes must fail too.
var significance = math.Log(100)

// excess says whether e of n is significantly above the peers' E of N (Chernoff bound on
// the binomial tail: n x KL(e/n || p) >= ln(1/p-value)), and by more than margin.
func excess(e, n, pe, pn uint64, margin float64) bool {
	if n == 0 || pn == 0 {
		return false
	}
	q, p := float64(e)/float64(n), (float64(pe)+1)/(float64(pn)+2)
	if q-float64(pe)/float64(pn) <= margin || q <= p {
		return false
	}
	kl := q * math.Log(q/p)
	if q < 1 {
		kl += (1 - q) * math.Log((1-q)/(1-p))
	}
	return float64(n)*kl >= significance
}

// judgeInternal judges r's heartbeat (R12): the hard signals, then its windows against the
// peers' (every error rcode in 200 ms and 1 s, NXDOMAIN as a suspicion and the latency by
// R10 in 1 s), its oldest query in flight and its self-probe pending against theirs.
// Comparisons need MinQueries on both sides.
func (d *Detector) judgeInternal(r *evidence, pe *peerSummary) internalView {
	var in internalView
	if r.target.PulseAddr == "" {
		in.known, in.gone = true, true
		in.reasons = append(in.reasons, "no pulse listener configured")
		return in
	}
	if r.read == nil {
		return in
	}
	in.known = true
	switch r.read.Kind {
	case hbreader.Unreachable:
		if r.readFailures >= d.th.PulseFailures {
			in.gone = true
			in.reasons = append(in.reasons, "heartbeat unreachable: "+errString(r.read.Err))
		}
		return in
	case hbreader.Invalid:
		in.gone = true
		in.reasons = append(in.reasons, "heartbeat invalid: "+errString(r.read.Err))
		return in
	}
	hb := r.lastHB
	if r.read.Stale {
		in.failing = true
		in.reasons = append(in.reasons, fmt.Sprintf("heartbeat stale: seq %d unchanged for %s", hb.Seq, r.read.SeqAge.Round(time.Millisecond)))
	}
	if !hb.SelfProbe.OK && !hb.SelfProbe.Time.IsZero() {
		why := hb.SelfProbe.Error
		if why == "" {
			why = hb.SelfProbe.Rcode
		}
		in.failing = true
		in.reasons = append(in.reasons, "self-probe failing: "+why)
	}
	if hb.Verdict == heartbeat.VerdictDegraded {
		in.failing = true
		in.reasons = append(in.reasons, "pulse verdict degraded: "+strings.Join(hb.Reasons, "; "))
	}
	d.compareWindow(&in, r, pe)
	d.compareInFlight(&in, r, pe)
	d.comparePending(&in, r, pe)
	return in
}

// compareWindow compares the replica's windows with the pooled windows of its peers: the
// error rcodes in the latest 200 ms and in 1 s (each kind named once, by the first window
// that shows it), NXDOMAIN and the latency in 1 s (a suspicion and a quantile: neither
// needs the shorter window's haste, both would suffer its noise).
func (d *Detector) compareWindow(in *internalView, r *evidence, pe *peerSummary) {
	minQ := uint64(d.th.MinQueries)
	var named [len(rcodeKinds)]bool
	for j, key := range judgedWindows {
		w, ok := r.lastHB.Windows[key]
		if !ok || w.Queries < minQ {
			continue
		}
		pool := pe.windows[j]
		if r.pooled.inWindow[j] { // then its window of the last full judgment is in the pool
			pool = pool.without(&r.pooled.windows[j])
		}
		if pool.queries < minQ {
			continue
		}
		short := key != heartbeat.Window1s
		for k, kind := range rcodeKinds {
			if named[k] || short && !kind.error {
				continue
			}
			e := kindCount(&w, k)
			margin := d.th.ErrorMargin
			if !kind.error {
				margin = d.th.NXDomainMargin
			}
			if !excess(e, w.Queries, pool.kinds[k], pool.queries, margin) {
				continue
			}
			named[k] = true
			why := fmt.Sprintf("%s %d of %d queries in %s, peers %.3f", kind.name, e, w.Queries, key, float64(pool.kinds[k])/float64(pool.queries))
			switch {
			case !kind.error:
				in.suspect = append(in.suspect, why+" (a client's NXDOMAIN storm is not the replica's fault)")
			case kind.name == "SERVFAIL" && w.ServfailSourceEntropy < lowSourceEntropy:
				in.relFailing = true
				in.reasons = append(in.reasons, why+fmt.Sprintf(", from one client prefix (source entropy %.2f bits)", w.ServfailSourceEntropy))
			default:
				in.relFailing = true
				in.reasons = append(in.reasons, why)
			}
		}
	}
	w := r.lastHB.Windows[heartbeat.Window1s]
	if w.Queries < minQ {
		return
	}
	own := quantile(&w)
	if m, ok := pe.latency.peerMedian(r.pooled.latency, r.pooled.hasLatency); ok {
		peer := time.Duration(m) * time.Microsecond
		if ownD := time.Duration(own) * time.Microsecond; d.outlier(ownD, peer) {
			in.relFailing = true
			in.reasons = append(in.reasons, fmt.Sprintf("latency (1s p99, or p90 under 100 queries) %s vs peers %s", ownD.Round(time.Millisecond), peer.Round(time.Millisecond)))
		}
	}
}

// quantile is the latency the internal view compares: p99, or p90 with under 100 queries
// (the 99th percentile of a few dozen queries is their slowest one).
func quantile(w *heartbeat.Window) uint64 {
	if w.Queries < 100 {
		return w.LatencyMicros.P90
	}
	return w.LatencyMicros.P99
}

// compareInFlight applies R10 to the age of the oldest query in flight: an upstream that
// swallows queries shows there within a tick, long before forward gives up.
func (d *Detector) compareInFlight(in *internalView, r *evidence, pe *peerSummary) {
	f := r.lastHB.InFlight
	if f == nil || f.Count == 0 {
		return
	}
	m, ok := pe.oldest.peerMedian(r.pooled.oldest, r.pooled.hasOldest)
	if !ok {
		return
	}
	own, peer := time.Duration(f.OldestMicros)*time.Microsecond, time.Duration(m)*time.Microsecond
	if d.outlier(own, peer) {
		in.relFailing = true
		in.reasons = append(in.reasons, fmt.Sprintf("%d queries in flight, the oldest for %s (peers %s)", f.Count, own.Round(time.Millisecond), peer.Round(time.Millisecond)))
	}
}

// comparePending applies R10 to the age of the self-probe pending: a listener that stopped
// answering (its DNS port filtered, its server stuck while pulse's ticker runs) shows there
// within a tick of the probe's send, long before the probe's timeout makes it a failure.
func (d *Detector) comparePending(in *internalView, r *evidence, pe *peerSummary) {
	p := r.lastHB.SelfProbe.PendingMicros
	if p == 0 {
		return
	}
	m, ok := pe.pending.peerMedian(r.pooled.pending, r.pooled.hasPending)
	if !ok {
		return
	}
	own, peer := time.Duration(p)*time.Microsecond, time.Duration(m)*time.Microsecond
	if d.outlier(own, peer) {
		in.relFailing = true
		in.reasons = append(in.reasons, fmt.Sprintf("self-probe unanswered for %s (peers %s)", own.Round(time.Millisecond), peer.Round(time.Millisecond)))
	}
}

// internalBad is a cheap look at a peer's heartbeat for witness duty (R1): the ratio
// comparisons are left out, since they are relative to this very replica's peers.
func (r *evidence) internalBad() bool {
	if r.target.PulseAddr == "" {
		return false
	}
	if r.read == nil || r.read.Kind != hbreader.OK || r.read.Stale {
		return true
	}
	return (!r.lastHB.SelfProbe.OK && !r.lastHB.SelfProbe.Time.IsZero()) || r.lastHB.Verdict == heartbeat.VerdictDegraded
}

func errString(err error) string {
	if err == nil {
		return "unknown error"
	}
	return err.Error()
}

package detect

import (
	"fmt"
	"strings"
	"time"

	"github.com/dnspulse/dnspulse/healer/internal/hbreader"
	"github.com/dnspulse/dnspulse/heartbeat"
)

// internalView is what the heartbeat says of one replica at one time.
type internalView struct {
	known   bool
	gone    bool
	failing bool
	reasons []string
	suspect []string
}

// judgeInternal judges r's heartbeat, comparing its 1 s window with the peers' (R10 for
// latency, R12 for the SERVFAIL ratio; the NXDOMAIN ratio is a suspicion only, R8).
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
	w := hb.Windows[heartbeat.Window1s]
	self := r.target.Ready // only ready replicas are in the peer lists
	if m, ok := pe.servfail.peerMedian(w.ServfailRatio, self); ok && w.Rcodes["SERVFAIL"] > 0 && w.ServfailRatio > m+d.th.ServfailMargin {
		in.failing = true
		in.reasons = append(in.reasons, fmt.Sprintf("servfail ratio %.3f vs peers %.3f", w.ServfailRatio, m))
	}
	if m, ok := pe.nx.peerMedian(w.NXDomainRatio, self); ok && w.NXDomainRatio > m+d.th.NXDomainMargin {
		in.suspect = append(in.suspect, fmt.Sprintf("nxdomain ratio %.2f vs peers %.2f", w.NXDomainRatio, m))
	}
	if m, ok := pe.p99.peerMedian(float64(w.LatencyMicros.P99), self); ok {
		peer := time.Duration(m) * time.Microsecond
		own := time.Duration(w.LatencyMicros.P99) * time.Microsecond
		if d.outlier(own, peer) {
			in.failing = true
			in.reasons = append(in.reasons, fmt.Sprintf("p99 %s vs peers %s", own.Round(time.Millisecond), peer.Round(time.Millisecond)))
		}
	}
	return in
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

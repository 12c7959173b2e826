package detect

import (
	"fmt"
	"slices"
	"time"

	"github.com/miekg/dns"

	"github.com/dnspulse/dnspulse/healer/internal/config"
)

// maxChecks bounds the checks the detector tracks one by one; a healer has a handful.
const maxChecks = 16

// checkRun is one check's trailing run of failed probes on one replica (R9).
type checkRun struct {
	n        int       // probes in the run
	first    time.Time // send time of its first probe
	silent   bool      // some probe of the run got no answer at all
	wrong    bool      // some probe of the run was answered wrong
	definite bool      // every probe of the run was answered wrong with the same rcode, not SERVFAIL
	rcode    int
	why      string // the latest probe's failure
}

// failing says whether the run fails the external view: MinFailures probes, and if any of
// them may be a stall (no answer), spanning MinFailSpan by now.
func (c *checkRun) failing(th *config.Thresholds, now time.Time) bool {
	return c.n >= th.MinFailures && (!c.silent || now.Sub(c.first) >= th.MinFailSpan.D())
}

// externalView is what the probes say of one replica at one time.
type externalView struct {
	known bool
	// failing: R9 (hard) or R10 (latency, applied by Evaluate against the peers).
	failing bool
	hard    bool // failing on R9: timeouts or wrong answers, no comparison with peers
	// silentOnly: every failing run is unanswered probes only, nothing answered wrong: all
	// the healer knows is that it cannot reach the replica.
	silentOnly bool
	reasons    []string
	// since is the send time of the first failure of the evidence.
	since time.Time
	// failCheck is the one check failing (R9), -1 when several are, or none.
	failCheck int
	// runs are the checks' trailing runs of failures, broken checks included.
	runs [maxChecks]checkRun
	// lastBad is the send time of the latest probe that was not a good answer.
	lastBad time.Time
	// recovered: the latest RecoverSuccesses probes all were good answers.
	recovered bool
	anyBad    bool
	latency   time.Duration // median latency of the recent answered probes; 0 if < 2
	last      []probeObs    // the RecentProbes latest, by send time (shares r.probes)
	recent    []probeObs    // every probe within the Window, by send time (shares r.probes)
}

// judgeExternal judges the probes of r at now by R9 (the latency rule R10 needs the peers
// and is applied by Evaluate). broken lists the checks left out (R13). It allocates only
// when it has a reason to give.
func (d *Detector) judgeExternal(r *evidence, now time.Time) externalView {
	e := externalView{failCheck: -1}
	i0 := len(r.probes)
	for i0 > 0 && now.Sub(r.probes[i0-1].sent) <= d.th.Window.D() {
		i0--
	}
	recent := r.probes[i0:]
	if len(recent) == 0 {
		return e
	}
	e.known = true
	var seen [maxChecks]bool
	var closed [maxChecks]bool // the run of this check ended (a good or late probe came after)
	for i := len(recent) - 1; i >= 0; i-- {
		o := &recent[i]
		if !o.good() && o.sent.After(e.lastBad) && !d.isBroken(o.check) {
			e.lastBad = o.sent
		}
		c := o.check
		if c < 0 || c >= maxChecks || closed[c] {
			continue
		}
		seen[c] = true
		run := &e.runs[c]
		if o.outcome == outcomeOK || o.outcome == outcomeLate {
			closed[c] = true
			continue
		}
		if run.n == 0 {
			run.why, run.definite, run.rcode = o.why, o.outcome == outcomeWrong && o.rcode != dns.RcodeServerFailure, o.rcode
		}
		run.n++
		run.first = o.sent
		run.silent = run.silent || o.outcome == outcomeSilent
		run.wrong = run.wrong || o.outcome == outcomeWrong
		run.definite = run.definite && o.outcome == outcomeWrong && o.rcode == run.rcode
	}
	nfail := 0
	e.silentOnly = true
	for c := range e.runs {
		run := &e.runs[c]
		if !seen[c] || d.isBroken(c) || !run.failing(&d.th, now) {
			continue
		}
		nfail++
		e.failCheck = c
		e.silentOnly = e.silentOnly && !run.wrong
		if e.since.IsZero() || run.first.Before(e.since) {
			e.since = run.first
		}
		e.reasons = append(e.reasons, fmt.Sprintf("%d probes of %s failed in a row over %s (%s)",
			run.n, d.checkName(c), now.Sub(run.first).Round(time.Millisecond), run.why))
	}
	if nfail > 1 {
		e.failCheck = -1
	}
	e.failing, e.hard = nfail > 0, nfail > 0

	last := recent[max(0, len(recent)-d.th.RecentProbes):]
	e.last = last
	for _, o := range last {
		if !d.isBroken(o.check) { // R13: a broken check says nothing of the replica
			e.anyBad = e.anyBad || !o.good()
		}
	}
	// The latency: the median of the latest RecentProbes answered probes (in time or late),
	// however many unanswered ones were sent since: a replica slower than the probe
	// interval x RecentProbes has only unanswered probes among its latest.
	var lats [config.MaxRecentProbes]time.Duration
	nl := 0
	for i := len(recent) - 1; i >= 0 && nl < d.th.RecentProbes; i-- {
		if o := &recent[i]; o.answered() && !d.isBroken(o.check) {
			lats[nl] = o.latency
			nl++
		}
	}
	e.recent = recent
	tail, n := recent, 0
	for i := len(recent) - 1; i >= 0 && n < d.th.RecoverSuccesses; i-- {
		if !d.isBroken(recent[i].check) {
			tail = recent[i:]
			n++
		}
	}
	e.recovered = n >= d.th.RecoverSuccesses
	for _, o := range tail {
		e.recovered = e.recovered && (o.good() || d.isBroken(o.check))
	}
	if nl >= 2 {
		l := lats[:nl]
		slices.Sort(l)
		e.latency = l[nl/2]
	}
	return e
}

// isBroken says whether check c is left out of the judgment (R13).
func (d *Detector) isBroken(c int) bool { return c >= 0 && c < maxChecks && d.broken[c] }

// slowSince applies R10 to a view: its latest probes, back to the first answered within the
// peers' latency, are latency outliers against the peers' median m, at least MinFailures of
// them, spanning MinFailSpan. A probe that timed out and has no late reply yet counts by
// what is known of its latency: at least asOf minus its send time, asOf being when the
// probes last reported (a reply that came before then has been seen); one not an outlier
// by that yet is skipped. So a replica slower than its timeout is judged as soon as a hung
// one, not only once the slow replies are in (a late reply ends R9's run of timeouts). It
// returns the send time of the run's first probe, and the latest probe's latency (bound
// says it is a lower bound); zero when R10 does not hold.
func (d *Detector) slowSince(e *externalView, m time.Duration, now, asOf time.Time) (first time.Time, latest time.Duration, bound bool) {
	n := 0
	for i := len(e.recent) - 1; i >= 0; i-- {
		o := &e.recent[i]
		if d.isBroken(o.check) {
			continue
		}
		lat, unanswered := o.latency, !o.answered()
		if unanswered {
			if !o.timedOut {
				continue // an error, not a wait: no latency to tell
			}
			if lat = asOf.Sub(o.sent); !d.outlier(lat, m) {
				continue
			}
		} else if !d.outlier(lat, m) {
			break
		}
		if n == 0 {
			latest, bound = lat, unanswered
		}
		n++
		first = o.sent
	}
	if n < d.th.MinFailures || now.Sub(first) < d.th.MinFailSpan.D() {
		return time.Time{}, 0, false
	}
	return first, latest, bound
}

// outlier is R10's test: above both the peers' median + LatencyMargin and LatencyFactor x
// the peers' median.
func (d *Detector) outlier(own, peers time.Duration) bool {
	return own > peers+d.th.LatencyMargin.D() && float64(own) > d.th.LatencyFactor*float64(peers)
}

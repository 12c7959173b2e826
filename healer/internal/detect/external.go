package detect

import (
	"fmt"
	"slices"
	"time"

	"github.com/dnspulse/dnspulse/healer/internal/config"
)

// externalView is what the probes say of one replica at one time.
type externalView struct {
	known   bool
	failing bool
	reasons []string
	// since is the send time of the first failure among the recent probes.
	since time.Time
	// lastOK is the send time of the latest successful probe; lastFail of the latest
	// failed one.
	lastOK   time.Time
	lastFail time.Time
	// recovered: the latest RecoverSuccesses probes all succeeded.
	recovered bool
	anyFail   bool
	latency   time.Duration // median of recent successful probes; 0 if < 2
	last      []probeObs    // the RecentProbes latest, by send time (shares r.probes)
}

// judgeExternal judges the probes of r at now (failure rules R9; the latency rule R10 needs
// the peers and is applied by Evaluate). It allocates only when it has a reason to give.
func (d *Detector) judgeExternal(r *evidence, now time.Time) externalView {
	var e externalView
	i0 := len(r.probes)
	for i0 > 0 && now.Sub(r.probes[i0-1].sent) <= d.th.Window.D() {
		i0--
	}
	recent := r.probes[i0:]
	if len(recent) == 0 {
		return e
	}
	e.known = true
	for _, o := range recent {
		if o.ok && o.sent.After(e.lastOK) {
			e.lastOK = o.sent
		}
		if !o.ok && o.sent.After(e.lastFail) {
			e.lastFail = o.sent
		}
	}
	last := recent[max(0, len(recent)-d.th.RecentProbes):]
	e.last = last
	fails := 0
	var lats [config.MaxRecentProbes]time.Duration
	nl := 0
	for _, o := range last {
		if o.ok {
			lats[nl] = o.latency
			nl++
			continue
		}
		fails++
		if e.since.IsZero() {
			e.since = o.sent
		}
	}
	e.anyFail = fails > 0
	if fails >= d.th.MinFailures && !last[len(last)-1].ok {
		e.failing = true
		e.reasons = append(e.reasons, fmt.Sprintf("%d of the last %d probes failed (%s)", fails, len(last), last[len(last)-1].why))
	} else if c, n, nfail, why, since := d.failingCheck(recent); c >= 0 {
		// R9: one check failing steadily (a broken upstream fails the forwarded name while
		// cluster.local answers) alternates with the passing ones in the mixed sequence
		// above and would never make the replica failing; judged per check it does.
		e.failing = true
		e.since = since
		e.reasons = append(e.reasons, fmt.Sprintf("%d of the last %d probes of one check failed (%s)", nfail, n, why))
	}
	tail := recent[max(0, len(recent)-d.th.RecoverSuccesses):]
	e.recovered = len(tail) >= d.th.RecoverSuccesses
	for _, o := range tail {
		e.recovered = e.recovered && o.ok
	}
	if nl >= 2 {
		l := lats[:nl]
		slices.Sort(l)
		e.latency = l[nl/2]
	}
	return e
}

// maxChecksJudged bounds the distinct checks failingCheck looks at; a healer has a handful.
const maxChecksJudged = 8

// failingCheck finds a check whose own latest RecentProbes results hold MinFailures
// failures, the latest failing; it returns -1 when there is none. recent is in send order.
func (d *Detector) failingCheck(recent []probeObs) (check, n, fails int, why string, since time.Time) {
	var seen [maxChecksJudged]int
	nseen := 0
	for i := len(recent) - 1; i >= 0; i-- {
		c := recent[i].check
		if slices.Contains(seen[:nseen], c) {
			continue
		}
		if nseen < len(seen) {
			seen[nseen] = c
			nseen++
		}
		if recent[i].ok {
			continue // this check's latest result passed
		}
		n, fails, since = 0, 0, time.Time{}
		for j := i; j >= 0 && n < d.th.RecentProbes; j-- {
			if recent[j].check != c {
				continue
			}
			n++
			if !recent[j].ok {
				fails++
				since = recent[j].sent
			}
		}
		if fails >= d.th.MinFailures {
			return c, n, fails, recent[i].why, since
		}
	}
	return -1, 0, 0, "", time.Time{}
}

// outlier is R10's test: above both the peers' median + LatencyMargin and LatencyFactor x
// the peers' median.
func (d *Detector) outlier(own, peers time.Duration) bool {
	return own > peers+d.th.LatencyMargin.D() && float64(own) > d.th.LatencyFactor*float64(peers)
}

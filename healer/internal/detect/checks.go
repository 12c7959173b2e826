package detect

import (
	"fmt"
	"time"

	"github.com/miekg/dns"
)

// checkHealth follows one check across the replicas (R13).
type checkHealth struct {
	// wrongSince: every ready replica has answered the check wrong, with the same rcode
	// (not SERVFAIL), since then; zero when not.
	wrongSince time.Time
	rcode      int
}

// CheckChange is a check that became broken (a misconfiguration: every replica answers it
// wrong the same way) or stopped being so.
type CheckChange struct {
	Check  string
	Broken bool
	Why    string
}

// updateChecks applies R13: a check that every ready replica answers wrong the same way
// (NXDOMAIN, REFUSED, a wrong exact answer: a typo in the name, a zone not served) for
// BrokenCheckAfter is broken: it is reported, and left out of the judgment so that the other
// checks keep working. An outage looks otherwise (timeouts, SERVFAIL) and stays global (R4).
// The check returns to the judgment as soon as one replica answers it well.
func (d *Detector) updateChecks(ev *evaluation) {
	for c := range min(len(d.checks), maxChecks) {
		h := &d.checkHealth[c]
		ready, wrong, good, rcode := 0, 0, 0, -1
		for i, r := range ev.replicas {
			if !r.target.Ready || !ev.ext[i].known {
				continue
			}
			ready++
			run := &ev.ext[i].runs[c]
			if run.n == 0 && ev.ext[i].answeredWell(c) {
				good++
			}
			if run.n >= d.th.MinFailures && run.definite && (rcode < 0 || run.rcode == rcode) && d.otherCheckPasses(&ev.ext[i], c) {
				wrong++
				rcode = run.rcode
			}
		}
		if wrong < ready {
			h.wrongSince = time.Time{}
		}
		switch {
		case ready == 0:
		case d.broken[c]:
			if good > 0 {
				d.broken[c] = false
				d.checkChanges = append(d.checkChanges, CheckChange{Check: d.checkName(c), Broken: false,
					Why: "a replica answers it as expected again: back in the judgment"})
			}
		case wrong < ready:
		case h.wrongSince.IsZero() || h.rcode != rcode:
			h.wrongSince, h.rcode = ev.now, rcode
		case ev.now.Sub(h.wrongSince) >= d.th.BrokenCheckAfter.D():
			d.broken[c] = true
			d.checkChanges = append(d.checkChanges, CheckChange{Check: d.checkName(c), Broken: true,
				Why: fmt.Sprintf("every ready replica (%d) has answered it %s for %s: a misconfigured check (a typo, a zone not served), left out of the judgment",
					ready, rcodeName(rcode), ev.now.Sub(h.wrongSince).Round(time.Second))})
		}
	}
}

// answeredWell says whether the view holds a good answer to check c.
func (e *externalView) answeredWell(c int) bool {
	for i := range e.last {
		if e.last[i].check == c && e.last[i].good() {
			return true
		}
	}
	return false
}

// otherCheckPasses says whether a check other than c (and not broken) has no failure run on
// the replica: the replica works, only c is answered wrong. When nothing else passes, it
// may be an outage, and the check stays in the judgment.
func (d *Detector) otherCheckPasses(e *externalView, c int) bool {
	for o := range min(len(d.checks), maxChecks) {
		if o != c && !d.broken[o] && e.runs[o].n == 0 {
			return true
		}
	}
	return false
}

// CheckChanges returns the checks that became broken or stopped being so since the last
// call.
func (d *Detector) CheckChanges() []CheckChange {
	out := d.checkChanges
	d.checkChanges = nil
	return out
}

func rcodeName(rc int) string {
	if s, ok := dns.RcodeToString[rc]; ok {
		return s
	}
	return fmt.Sprintf("RCODE%d", rc)
}

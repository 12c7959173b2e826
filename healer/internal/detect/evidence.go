package detect

import (
	"fmt"
	"time"

	"github.com/miekg/dns"

	"github.com/dnspulse/dnspulse/healer/api"
	"github.com/dnspulse/dnspulse/healer/internal/ewma"
	"github.com/dnspulse/dnspulse/healer/internal/hbreader"
	"github.com/dnspulse/dnspulse/healer/internal/probe"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
	"github.com/dnspulse/dnspulse/heartbeat"
)

// evidence is everything the detector knows of one replica.
type evidence struct {
	target replica.Target
	state  api.State
	// readyAt is when the detector first saw the replica Ready (zero: not yet): a replica
	// Ready for less than the warm-up is young, and judged on hard evidence only (R14).
	readyAt time.Time

	probes []probeObs // by send time

	// Answers to majority checks (R2), per check.
	answers       map[int]answerObs
	mismatch      map[int]int
	mismatchSince time.Time
	mismatchWhy   string

	// The freshness canary (R3).
	canaryMiss      int
	canaryMissSince time.Time
	canaryWhy       string
	canaryOKAt      time.Time

	// The heartbeat: the last read, the last valid heartbeat, failed reads in a row.
	// pooled is what it put in the peers' summary at the last full judgment.
	pooled       pooled
	read         *hbreader.Result // nil before the first, else &readBuf
	readBuf      hbreader.Result
	lastHB       *heartbeat.Heartbeat
	readFailures int
	ownLatency   ewma.Duration // probe latency while not an outlier (R8: a hint)
	// unreachable: the replica is degraded on unreachability alone (its probes unanswered,
	// its heartbeat unreachable, nothing it said was wrong): a partition of the healer's
	// network path would look the same (docs/design.md, "Reachability is not proof").
	unreachable bool
	// dirty: new evidence since the last judgment.
	dirty bool
}

func newEvidence(state api.State) *evidence {
	return &evidence{answers: map[int]answerObs{}, mismatch: map[int]int{}, state: state}
}

// outcome classifies one probe.
type outcome uint8

const (
	// answered in time, as the check expects
	outcomeOK outcome = iota
	// answered, but not as the check expects (rcode, exact answer): definite
	outcomeWrong
	// no answer yet (timed out, no late reply) or an error: may be a stall
	outcomeSilent
	// answered after its timeout: alive, but slow (or stalled a moment)
	outcomeLate
)

type probeObs struct {
	sent     time.Time
	latency  time.Duration
	outcome  outcome
	rcode    int
	ttl      time.Duration // the answer's smallest TTL
	why      string
	check    int  // index of the check (probe.Result.Check)
	timedOut bool // silent because it timed out (not an error): its latency grows while no reply comes
}

// answered says whether the replica answered the probe at all (in time or late).
func (o *probeObs) answered() bool { return o.outcome != outcomeSilent }

// good is a probe that proves the replica serves: answered as expected, in time.
func (o *probeObs) good() bool { return o.outcome == outcomeOK }

type answerObs struct {
	key string
	at  time.Time
}

// ObserveProbe records one probe result (or the late reply to one already recorded).
func (d *Detector) ObserveProbe(res probe.Result) {
	r, ok := d.replicas[res.Replica]
	if !ok || res.Late {
		return // a probe the healer itself was too stalled to judge says nothing
	}
	d.observeProbe(r, res)
	// A healthy replica's answer that is right, fast (no latency rule can count it) and in
	// the majority changes nothing of its judgment: none is asked for (the full judgment every
	// fullEvery sees it all the same). At 1,000 replicas that is most of the 50,000 results
	// a second, each costing a judgment otherwise.
	routine := r.state == api.Healthy && res.Err == nil && res.Failure == "" && !res.LateReply &&
		res.Latency <= d.th.LatencyMargin.D() && (!res.Canary || res.CanaryOK) && r.mismatches() == 0
	if !routine {
		d.markDirty(r)
	}
}

func (d *Detector) observeProbe(r *evidence, res probe.Result) {
	if res.TTL > d.maxTTL[res.Check] {
		d.maxTTL[res.Check] = res.TTL
	}
	if at := res.Sent.Add(res.Latency); at.After(d.probedAt) {
		d.probedAt = at // a reply read or a timeout judged: the probes' clock (probesAsOf)
	}
	if res.LateReply {
		d.observeLateReply(r, res)
		return
	}
	o := probeObs{sent: res.Sent, latency: res.Latency, check: res.Check, rcode: res.Rcode, ttl: res.TTL}
	switch {
	case res.Err != nil && res.Timeout:
		o.outcome, o.why = outcomeSilent, fmt.Sprintf("probe timeout after %s", res.Latency.Round(time.Millisecond))
		o.timedOut = true
	case res.Err != nil:
		o.outcome, o.why = outcomeSilent, "probe error: "+res.Err.Error()
	case res.Failure != "":
		o.outcome, o.why = outcomeWrong, d.checkName(res.Check)+": "+res.Failure
	}
	// Keep the results ordered by send time: a timeout arrives after later successes.
	r.probes = append(r.probes, o)
	for i := len(r.probes) - 1; i > 0 && r.probes[i].sent.Before(r.probes[i-1].sent); i-- {
		r.probes[i], r.probes[i-1] = r.probes[i-1], r.probes[i]
	}
	if keep := 4 * d.th.RecentProbes; len(r.probes) > 2*keep {
		r.probes = append(r.probes[:0], r.probes[len(r.probes)-keep:]...)
	}
	if o.outcome != outcomeOK {
		return
	}
	if res.Canary {
		r.observeCanary(res)
		return
	}
	if res.Check >= 0 && res.Check < len(d.checks) && d.checks[res.Check].Majority && d.checks[res.Check].Answers == nil {
		d.observeAnswer(r, res)
	}
}

// observeLateReply turns the timeout of the same probe into a late answer: the replica was
// alive, only slow (R9, R10). A late reply that is wrong stays a failure.
func (d *Detector) observeLateReply(r *evidence, res probe.Result) {
	for i := len(r.probes) - 1; i >= 0; i-- {
		o := &r.probes[i]
		if o.check != res.Check || !o.sent.Equal(res.Sent) {
			continue
		}
		if o.outcome == outcomeSilent {
			o.latency, o.rcode, o.ttl = res.Latency, res.Rcode, res.TTL
			o.outcome = outcomeLate
			if res.Failure != "" {
				o.outcome, o.why = outcomeWrong, d.checkName(res.Check)+": "+res.Failure
			}
		}
		return
	}
}

func (r *evidence) observeCanary(res probe.Result) {
	if res.CanaryOK {
		r.canaryMiss, r.canaryOKAt = 0, res.Sent
		return
	}
	if r.canaryMiss == 0 {
		r.canaryMissSince = res.Sent
	}
	r.canaryMiss++
	r.canaryWhy = "freshness canary behind: " + res.CanaryWhy
}

// ObserveHeartbeat records one read of a replica's heartbeat.
func (d *Detector) ObserveHeartbeat(res hbreader.Result) {
	r, ok := d.replicas[res.Replica]
	if !ok || res.Kind == hbreader.Late {
		return
	}
	d.markDirty(r)
	r.readBuf = res
	r.read = &r.readBuf // no allocation per read
	if res.Kind == hbreader.OK {
		r.lastHB = res.HB
		r.readFailures = 0
	} else {
		r.readFailures++
	}
}

// probesAsOf is when the probes last reported, at the latest now: every reply that came
// before then has been observed (the probe loop reads its sockets before it judges a
// deadline, and the engine takes every result before a judgment), so a probe without one
// had waited at least that long. If the probe loop stalls, this stalls with it.
func (d *Detector) probesAsOf(now time.Time) time.Time {
	if d.probedAt.After(now) {
		return now
	}
	return d.probedAt
}

// hbCurrent says whether the replica's last read gave a heartbeat.
func (r *evidence) hbCurrent() bool {
	return r.lastHB != nil && r.read != nil && r.read.Kind == hbreader.OK
}

func (d *Detector) checkName(i int) string {
	if i >= 0 && i < len(d.checks) {
		return d.checks[i].String()
	}
	return fmt.Sprintf("check %d", i)
}

// fetchedAt is when the answer of o left its origin: a cache serves an answer with its TTL
// counted down, so an answer whose TTL is below the longest seen for its check was fetched
// that much earlier (R1: a cached answer is no witness of a fresh fault).
func (d *Detector) fetchedAt(o *probeObs) time.Time {
	if o.rcode != dns.RcodeSuccess || o.ttl == 0 {
		return o.sent // no TTL to tell: taken as fresh
	}
	return o.sent.Add(-(d.maxTTL[o.check] - o.ttl))
}

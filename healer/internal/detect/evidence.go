package detect

import (
	"fmt"
	"time"

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
	read         *hbreader.Result
	lastHB       *heartbeat.Heartbeat
	readFailures int
	ownLatency   ewma.Duration // probe latency while not an outlier (R8: a hint)
}

func newEvidence(state api.State) *evidence {
	return &evidence{answers: map[int]answerObs{}, mismatch: map[int]int{}, state: state}
}

type probeObs struct {
	sent    time.Time
	latency time.Duration
	ok      bool
	why     string
	check   int // index of the check (probe.Result.Check)
}

type answerObs struct {
	key string
	at  time.Time
}

// ObserveProbe records one probe result.
func (d *Detector) ObserveProbe(res probe.Result) {
	r, ok := d.replicas[res.Replica]
	if !ok || res.Late {
		return // a probe the healer itself was too stalled to judge says nothing
	}
	o := probeObs{sent: res.Sent, latency: res.Latency, ok: res.OK(), check: res.Check}
	switch {
	case res.Err != nil && res.Timeout:
		o.why = fmt.Sprintf("probe timeout after %s", res.Latency.Round(time.Millisecond))
	case res.Err != nil:
		o.why = "probe error: " + res.Err.Error()
	case res.Failure != "":
		o.why = d.checkName(res.Check) + ": " + res.Failure
	}
	// Keep the results ordered by send time: a timeout arrives after later successes.
	r.probes = append(r.probes, o)
	for i := len(r.probes) - 1; i > 0 && r.probes[i].sent.Before(r.probes[i-1].sent); i-- {
		r.probes[i], r.probes[i-1] = r.probes[i-1], r.probes[i]
	}
	if keep := 4 * d.th.RecentProbes; len(r.probes) > 2*keep {
		r.probes = append(r.probes[:0], r.probes[len(r.probes)-keep:]...)
	}
	if !o.ok {
		return
	}
	if res.Canary {
		r.observeCanary(res)
		return
	}
	if res.Check >= 0 && res.Check < len(d.checks) && d.checks[res.Check].Answers == nil {
		d.observeAnswer(r, res)
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
	cp := res
	r.read = &cp
	if res.Kind == hbreader.OK {
		r.lastHB = res.HB
		r.readFailures = 0
	} else {
		r.readFailures++
	}
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

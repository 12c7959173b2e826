package detect

import (
	"fmt"
	"time"

	"github.com/dnspulse/dnspulse/healer/api"
)

// judge applies the per-replica rules to replica i when the failure is not global. It
// changes nothing; learn says whether the replica's probe latency may feed its own
// baseline (it was judged on the ordinary path and is not an outlier of itself).
func (d *Detector) judge(ev *evaluation, i int) (to api.State, reasons []string, since time.Time, learn bool) {
	r := ev.replicas[i]
	to, reasons, since, learn = d.judgeReady(ev, i)
	// R7: a replica that has not been Ready yet (starting) or is terminating is suspect at
	// most: it is not meant to serve, and a degraded state about it would outlive its
	// start-up. One that was Ready and is no longer (the kubelet found it broken) is judged
	// as any other: it serves nothing, and replacing it helps.
	if to == api.Degraded && (r.readyAt.IsZero() || r.target.Terminating) {
		why := "not Ready yet"
		if r.target.Terminating {
			why = "terminating"
		}
		return api.Suspect, append([]string{why}, reasons...), since, learn
	}
	return to, reasons, since, learn
}

// Unreachable says whether a degraded replica is so on unreachability alone: its probes
// unanswered and its heartbeat unreachable, nothing it said wrong. The engine then wants an
// independent view (the kubelet, the replica's Lease) before it evicts.
func (d *Detector) Unreachable(name string) bool {
	r, ok := d.replicas[name]
	return ok && r.state == api.Degraded && r.unreachable
}

func (d *Detector) judgeReady(ev *evaluation, i int) (api.State, []string, time.Time, bool) {
	r, e, name, now := ev.replicas[i], &ev.ext[i], ev.names[i], ev.now
	in := d.judgeInternal(r, &ev.peers)
	if !e.known && !in.known {
		return api.Unknown, nil, time.Time{}, false
	}
	// R14: a young replica (Ready for less than the warm-up: a cold cache, a watch just
	// synced, a scale-up) is degraded only on hard evidence, never for being worse than its
	// peers: being later than a peer to catch up with a shared event is not a fault.
	young := ev.isYoung(r, d.young)
	extFailing, inBad := e.failing, in.failing || in.gone || in.relFailing
	if young {
		extFailing, inBad = e.hard, in.failing || in.gone
	}

	// R2: stale data: the answer differs from the majority, persistently.
	if m := r.mismatches(); !young && m >= d.th.AnswerMismatches && now.Sub(r.mismatchSince) >= d.th.AnswerGrace.D() {
		return api.Degraded, []string{fmt.Sprintf("%s (%d in a row)", r.mismatchWhy, m)}, r.mismatchSince, false
	}
	// R3: lost apiserver watch: the canary stays behind while a peer is fresh.
	if !young && r.canaryMiss >= d.th.CanaryMisses && ev.peers.canaryOK.latestExcept(name).After(r.canaryMissSince) {
		return api.Degraded, []string{fmt.Sprintf("%s (%d in a row)", r.canaryWhy, r.canaryMiss)}, r.canaryMissSince, false
	}
	// R1: both views fail (or the internal one is gone), and a peer witnesses that the
	// fault is this replica's alone; R5: not while a global failure is settling.
	r.unreachable = e.hard && e.silentOnly && in.gone && !in.failing && !in.relFailing && r.target.PulseAddr != ""
	if extFailing && inBad && !now.Before(d.global.ended.Add(d.th.GlobalSettle.D())) && d.witness(ev, i, e.since) {
		reasons := append(append([]string{}, e.reasons...), in.reasons...)
		return api.Degraded, reasons, e.since, false
	}
	// R6: once degraded, a replica stays so until its probes have recovered: no flapping
	// between degraded and suspect while the evidence thins out. Its heartbeat alone never
	// keeps it degraded once the probes are clean.
	if r.state == api.Degraded && !e.recovered {
		reasons := append(append([]string{"not yet recovered"}, e.reasons...), in.reasons...)
		return api.Degraded, reasons, e.since, false
	}

	// R8: any single signal is a suspicion, never degraded on its own.
	var suspect []string
	suspect = append(suspect, e.reasons...)
	if e.anyBad && !e.failing {
		suspect = append(suspect, "recent probe failures")
	}
	if in.failing || in.relFailing || in.gone && r.target.PulseAddr != "" {
		suspect = append(suspect, in.reasons...)
	}
	suspect = append(suspect, in.suspect...)
	if r.mismatches() > 0 {
		suspect = append(suspect, r.mismatchWhy)
	}
	if r.canaryMiss > 0 {
		suspect = append(suspect, r.canaryWhy)
	}
	// Latency against the replica's own baseline: a hint, never degraded on its own.
	learn := false
	if e.latency > 0 {
		if own := r.ownLatency.Value(); own > 0 && d.outlier(e.latency, own) {
			suspect = append(suspect, fmt.Sprintf("probe latency %s above own baseline %s", e.latency.Round(time.Millisecond), own.Round(time.Millisecond)))
		} else {
			learn = true
		}
	}
	if len(suspect) > 0 {
		return api.Suspect, suspect, e.since, learn
	}
	if !e.known {
		return api.Unknown, nil, time.Time{}, learn
	}
	return api.Healthy, nil, time.Time{}, learn
}

// Package detect fuses the two views of every replica, the healer's own probes (external)
// and the replica's heartbeat (internal), into one state per replica, following the fault
// matrix of DESIGN.md:
//
//   - degraded only when both views fail, or one view is gone and the other fails, and
//     the replica is worse than its peers (a ready peer answered correctly after this
//     replica began to fail); an answer that differs from the majority, or a freshness
//     canary that stays behind, is degraded on the external view alone;
//   - every ready replica failing at once is global: restarting one cannot help;
//   - anything less is suspect at most (an NXDOMAIN storm, one view failing alone).
//
// The Detector is pure logic: it is fed results and asked for a verdict at a given time,
// so every rule is tested with a fake clock. It is not safe for concurrent use; the
// engine calls it from one goroutine.
package detect

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/dnspulse/dnspulse/healer/pkg/probe"
	"github.com/dnspulse/dnspulse/healer/pkg/pulsereader"
	"github.com/dnspulse/dnspulse/healer/pkg/replica"
	"github.com/dnspulse/dnspulse/heartbeat"
)

// State is a replica's verdict.
type State string

// The states, as the audit log spells them.
const (
	Unknown  State = "unknown"
	Healthy  State = "healthy"
	Suspect  State = "suspect"
	Degraded State = "degraded"
	Global   State = "global"
)

// Thresholds tune the rules. Defaults favour speed with 20 ms probes and heartbeats while
// never degrading on a single signal.
type Thresholds struct {
	// RecentProbes is how many of a replica's latest probe results (by send time) the
	// failure rule looks at; Window drops results older than that.
	RecentProbes int           `json:"recentProbes"`
	Window       time.Duration `json:"window"`
	// MinFailures among the RecentProbes, the latest one failing, makes the external view
	// failing. Failures are timeouts, errors, bad rcodes and wrong exact answers.
	MinFailures int `json:"minFailures"`
	// RecoverSuccesses in a row end a failing episode.
	RecoverSuccesses int `json:"recoverSuccesses"`
	// A latency outlier is above both peers' median + LatencyMargin and LatencyFactor x
	// peers' median (probe latency externally, the 1s p99 internally).
	LatencyMargin time.Duration `json:"latencyMargin"`
	LatencyFactor float64       `json:"latencyFactor"`
	// AnswerMismatches in a row that differ from the majority, lasting AnswerGrace, are
	// degraded (stale data) even when the heartbeat looks fine.
	AnswerMismatches int           `json:"answerMismatches"`
	AnswerGrace      time.Duration `json:"answerGrace"`
	// CanaryMisses in a row (each already older than the canary's max lag) are degraded.
	CanaryMisses int `json:"canaryMisses"`
	// ServfailMargin: the 1s SERVFAIL ratio above the peers' median by more than this fails
	// the internal view.
	ServfailMargin float64 `json:"servfailMargin"`
	// NXDomainMargin: the 1s NXDOMAIN ratio above the peers' median by more than this is
	// suspect only (one client's storm is not the replica's fault).
	NXDomainMargin float64 `json:"nxdomainMargin"`
	// PulseFailures in a row (unreachable) mean the internal view is gone.
	PulseFailures int `json:"pulseFailures"`
}

// DefaultThresholds are the thresholds used when the config file sets none.
func DefaultThresholds() Thresholds {
	return Thresholds{
		RecentProbes:     5,
		Window:           time.Second,
		MinFailures:      2,
		RecoverSuccesses: 3,
		LatencyMargin:    40 * time.Millisecond,
		LatencyFactor:    3,
		AnswerMismatches: 3,
		AnswerGrace:      40 * time.Millisecond,
		CanaryMisses:     2,
		ServfailMargin:   0.01,
		NXDomainMargin:   0.3,
		PulseFailures:    1,
	}
}

// Validate returns every bad value, named as in the config file.
func (t Thresholds) Validate(prefix string) []string {
	var errs []string
	bad := func(key, why string) { errs = append(errs, prefix+key+": "+why) }
	if t.RecentProbes < 1 || t.RecentProbes > 64 {
		bad("recentProbes", "must be in [1,64]")
	}
	if t.MinFailures < 1 || t.MinFailures > t.RecentProbes {
		bad("minFailures", "must be in [1,recentProbes]")
	}
	if t.Window <= 0 {
		bad("window", "must be > 0")
	}
	if t.RecoverSuccesses < 1 {
		bad("recoverSuccesses", "must be >= 1")
	}
	if t.LatencyMargin <= 0 {
		bad("latencyMargin", "must be > 0")
	}
	if t.LatencyFactor < 1 {
		bad("latencyFactor", "must be >= 1")
	}
	if t.AnswerMismatches < 1 {
		bad("answerMismatches", "must be >= 1")
	}
	if t.AnswerGrace < 0 {
		bad("answerGrace", "must be >= 0")
	}
	if t.CanaryMisses < 1 {
		bad("canaryMisses", "must be >= 1")
	}
	if t.ServfailMargin < 0 || t.ServfailMargin > 1 {
		bad("servfailMargin", "must be in [0,1]")
	}
	if t.NXDomainMargin < 0 || t.NXDomainMargin > 1 {
		bad("nxdomainMargin", "must be in [0,1]")
	}
	if t.PulseFailures < 1 {
		bad("pulseFailures", "must be >= 1")
	}
	return errs
}

// Transition is one change of a replica's state.
type Transition struct {
	Replica string
	From    State
	To      State
	Reasons []string
	At      time.Time
	// Since is when the evidence for To began (the first failing probe's send time, the
	// first mismatch, ...), for the detection latency; zero when unknown.
	Since time.Time
}

type probeObs struct {
	sent    time.Time
	latency time.Duration
	ok      bool
	why     string
}

type answerObs struct {
	key string
	at  time.Time
}

type replicaData struct {
	target replica.Target
	probes []probeObs // by arrival; sorted by sent when judged

	answers       map[int]answerObs
	mismatch      map[int]int
	mismatchSince time.Time
	mismatchWhy   string

	canaryMiss      int
	canaryMissSince time.Time
	canaryWhy       string
	canaryOKAt      time.Time

	pulse         *pulsereader.Result // last result
	lastHB        *heartbeat.Heartbeat
	pulseFailures int

	baseline time.Duration // EWMA of probe latency while not an outlier

	state State
}

// Detector holds every replica's evidence and state.
type Detector struct {
	th       Thresholds
	checks   []probe.Check
	replicas map[string]*replicaData
}

// New makes a detector for the given checks (indexed as probe.Result.Check).
func New(th Thresholds, checks []probe.Check) *Detector {
	return &Detector{th: th, checks: checks, replicas: make(map[string]*replicaData)}
}

// SetTargets replaces the set of replicas; evidence of those that stay is kept.
func (d *Detector) SetTargets(targets []replica.Target) {
	seen := make(map[string]bool, len(targets))
	for _, t := range targets {
		seen[t.Name] = true
		r, ok := d.replicas[t.Name]
		if !ok {
			r = &replicaData{answers: map[int]answerObs{}, mismatch: map[int]int{}, state: Unknown}
			d.replicas[t.Name] = r
		} else if r.target.DNSAddr != t.DNSAddr || r.target.PulseAddr != t.PulseAddr {
			// A new address is a new process (a replacement pod): start afresh.
			*r = replicaData{answers: map[int]answerObs{}, mismatch: map[int]int{}, state: r.state}
		}
		r.target = t
	}
	for name := range d.replicas {
		if !seen[name] {
			delete(d.replicas, name)
		}
	}
}

// State returns a replica's current state (Unknown for one not known).
func (d *Detector) State(name string) State {
	if r, ok := d.replicas[name]; ok {
		return r.state
	}
	return Unknown
}

// States returns every replica's state.
func (d *Detector) States() map[string]State {
	out := make(map[string]State, len(d.replicas))
	for n, r := range d.replicas {
		out[n] = r.state
	}
	return out
}

// ObserveProbe records one probe result.
func (d *Detector) ObserveProbe(res probe.Result) {
	r, ok := d.replicas[res.Replica]
	if !ok {
		return
	}
	o := probeObs{sent: res.Sent, latency: res.Latency, ok: res.OK()}
	switch {
	case res.Err != nil && res.Timeout:
		o.why = fmt.Sprintf("probe timeout after %s", res.Latency.Round(time.Millisecond))
	case res.Err != nil:
		o.why = "probe error: " + res.Err.Error()
	case res.Failure != "":
		o.why = d.checkName(res.Check) + ": " + res.Failure
	}
	r.probes = append(r.probes, o)
	if max := 4 * d.th.RecentProbes; len(r.probes) > max {
		r.probes = append(r.probes[:0], r.probes[len(r.probes)-max:]...)
	}
	if !o.ok {
		return
	}
	if res.Canary {
		if res.CanaryOK {
			r.canaryMiss, r.canaryOKAt = 0, res.Sent
		} else {
			if r.canaryMiss == 0 {
				r.canaryMissSince = res.Sent
			}
			r.canaryMiss++
			r.canaryWhy = "freshness canary behind: " + res.CanaryWhy
		}
		return
	}
	if res.Check >= 0 && res.Check < len(d.checks) && d.checks[res.Check].Answers == nil {
		d.observeAnswer(r, res)
	}
}

func (d *Detector) checkName(i int) string {
	if i >= 0 && i < len(d.checks) {
		return d.checks[i].String()
	}
	return fmt.Sprintf("check %d", i)
}

// observeAnswer compares a replica's answer with the majority of every replica's latest
// answer to the same check (answers older than the window are not counted).
func (d *Detector) observeAnswer(r *replicaData, res probe.Result) {
	r.answers[res.Check] = answerObs{key: res.AnswerKey, at: res.Sent}
	counts := map[string]int{}
	n := 0
	for _, p := range d.replicas {
		a, ok := p.answers[res.Check]
		if !ok || !p.target.Ready && p != r || res.Sent.Sub(a.at) > d.th.Window {
			continue
		}
		counts[a.key]++
		n++
	}
	majority, best := "", 0
	for k, c := range counts {
		if c > best || c == best && k < majority {
			majority, best = k, c
		}
	}
	if n < 3 || 2*best <= n || res.AnswerKey == majority {
		r.mismatch[res.Check] = 0
		if d.mismatches(r) == 0 {
			r.mismatchSince = time.Time{}
		}
		return
	}
	if r.mismatchSince.IsZero() {
		r.mismatchSince = res.Sent
	}
	r.mismatch[res.Check]++
	r.mismatchWhy = fmt.Sprintf("%s: answer [%s] differs from the majority [%s] (%d of %d replicas)",
		d.checkName(res.Check), oneLine(res.AnswerKey), oneLine(majority), best, n)
}

func oneLine(key string) string { return strings.ReplaceAll(key, "\n", "; ") }

func (d *Detector) mismatches(r *replicaData) int {
	m := 0
	for _, c := range r.mismatch {
		m = max(m, c)
	}
	return m
}

// ObservePulse records one heartbeat poll.
func (d *Detector) ObservePulse(res pulsereader.Result) {
	r, ok := d.replicas[res.Replica]
	if !ok {
		return
	}
	cp := res
	r.pulse = &cp
	if res.Kind == pulsereader.OK {
		r.lastHB = res.HB
		r.pulseFailures = 0
	} else {
		r.pulseFailures++
	}
}

// external is the verdict of the probes on one replica.
type external struct {
	known   bool
	failing bool
	reasons []string
	// since is the send time of the first failure among the recent probes.
	since time.Time
	// lastOK is the send time of the latest successful probe.
	lastOK time.Time
	// recovered: the latest RecoverSuccesses probes all succeeded.
	recovered bool
	anyFail   bool
	latency   time.Duration // median of recent successful probes; 0 if < 2
	last      []probeObs    // the RecentProbes latest, by send time
}

func (d *Detector) external(r *replicaData, now time.Time) external {
	var e external
	recent := make([]probeObs, 0, len(r.probes))
	for _, o := range r.probes {
		if now.Sub(o.sent) <= d.th.Window {
			recent = append(recent, o)
		}
	}
	if len(recent) == 0 {
		return e
	}
	e.known = true
	sort.SliceStable(recent, func(i, j int) bool { return recent[i].sent.Before(recent[j].sent) })
	for _, o := range recent {
		if o.ok && o.sent.After(e.lastOK) {
			e.lastOK = o.sent
		}
	}
	last := recent[max(0, len(recent)-d.th.RecentProbes):]
	e.last = last
	fails := 0
	var lats []time.Duration
	for _, o := range last {
		if o.ok {
			lats = append(lats, o.latency)
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
	}
	tail := recent[max(0, len(recent)-d.th.RecoverSuccesses):]
	e.recovered = len(tail) >= d.th.RecoverSuccesses
	for _, o := range tail {
		e.recovered = e.recovered && o.ok
	}
	if len(lats) >= 2 {
		e.latency = median(lats)
	}
	return e
}

// internal is the verdict of the heartbeat on one replica.
type internal struct {
	known   bool
	gone    bool
	failing bool
	reasons []string
	suspect []string
}

func (d *Detector) internal(r *replicaData, peers []*replicaData) internal {
	var in internal
	if r.target.PulseAddr == "" {
		in.known, in.gone = true, true
		in.reasons = append(in.reasons, "no pulse listener configured")
		return in
	}
	if r.pulse == nil {
		return in
	}
	in.known = true
	switch r.pulse.Kind {
	case pulsereader.Unreachable:
		if r.pulseFailures >= d.th.PulseFailures {
			in.gone = true
			in.reasons = append(in.reasons, "heartbeat unreachable: "+errString(r.pulse.Err))
		}
		return in
	case pulsereader.Invalid:
		in.gone = true
		in.reasons = append(in.reasons, "heartbeat invalid: "+errString(r.pulse.Err))
		return in
	}
	hb := r.lastHB
	if r.pulse.Stale {
		in.failing = true
		in.reasons = append(in.reasons, fmt.Sprintf("heartbeat stale: seq %d unchanged for %s", hb.Seq, r.pulse.SeqAge.Round(time.Millisecond)))
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
	var sf, nx, p99 []float64
	for _, p := range peers {
		if p.lastHB == nil || p.pulse == nil || p.pulse.Kind != pulsereader.OK {
			continue
		}
		pw := p.lastHB.Windows[heartbeat.Window1s]
		sf = append(sf, pw.ServfailRatio)
		nx = append(nx, pw.NXDomainRatio)
		p99 = append(p99, float64(pw.LatencyMicros.P99))
	}
	if len(sf) > 0 {
		if m := medianF(sf); w.Rcodes["SERVFAIL"] > 0 && w.ServfailRatio > m+d.th.ServfailMargin {
			in.failing = true
			in.reasons = append(in.reasons, fmt.Sprintf("servfail ratio %.3f vs peers %.3f", w.ServfailRatio, m))
		}
		if m := medianF(nx); w.NXDomainRatio > m+d.th.NXDomainMargin {
			in.suspect = append(in.suspect, fmt.Sprintf("nxdomain ratio %.2f vs peers %.2f", w.NXDomainRatio, m))
		}
		m := time.Duration(medianF(p99)) * time.Microsecond
		own := time.Duration(w.LatencyMicros.P99) * time.Microsecond
		if d.outlier(own, m) {
			in.failing = true
			in.reasons = append(in.reasons, fmt.Sprintf("p99 %s vs peers %s", own.Round(time.Millisecond), m.Round(time.Millisecond)))
		}
	}
	return in
}

func (d *Detector) outlier(own, peers time.Duration) bool {
	return own > peers+d.th.LatencyMargin && float64(own) > d.th.LatencyFactor*float64(peers)
}

func errString(err error) string {
	if err == nil {
		return "unknown error"
	}
	return err.Error()
}

// Evaluate judges every replica at 'now' and returns the transitions, sorted by replica.
func (d *Detector) Evaluate(now time.Time) []Transition {
	names := make([]string, 0, len(d.replicas))
	for n := range d.replicas {
		names = append(names, n)
	}
	sort.Strings(names)
	ext := make(map[string]external, len(names))
	for _, n := range names {
		ext[n] = d.external(d.replicas[n], now)
	}
	// Latency outliers against the peers' median of recent probe latency.
	for _, n := range names {
		e := ext[n]
		if e.latency == 0 {
			continue
		}
		var peerLat []time.Duration
		for _, p := range names {
			if p != n && d.replicas[p].target.Ready && ext[p].latency > 0 {
				peerLat = append(peerLat, ext[p].latency)
			}
		}
		if len(peerLat) == 0 {
			continue
		}
		m := median(peerLat)
		if d.outlier(e.latency, m) {
			e.failing = true
			e.reasons = append(e.reasons, fmt.Sprintf("probe latency %s vs peers %s", e.latency.Round(time.Millisecond), m.Round(time.Millisecond)))
			if e.since.IsZero() {
				e.since = now
				for _, o := range e.last {
					if o.ok && d.outlier(o.latency, m) {
						e.since = o.sent
						break
					}
				}
			}
			ext[n] = e
		}
	}

	// Global: every ready replica that the probes know about is failing.
	ready, failing := 0, 0
	var globalReasons []string
	for _, n := range names {
		r := d.replicas[n]
		if !r.target.Ready || !ext[n].known {
			continue
		}
		ready++
		if ext[n].failing {
			failing++
			globalReasons = append(globalReasons, n+": "+strings.Join(ext[n].reasons, "; "))
		}
	}
	global := ready > 0 && failing == ready

	var out []Transition
	for _, n := range names {
		r := d.replicas[n]
		var to State
		var reasons []string
		var since time.Time
		if global && r.target.Ready && ext[n].known {
			to, since = Global, ext[n].since
			reasons = append([]string{fmt.Sprintf("every ready replica failing (%d of %d)", failing, ready)}, ext[n].reasons...)
		} else {
			to, reasons, since = d.judge(r, n, names, ext, now)
		}
		if to == r.state {
			continue
		}
		if reasons == nil {
			reasons = []string{}
		}
		out = append(out, Transition{Replica: n, From: r.state, To: to, Reasons: reasons, At: now, Since: since})
		r.state = to
	}
	return out
}

// judge is the per-replica rule when the failure is not global.
func (d *Detector) judge(r *replicaData, name string, names []string, ext map[string]external, now time.Time) (State, []string, time.Time) {
	var peers []*replicaData
	for _, p := range names {
		if p != name && d.replicas[p].target.Ready {
			peers = append(peers, d.replicas[p])
		}
	}
	e := ext[name]
	in := d.internal(r, peers)
	if !e.known && !in.known {
		return Unknown, nil, time.Time{}
	}

	// A peer is a healthy witness when its probes are fine and one of them was sent after
	// this replica began to fail: then the fault is this replica's, not everyone's.
	healthyPeer := func(after time.Time) bool {
		for _, p := range names {
			pe := ext[p]
			if p == name || !d.replicas[p].target.Ready || !pe.known || pe.failing {
				continue
			}
			if pe.lastOK.After(after.Add(witnessSlack)) {
				return true
			}
		}
		return false
	}

	// Stale data: the answer differs from the majority, persistently.
	if m := d.mismatches(r); m >= d.th.AnswerMismatches && now.Sub(r.mismatchSince) >= d.th.AnswerGrace {
		return Degraded, []string{fmt.Sprintf("%s (%d in a row)", r.mismatchWhy, m)}, r.mismatchSince
	}
	// Lost apiserver watch: the canary stays behind while a peer is fresh.
	if r.canaryMiss >= d.th.CanaryMisses {
		for _, p := range peers {
			if p.canaryMiss == 0 && p.canaryOKAt.After(r.canaryMissSince) {
				return Degraded, []string{fmt.Sprintf("%s (%d in a row)", r.canaryWhy, r.canaryMiss)}, r.canaryMissSince
			}
		}
	}
	if e.failing && (in.failing || in.gone) && healthyPeer(e.since) {
		reasons := append(append([]string{}, e.reasons...), in.reasons...)
		return Degraded, reasons, e.since
	}
	// Once degraded, a replica stays so until its probes have recovered: no flapping
	// between degraded and suspect while the evidence thins out.
	if r.state == Degraded && (!e.recovered || in.failing) {
		reasons := append(append([]string{"not yet recovered"}, e.reasons...), in.reasons...)
		return Degraded, reasons, e.since
	}

	var suspect []string
	suspect = append(suspect, e.reasons...)
	if e.anyFail && !e.failing {
		suspect = append(suspect, "recent probe failures")
	}
	if in.failing || in.gone && r.target.PulseAddr != "" {
		suspect = append(suspect, in.reasons...)
	}
	suspect = append(suspect, in.suspect...)
	if d.mismatches(r) > 0 {
		suspect = append(suspect, r.mismatchWhy)
	}
	if r.canaryMiss > 0 {
		suspect = append(suspect, r.canaryWhy)
	}
	// Latency against the replica's own baseline: a hint, never a verdict on its own.
	if e.latency > 0 {
		if r.baseline > 0 && d.outlier(e.latency, r.baseline) {
			suspect = append(suspect, fmt.Sprintf("probe latency %s above own baseline %s", e.latency.Round(time.Millisecond), r.baseline.Round(time.Millisecond)))
		} else if r.baseline == 0 {
			r.baseline = e.latency
		} else {
			r.baseline += (e.latency - r.baseline) / 16
		}
	}
	if len(suspect) > 0 {
		return Suspect, suspect, e.since
	}
	if !e.known {
		return Unknown, nil, time.Time{}
	}
	return Healthy, nil, time.Time{}
}

func median(v []time.Duration) time.Duration {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func medianF(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// witnessSlack: a peer's success counts as proof that the fault is this replica's only
// when it was sent a little after this replica's first failure, so that a fault that hits
// every replica within a few milliseconds of each other (an upstream outage) is not taken
// for a local one.
const witnessSlack = 5 * time.Millisecond

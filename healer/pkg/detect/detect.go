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
	// GlobalSettle: after a global failure ends, no replica is degraded on failing probes
	// for this long (the last to recover is not worse than its peers, only later).
	GlobalSettle time.Duration `json:"globalSettle"`
	// GlobalAfter: every ready replica must be failing this long for a global verdict.
	GlobalAfter time.Duration `json:"globalAfter"`
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
		GlobalSettle:     time.Second,
		GlobalAfter:      300 * time.Millisecond,
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
	if t.GlobalSettle < 0 {
		bad("globalSettle", "must be >= 0")
	}
	if t.GlobalAfter < 0 {
		bad("globalAfter", "must be >= 0")
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
	check   int // index of the check (probe.Result.Check)
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

	majority map[int]*majorityCache
	// inGlobal and globalEnded: a global fault resolves unevenly, so for GlobalSettle after
	// every replica stopped failing together no replica is judged degraded on failing
	// probes.
	inGlobal        bool
	globalEnded     time.Time
	allFailingSince time.Time

	// Reused by Evaluate to keep it allocation-free.
	names []string
	ext   []external
	pe    peers
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
		} else if r.target.DNSAddr != t.DNSAddr || r.target.PulseAddr != t.PulseAddr || t.Ready && !r.target.Ready {
			// A new address is a new process (a replacement pod), and a replica that just
			// became Ready has finished starting: what it did before proves nothing about it
			// now, so start afresh rather than act on a verdict about its start-up.
			*r = replicaData{answers: map[int]answerObs{}, mismatch: map[int]int{}, state: r.state}
		}
		r.target = t
	}
	for name := range d.replicas {
		if !seen[name] {
			delete(d.replicas, name)
		}
	}
	d.names = d.names[:0] // rebuilt by Evaluate
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
// answer to the same check (answers older than the window are not counted). The majority
// is cached for a few milliseconds while answers agree with it: recounting it on every
// result would cost O(replicas) per probe.
func (d *Detector) observeAnswer(r *replicaData, res probe.Result) {
	r.answers[res.Check] = answerObs{key: res.AnswerKey, at: res.Sent}
	if d.majority == nil {
		d.majority = map[int]*majorityCache{}
	}
	mc := d.majority[res.Check]
	if mc == nil {
		mc = &majorityCache{}
		d.majority[res.Check] = mc
	}
	if res.AnswerKey != mc.key || res.Sent.Sub(mc.at) > majorityCacheFor || res.Sent.Before(mc.at) {
		d.countMajority(mc, res.Check, res.Sent)
	}
	majority, best, n := mc.key, mc.count, mc.n
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

// majorityCacheFor is how long a counted majority is reused while answers agree with it.
const majorityCacheFor = 10 * time.Millisecond

type majorityCache struct {
	key      string
	count, n int
	at       time.Time
}

func (d *Detector) countMajority(mc *majorityCache, check int, now time.Time) {
	counts := map[string]int{}
	n := 0
	for _, p := range d.replicas {
		a, ok := p.answers[check]
		if !ok || !p.target.Ready || now.Sub(a.at) > d.th.Window {
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
	*mc = majorityCache{key: majority, count: best, n: n, at: now}
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
	if !ok || res.Kind == pulsereader.Late {
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

// failingCheck finds a check whose own latest RecentProbes results hold MinFailures
// failures, the latest failing; it returns -1 when there is none. recent is in send order.
func (d *Detector) failingCheck(recent []probeObs) (check, n, fails int, why string, since time.Time) {
	var seen [8]int // checks already judged; a healer has a handful
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

// external judges the probes; it allocates only when it has a reason to give.
func (d *Detector) external(r *replicaData, now time.Time) external {
	var e external
	i0 := len(r.probes)
	for i0 > 0 && now.Sub(r.probes[i0-1].sent) <= d.th.Window {
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
	var lats [64]time.Duration
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
		// One check failing steadily (a broken upstream fails the forwarded name while
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

// internal is the verdict of the heartbeat on one replica.
type internal struct {
	known   bool
	gone    bool
	failing bool
	reasons []string
	suspect []string
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

// peers is what every replica is compared with, computed once per evaluation.
type peers struct {
	probeLat          sortedVals // recent probe latency (ns) of ready replicas with one
	servfail, nx, p99 sortedVals // 1s window of ready replicas with a current heartbeat
	canaryOK          top2       // canaryOKAt of ready replicas whose canary is fresh
}

func hbCurrent(r *replicaData) bool {
	return r.lastHB != nil && r.pulse != nil && r.pulse.Kind == pulsereader.OK
}

func (d *Detector) internal(r *replicaData, pe *peers) internal {
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
// It costs O(n log n) for n replicas and allocates only for reasons, so the engine can call
// it on every burst of results.
func (d *Detector) Evaluate(now time.Time) []Transition {
	if len(d.names) != len(d.replicas) {
		d.names = d.names[:0]
		for n := range d.replicas {
			d.names = append(d.names, n)
		}
		slices.Sort(d.names)
	}
	names := d.names
	if cap(d.ext) < len(names) {
		d.ext = make([]external, len(names))
	}
	ext := d.ext[:len(names)]
	var pe peers
	pe.probeLat, pe.servfail, pe.nx, pe.p99 = d.pe.probeLat[:0], d.pe.servfail[:0], d.pe.nx[:0], d.pe.p99[:0]
	for i, n := range names {
		r := d.replicas[n]
		ext[i] = d.external(r, now)
		if !r.target.Ready {
			continue
		}
		if ext[i].latency > 0 {
			pe.probeLat = append(pe.probeLat, float64(ext[i].latency))
		}
		if hbCurrent(r) {
			w := r.lastHB.Windows[heartbeat.Window1s]
			pe.servfail = append(pe.servfail, w.ServfailRatio)
			pe.nx = append(pe.nx, w.NXDomainRatio)
			pe.p99 = append(pe.p99, float64(w.LatencyMicros.P99))
		}
	}
	for _, s := range []sortedVals{pe.probeLat, pe.servfail, pe.nx, pe.p99} {
		slices.Sort(s)
	}
	d.pe = pe

	// Latency outliers against the peers' median of recent probe latency.
	for i, n := range names {
		e := &ext[i]
		r := d.replicas[n]
		if e.latency == 0 {
			continue
		}
		mf, ok := pe.probeLat.peerMedian(float64(e.latency), r.target.Ready)
		if !ok {
			continue
		}
		m := time.Duration(mf)
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
		}
	}

	// Global: every ready replica that the probes know about is failing.
	ready, failing := 0, 0
	for i, n := range names {
		r := d.replicas[n]
		if !r.target.Ready || !ext[i].known {
			continue
		}
		ready++
		if ext[i].failing {
			failing++
		}
		if r.canaryMiss == 0 && !r.canaryOKAt.IsZero() {
			pe.canaryOK.add(n, r.canaryOKAt)
		}
	}
	// A global verdict is an alert, not an action: it waits GlobalAfter so that a blip that
	// touches everyone (an upstream hiccup) raises none. Until then the replicas are
	// judged one by one, and with no healthy witness none is degraded.
	allFailing := ready > 0 && failing == ready
	if !allFailing {
		if !d.allFailingSince.IsZero() {
			d.globalEnded = now // an episode of everyone failing, declared global or not
		}
		d.allFailingSince = time.Time{}
	} else if d.allFailingSince.IsZero() {
		d.allFailingSince = now
	}
	global := allFailing && (d.inGlobal || now.Sub(d.allFailingSince) >= d.th.GlobalAfter)
	d.inGlobal = global

	var out []Transition
	for i, n := range names {
		r := d.replicas[n]
		var to State
		var reasons []string
		var since time.Time
		if global && r.target.Ready && ext[i].known {
			to, since = Global, ext[i].since
			reasons = append([]string{fmt.Sprintf("every ready replica failing (%d of %d)", failing, ready)}, ext[i].reasons...)
		} else {
			to, reasons, since = d.judge(r, n, &ext[i], &pe, now)
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

// witness says whether a ready peer proves that a fault starting at 'since' is local: the
// peer answered a probe sent after it, failed none sent from shortly before it on, and its
// own heartbeat is fine. A host or network hiccup that touches every replica within a few
// milliseconds (an overloaded node, an upstream outage reaching each replica's next query)
// leaves no such witness, so it is never taken for one replica's fault.
func (d *Detector) witness(name string, since, now time.Time) bool {
	for i, p := range d.names {
		r := d.replicas[p]
		pe := &d.ext[i]
		if p == name || !r.target.Ready || !pe.known || pe.failing || internalBad(r) {
			continue
		}
		if pe.lastOK.After(since.Add(witnessSlack)) && pe.lastFail.Before(since.Add(-witnessClean)) {
			return true
		}
	}
	return false
}

// internalBad is a cheap look at a peer's heartbeat for witness duty (the ratio
// comparisons are left out: they are relative to this very replica's peers).
func internalBad(r *replicaData) bool {
	if r.target.PulseAddr == "" {
		return false
	}
	if r.pulse == nil || r.pulse.Kind != pulsereader.OK || r.pulse.Stale {
		return true
	}
	return (!r.lastHB.SelfProbe.OK && !r.lastHB.SelfProbe.Time.IsZero()) || r.lastHB.Verdict == heartbeat.VerdictDegraded
}

// judge is the per-replica rule when the failure is not global. A replica that is not
// Ready (starting, terminating) is suspect at most: it is not meant to serve, and a
// degraded verdict about it would outlive its start-up.
func (d *Detector) judge(r *replicaData, name string, e *external, pe *peers, now time.Time) (State, []string, time.Time) {
	st, reasons, since := d.judgeReady(r, name, e, pe, now)
	if !r.target.Ready && st == Degraded {
		return Suspect, append([]string{"not Ready"}, reasons...), since
	}
	return st, reasons, since
}

func (d *Detector) judgeReady(r *replicaData, name string, e *external, pe *peers, now time.Time) (State, []string, time.Time) {
	in := d.internal(r, pe)
	if !e.known && !in.known {
		return Unknown, nil, time.Time{}
	}

	// Stale data: the answer differs from the majority, persistently.
	if m := d.mismatches(r); m >= d.th.AnswerMismatches && now.Sub(r.mismatchSince) >= d.th.AnswerGrace {
		return Degraded, []string{fmt.Sprintf("%s (%d in a row)", r.mismatchWhy, m)}, r.mismatchSince
	}
	// Lost apiserver watch: the canary stays behind while a peer is fresh.
	if r.canaryMiss >= d.th.CanaryMisses && pe.canaryOK.latestExcept(name).After(r.canaryMissSince) {
		return Degraded, []string{fmt.Sprintf("%s (%d in a row)", r.canaryWhy, r.canaryMiss)}, r.canaryMissSince
	}
	// Both views fail, and a peer witnesses that the fault is this replica's alone.
	if e.failing && (in.failing || in.gone) && !now.Before(d.globalEnded.Add(d.th.GlobalSettle)) && d.witness(name, e.since, now) {
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

// witnessSlack: a peer's success counts as proof that the fault is this replica's only
// when it was sent a little after this replica's first failure, so that a fault that hits
// every replica within a few milliseconds of each other (an upstream outage) is not taken
// for a local one.
const witnessSlack = 5 * time.Millisecond

// witnessClean: a witness must have failed no probe sent from this long before the
// replica's first failure on.
const witnessClean = 20 * time.Millisecond

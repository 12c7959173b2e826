package config

import (
	"fmt"
	"math"
	"time"
)

// MaxRecentProbes bounds Thresholds.RecentProbes; the detector sizes its scratch space by it.
const MaxRecentProbes = 64

// Thresholds tune the detector's rules (package detect; docs/design.md, "The rules"). The
// defaults favour speed with 20 ms probes and heartbeats while never degrading on a
// single signal. File keys only (thresholds.*), no flags.
type Thresholds struct {
	// RecentProbes is how many of a replica's latest probe results (by send time) the
	// failure rule looks at; Window drops results older than that.
	RecentProbes int      `json:"recentProbes"`
	Window       Duration `json:"window"`
	// MinFailures among the RecentProbes, the latest one failing, makes the external view
	// failing. Failures are timeouts, errors, bad rcodes and wrong exact answers.
	MinFailures int `json:"minFailures"`
	// MinFailSpan: failures that may be a stall (timeouts, slow answers) fail the external
	// view only once they span this long from the first one's send time with no good answer
	// between (R9): a process not scheduled for a few tens of milliseconds answers late,
	// and that late answer clears it. Wrong answers (a bad rcode or answer) need no span.
	MinFailSpan Duration `json:"minFailSpan"`
	// RecoverSuccesses in a row end a failing episode.
	RecoverSuccesses int `json:"recoverSuccesses"`
	// A latency outlier is above both peers' median + LatencyMargin and LatencyFactor x
	// peers' median (probe latency externally, the 1s p99 internally).
	LatencyMargin Duration `json:"latencyMargin"`
	LatencyFactor float64  `json:"latencyFactor"`
	// AnswerMismatches in a row that differ from the majority, lasting AnswerGrace, are
	// degraded (stale data) even when the heartbeat looks fine.
	AnswerMismatches int      `json:"answerMismatches"`
	AnswerGrace      Duration `json:"answerGrace"`
	// CanaryMisses in a row (each already older than the canary's max lag) are degraded.
	CanaryMisses int `json:"canaryMisses"`
	// MinQueries: a replica's rcode ratios (1 s window) are judged only when it and its
	// peers together had this many queries each (R12).
	MinQueries int `json:"minQueries"`
	// ErrorMargin: an error rcode (SERVFAIL, REFUSED, NOTIMP, FORMERR, or no reply) fails
	// the internal view when its ratio is above the peers' by more than this and the excess
	// is significant (p < 0.001, R12).
	ErrorMargin float64 `json:"errorMargin"`
	// NXDomainMargin: the 1 s NXDOMAIN ratio above the peers' by more than this (and
	// significant) is a suspicion only: one client's storm is not the replica's fault.
	NXDomainMargin float64 `json:"nxdomainMargin"`
	// PulseFailures in a row (unreachable) mean the internal view is gone.
	PulseFailures int `json:"pulseFailures"`
	// GlobalSettle: after a global failure ends, no replica is degraded on failing probes
	// for this long (the last to recover is not worse than its peers, only later).
	GlobalSettle Duration `json:"globalSettle"`
	// GlobalAfter: every ready replica must be failing this long for the global state.
	GlobalAfter Duration `json:"globalAfter"`
	// BrokenCheckAfter: a check answered wrong the same way by every ready replica this
	// long is reported as misconfigured and left out of the judgment (R13).
	BrokenCheckAfter Duration `json:"brokenCheckAfter"`
}

// DefaultThresholds are the thresholds used when the config file sets none.
func DefaultThresholds() Thresholds {
	return Thresholds{
		RecentProbes:     5,
		Window:           D(time.Second),
		MinFailures:      2,
		MinFailSpan:      D(80 * time.Millisecond),
		RecoverSuccesses: 3,
		LatencyMargin:    D(40 * time.Millisecond),
		LatencyFactor:    3,
		AnswerMismatches: 3,
		AnswerGrace:      D(40 * time.Millisecond),
		CanaryMisses:     2,
		MinQueries:       20,
		ErrorMargin:      0.05,
		NXDomainMargin:   0.3,
		PulseFailures:    1,
		GlobalSettle:     D(time.Second),
		GlobalAfter:      D(300 * time.Millisecond),
		BrokenCheckAfter: D(30 * time.Second),
	}
}

// validate returns every bad value, each named by its key after prefix.
func (t Thresholds) validate(prefix string) []string {
	var errs []string
	bad := func(key, why string) { errs = append(errs, prefix+key+": "+why) }
	for _, c := range []struct {
		key    string
		v, min int
	}{
		{"recoverSuccesses", t.RecoverSuccesses, 1}, {"answerMismatches", t.AnswerMismatches, 1},
		{"canaryMisses", t.CanaryMisses, 1}, {"pulseFailures", t.PulseFailures, 1}, {"minQueries", t.MinQueries, 1},
	} {
		if c.v < c.min {
			bad(c.key, fmt.Sprintf("must be >= %d", c.min))
		}
	}
	for _, c := range []struct {
		key         string
		v, min, max float64
	}{
		{"latencyFactor", t.LatencyFactor, 1, math.Inf(1)}, {"errorMargin", t.ErrorMargin, 0, 1},
		{"nxdomainMargin", t.NXDomainMargin, 0, 1},
	} {
		if !(c.v >= c.min && c.v <= c.max) {
			bad(c.key, fmt.Sprintf("must be in [%v,%v]", c.min, c.max))
		}
	}
	for _, c := range []struct {
		key     string
		v       Duration
		nonZero bool
	}{
		{"window", t.Window, true}, {"latencyMargin", t.LatencyMargin, true},
		{"answerGrace", t.AnswerGrace, false}, {"globalSettle", t.GlobalSettle, false}, {"globalAfter", t.GlobalAfter, false},
		{"minFailSpan", t.MinFailSpan, false}, {"brokenCheckAfter", t.BrokenCheckAfter, true},
	} {
		if c.v < 0 || c.nonZero && c.v == 0 {
			bad(c.key, map[bool]string{true: "must be > 0", false: "must be >= 0"}[c.nonZero])
		}
	}
	if t.RecentProbes < 1 || t.RecentProbes > MaxRecentProbes {
		bad("recentProbes", fmt.Sprintf("must be in [1,%d]", MaxRecentProbes))
	}
	if t.MinFailures < 1 || t.MinFailures > t.RecentProbes {
		bad("minFailures", "must be in [1,recentProbes]")
	}
	return errs
}

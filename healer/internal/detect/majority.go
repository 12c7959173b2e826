package detect

import (
	"fmt"
	"strings"
	"time"

	"github.com/dnspulse/dnspulse/healer/internal/probe"
)

// majorityCacheFor is how long a counted majority is reused while answers agree with it.
const majorityCacheFor = 10 * time.Millisecond

type majorityCache struct {
	key      string
	count, n int
	at       time.Time
}

// observeAnswer compares a replica's answer with the majority of every ready replica's
// latest answer to the same check, answers older than the window left out (R2). The
// majority is cached for a few milliseconds while answers agree with it: recounting it on
// every result would cost O(replicas) per probe.
func (d *Detector) observeAnswer(r *evidence, res probe.Result) {
	r.answers[res.Check] = answerObs{key: res.AnswerKey, at: res.Sent}
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
		if r.mismatches() == 0 {
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

func (d *Detector) countMajority(mc *majorityCache, check int, now time.Time) {
	counts := map[string]int{}
	n := 0
	for _, p := range d.replicas {
		a, ok := p.answers[check]
		if !ok || !p.target.Ready || now.Sub(a.at) > d.th.Window.D() {
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

// mismatches is the longest run of answers differing from the majority, over the checks.
func (r *evidence) mismatches() int {
	m := 0
	for _, c := range r.mismatch {
		m = max(m, c)
	}
	return m
}

func oneLine(key string) string { return strings.ReplaceAll(key, "\n", "; ") }

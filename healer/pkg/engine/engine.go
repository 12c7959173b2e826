// Package engine wires the healer's data flow: discovery -> probes (external view) and
// heartbeat reader (internal view) -> detector -> guards -> remediator and notifier, with
// every decision in the audit log and the metrics. It knows modes (static, Kubernetes)
// only through the interfaces of package replica.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/dnspulse/dnspulse/healer/pkg/audit"
	"github.com/dnspulse/dnspulse/healer/pkg/detect"
	"github.com/dnspulse/dnspulse/healer/pkg/metrics"
	"github.com/dnspulse/dnspulse/healer/pkg/probe"
	"github.com/dnspulse/dnspulse/healer/pkg/pulsereader"
	"github.com/dnspulse/dnspulse/healer/pkg/replica"
)

// LeaderGate says whether this healer may act (Kubernetes leader election).
type LeaderGate interface {
	IsLeader() bool
}

// Mode is what a mode plugs into the engine. Kubernetes mode builds it from kube.New;
// static mode from package static.
type Mode struct {
	Name       string
	Discovery  replica.Discovery
	Remediator replica.Remediator
	Notifier   replica.Notifier
	// Freshness is the canary, nil when there is none.
	Freshness replica.FreshnessSource
	// Leader is nil when this healer always acts (static mode).
	Leader LeaderGate
	// Run, when set, runs the mode's own background work (informers, leader election,
	// canary rotation) until ctx ends; an error stops the healer.
	Run func(ctx context.Context) error
}

// Config is the engine's configuration, built from options.Options by the command.
type Config struct {
	Probe     probe.Config
	Pulse     pulsereader.Config
	Detect    detect.Thresholds
	Guards    GuardConfig
	DryRun    bool
	Audit     *audit.Log
	Metrics   *metrics.Metrics
	Server    *metrics.Server // may be nil
	Logger    *slog.Logger
	Now       func() time.Time
	SyncEvery time.Duration // how often the discovered set is re-read (default 250ms)
}

// Engine runs the healer.
type Engine struct {
	cfg  Config
	mode Mode
	log  *slog.Logger
	now  func() time.Time

	det       *detect.Detector
	probes    *probe.Pool
	pulses    *pulsereader.Pool
	guards    *guards
	targets   []replica.Target
	byName    map[string]replica.Target
	refused   map[string]string // guard whose refusal is already recorded in this episode
	reasons   map[string][]string
	degraded  map[string]time.Time // since when each degraded replica is
	readyAt   map[string]time.Time // when each replica was first seen Ready here
	boosted   map[string]time.Time // replicas probed faster, until when
	globalSet []string
	outcomes  chan outcome
	probeCh   chan probe.Result
	pulseCh   chan pulsereader.Result
}

// SkippedProbes counts probes not sent because of the qps cap or the in-flight bound.
func (e *Engine) SkippedProbes() uint64 {
	if e == nil {
		return 0
	}
	return e.probes.Skipped.Load()
}

type outcome struct {
	target replica.Target
	out    replica.Outcome
	dryRun bool
}

// New checks the mode and builds the engine.
func New(cfg Config, mode Mode) (*Engine, error) {
	if mode.Discovery == nil || mode.Remediator == nil {
		return nil, errors.New("engine: mode without discovery or remediator")
	}
	if mode.Notifier == nil {
		mode.Notifier = nopNotifier{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.SyncEvery <= 0 {
		cfg.SyncEvery = 250 * time.Millisecond
	}
	cfg.Probe.Freshness = mode.Freshness
	probeCh := make(chan probe.Result, 1024)
	pulseCh := make(chan pulsereader.Result, 256)
	probes := probe.NewPool(cfg.Probe, probeCh)
	return &Engine{
		cfg: cfg, mode: mode, log: cfg.Logger, now: cfg.Now,
		probeCh: probeCh, pulseCh: pulseCh, probes: probes,
		pulses:   pulsereader.NewPool(cfg.Pulse, pulseCh),
		det:      detect.New(cfg.Detect, probes.Checks()),
		guards:   newGuards(cfg.Guards),
		byName:   map[string]replica.Target{},
		refused:  map[string]string{},
		reasons:  map[string][]string{},
		degraded: map[string]time.Time{},
		boosted:  map[string]time.Time{},
		outcomes: make(chan outcome, 1),
	}, nil
}

type nopNotifier struct{}

func (nopNotifier) Notify(replica.Target, string, string, string) {}

// boostFor is how long a suspect replica is probed and polled faster.
const boostFor = 500 * time.Millisecond

// minEvalGap bounds how often the detector judges every replica: results arriving
// closer together are judged together (it costs at most this much detection latency).
const minEvalGap = 4 * time.Millisecond

// Run runs until ctx ends. It returns an error only when something cannot start or the
// mode fails.
func (e *Engine) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 3)
	if e.mode.Run != nil {
		go func() {
			if err := e.mode.Run(ctx); err != nil {
				errc <- fmt.Errorf("%s mode: %w", e.mode.Name, err)
			}
		}()
	}
	if e.cfg.Server != nil {
		go func() {
			if err := e.cfg.Server.Serve(ctx); err != nil {
				errc <- fmt.Errorf("--metrics-addr: %w", err)
			}
		}()
	}
	ready := make(chan struct{})
	go func() {
		if err := e.mode.Discovery.Run(ctx, ready); err != nil && ctx.Err() == nil {
			errc <- fmt.Errorf("discovery: %w", err)
		}
	}()
	select {
	case <-ready:
	case err := <-errc:
		return err
	case <-ctx.Done():
		return nil
	}
	if e.cfg.Server != nil {
		e.cfg.Server.Ready.Store(true)
	}

	probeCh, pulseCh := e.probeCh, e.pulseCh
	e.cfg.Audit.Event("start", "healer started", map[string]any{
		"mode": e.mode.Name, "dryRun": e.cfg.DryRun, "checks": checkNames(e.probes.Checks()),
	})
	e.sync(ctx)

	syncTicker := time.NewTicker(e.cfg.SyncEvery)
	defer syncTicker.Stop()
	// A steady evaluation also judges replicas whose results stopped coming.
	evalTicker := time.NewTicker(max(e.cfg.Probe.Interval, 10*time.Millisecond))
	defer evalTicker.Stop()
	evalTimer := time.NewTimer(time.Hour)
	evalTimer.Stop()
	timerArmed := false
	var lastEval time.Time
	evaluate := func() {
		lastEval = e.now()
		e.evaluate(ctx, lastEval)
	}
	soon := func() {
		if since := e.now().Sub(lastEval); since >= minEvalGap {
			evaluate()
		} else if !timerArmed {
			evalTimer.Reset(minEvalGap - since)
			timerArmed = true
		}
	}
	for {
		select {
		case <-ctx.Done():
			e.cfg.Audit.Event("stop", "healer stopping", nil)
			return nil
		case err := <-errc:
			return err
		case r := <-probeCh:
			e.observeProbe(r)
			soon()
		case r := <-pulseCh:
			e.observePulse(r)
			soon()
		case <-evalTimer.C:
			timerArmed = false
			evaluate()
		case <-evalTicker.C:
			evaluate()
		case <-syncTicker.C:
			e.sync(ctx)
		case o := <-e.outcomes:
			e.finish(ctx, o)
		}
	}
}

func checkNames(cs []probe.Check) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.String()
	}
	return out
}

func (e *Engine) observeProbe(r probe.Result) {
	m := e.cfg.Metrics
	result := "ok"
	switch {
	case r.Late:
		result = "late"
	case r.Timeout:
		result = "timeout"
	case r.Err != nil:
		result = "error"
	case r.Failure != "":
		result = "failure"
	}
	m.Probes.WithLabelValues(r.Replica, result).Inc()
	if r.Err == nil {
		m.ProbeLatency.WithLabelValues(r.Replica).Observe(r.Latency.Seconds())
	}
	e.det.ObserveProbe(r)
}

func (e *Engine) observePulse(r pulsereader.Result) {
	e.cfg.Metrics.Pulses.WithLabelValues(r.Replica, r.Kind.String()).Inc()
	if r.Kind == pulsereader.Invalid {
		e.cfg.Metrics.HeartbeatInvalid.WithLabelValues(r.Replica).Inc()
	}
	e.det.ObservePulse(r)
}

// sync re-reads the discovered replicas and follows their changes.
func (e *Engine) sync(ctx context.Context) {
	ts := e.mode.Discovery.Targets()
	if slices.Equal(ts, e.targets) {
		return
	}
	// readyAt is when each replica was first seen Ready: a replica is "fresh" for --warm-up
	// after that, and a readiness flap later does not make it fresh again.
	now := e.now()
	readyAt := make(map[string]time.Time, len(ts))
	for _, t := range ts {
		if at, ok := e.readyAt[t.Name]; ok {
			readyAt[t.Name] = at
		} else if t.Ready {
			readyAt[t.Name] = now
		}
	}
	e.readyAt = readyAt
	for _, old := range e.targets {
		if !slices.ContainsFunc(ts, func(t replica.Target) bool { return t.Name == old.Name }) {
			e.cfg.Metrics.Forget(old.Name)
			e.cfg.Audit.Event("replica-gone", old.Name, map[string]any{"replica": old.Name})
			delete(e.refused, old.Name)
		}
	}
	for _, t := range ts {
		if _, ok := e.byName[t.Name]; !ok {
			e.cfg.Audit.Event("replica", t.Name, map[string]any{
				"replica": t.Name, "dns": t.DNSAddr, "pulse": t.PulseAddr, "ready": t.Ready, "remediable": t.Remediable, "why": t.Why,
			})
			e.cfg.Metrics.SetState(t.Name, string(detect.Unknown))
		}
	}
	e.targets = ts
	e.byName = make(map[string]replica.Target, len(ts))
	for _, t := range ts {
		e.byName[t.Name] = t
	}
	e.det.SetTargets(ts)
	e.probes.Sync(ctx, ts)
	e.pulses.Sync(ctx, ts)
	// The qps cap skips probes rather than delaying them: say so when the schedule asks for
	// more, since every replica is then probed less often than --probe-interval.
	if pc := e.cfg.Probe; pc.Interval > 0 && pc.MaxQPS > 0 {
		want := float64(len(ts)*len(e.probes.Checks())) / pc.Interval.Seconds()
		if want > pc.MaxQPS {
			msg := fmt.Sprintf("%d replicas x %d checks every %s want %.0f probes/s, above --max-probe-qps %.0f: probes will be skipped",
				len(ts), len(e.probes.Checks()), pc.Interval, want, pc.MaxQPS)
			e.log.Warn(msg)
			e.cfg.Audit.Event("probe-qps-cap", msg, nil)
		}
	}
}

func (e *Engine) evaluate(ctx context.Context, now time.Time) {
	for _, tr := range e.det.Evaluate(now) {
		var detection time.Duration
		if (tr.To == detect.Degraded || tr.To == detect.Global) && !tr.Since.IsZero() {
			detection = tr.At.Sub(tr.Since)
			if tr.To == detect.Degraded {
				e.cfg.Metrics.DetectionLatency.Observe(detection.Seconds())
			}
		}
		e.cfg.Audit.StateChange(tr.At, tr.Replica, string(tr.From), string(tr.To), tr.Reasons, detection)
		e.cfg.Metrics.Transitions.WithLabelValues(string(tr.From), string(tr.To)).Inc()
		e.cfg.Metrics.SetState(tr.Replica, string(tr.To))
		e.log.Info("replica state", "replica", tr.Replica, "from", tr.From, "to", tr.To, "reasons", tr.Reasons)
		t := e.byName[tr.Replica]
		if (tr.To == detect.Suspect || tr.To == detect.Degraded) && e.mayBoost(tr.Replica, tr.At) {
			// Sharper evidence, sooner: confirm or clear the suspicion at 4x the rate.
			e.probes.Boost(tr.Replica, boostFor)
			e.pulses.Boost(tr.Replica, boostFor)
		}
		switch tr.To {
		case detect.Degraded:
			e.reasons[tr.Replica] = tr.Reasons
			e.degraded[tr.Replica] = tr.At
			e.mode.Notifier.Notify(t, "Warning", "ReplicaDegraded", strings.Join(tr.Reasons, "; "))
		case detect.Global:
			e.mode.Notifier.Notify(t, "Warning", "GlobalDNSFailure", strings.Join(tr.Reasons, "; "))
		}
		if tr.From == detect.Degraded {
			delete(e.degraded, tr.Replica)
			delete(e.refused, tr.Replica)
			e.guards.forget(tr.Replica)
		}
	}
	e.global()
	e.remediate(ctx, now)
}

// mayBoost bounds the replicas probed faster at once (a tenth of them, at least two), so
// that a noisy fleet cannot multiply the healer's load (and its own noise) by four.
func (e *Engine) mayBoost(name string, now time.Time) bool {
	active := 0
	for n, until := range e.boosted {
		if now.After(until) {
			delete(e.boosted, n)
		} else if n != name {
			active++
		}
	}
	if active >= max(2, len(e.targets)/10) {
		return false
	}
	e.boosted[name] = now.Add(boostFor)
	return true
}

// global writes one "global" line when every replica starts failing together, and one
// when that ends: the alert, since no replica is evicted for it.
func (e *Engine) global() {
	var set []string
	var reasons []string
	for _, t := range e.targets {
		if e.det.State(t.Name) == detect.Global {
			set = append(set, t.Name)
		}
	}
	if slices.Equal(set, e.globalSet) {
		return
	}
	if len(set) > 0 && len(e.globalSet) == 0 {
		reasons = []string{"every ready replica failing at once: alert only, no remediation"}
		e.cfg.Audit.GlobalChange(true, set, reasons)
		e.log.Warn("global DNS failure: every replica failing; no remediation", "replicas", set)
	} else if len(set) == 0 {
		e.cfg.Audit.GlobalChange(false, e.globalSet, []string{"global failure over"})
	}
	e.globalSet = set
}

// remediate acts on at most one degraded replica, if the guards allow.
func (e *Engine) remediate(ctx context.Context, now time.Time) {
	if e.mode.Leader != nil && !e.mode.Leader.IsLeader() {
		return // followers judge (and log verdicts) but never act
	}
	states := e.det.States()
	for _, t := range e.targets {
		if states[t.Name] != detect.Degraded {
			continue
		}
		v := e.guards.check(now, e.degraded[t.Name], e.readyAt[t.Name], t, states, e.targets)
		if v.wait {
			continue
		}
		if !v.act {
			if e.refused[t.Name] != v.guard {
				e.refused[t.Name] = v.guard
				e.cfg.Audit.Remediated(t.Name, "none", e.cfg.DryRun, "refused", v.why)
				e.cfg.Metrics.Remediations.WithLabelValues("none", "refused").Inc()
				e.mode.Notifier.Notify(t, "Warning", "RemediationSkipped", v.why)
			}
			continue
		}
		e.guards.start(t.Name)
		reasons := e.reasonsOf(t.Name)
		dryRun := e.cfg.DryRun
		go func() {
			o := e.mode.Remediator.Remediate(ctx, t, reasons, dryRun)
			select {
			case e.outcomes <- outcome{target: t, out: o, dryRun: dryRun}:
			case <-ctx.Done():
			}
		}()
		return // one remediation in flight
	}
}

func (e *Engine) reasonsOf(name string) []string {
	if r := e.reasons[name]; len(r) > 0 {
		return slices.Clone(r)
	}
	return []string{"degraded"}
}

func (e *Engine) finish(_ context.Context, o outcome) {
	now := e.now()
	e.guards.done(now, o.target.Name, o.out)
	action := o.out.Action
	if action == "" {
		action = "none"
	}
	e.cfg.Audit.Remediated(o.target.Name, action, o.dryRun, o.out.Result, o.out.Message)
	e.cfg.Metrics.Remediations.WithLabelValues(action, o.out.Result).Inc()
	e.log.Info("remediation", "replica", o.target.Name, "action", action, "dryRun", o.dryRun, "result", o.out.Result, "message", o.out.Message)
}

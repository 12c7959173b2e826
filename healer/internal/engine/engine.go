// Package engine wires the healer's data flow: discovery -> probes (external view) and
// heartbeat reader (internal view) -> detector -> guards -> remediator and notifier, with
// every decision in the audit log and the metrics. It knows modes (static, Kubernetes)
// only through the interfaces of package replica.
//
// Files: engine.go is the loop, replicas.go what the engine keeps per replica and how it
// follows discovery, act.go what it does with judgments, guards.go whether an action is
// safe.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/dnspulse/dnspulse/healer/api"
	"github.com/dnspulse/dnspulse/healer/audit"
	"github.com/dnspulse/dnspulse/healer/internal/check"
	"github.com/dnspulse/dnspulse/healer/internal/config"
	"github.com/dnspulse/dnspulse/healer/internal/detect"
	"github.com/dnspulse/dnspulse/healer/internal/hbreader"
	"github.com/dnspulse/dnspulse/healer/internal/metrics"
	"github.com/dnspulse/dnspulse/healer/internal/probe"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
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
	// Drainer, when set, drains a replica before its eviction (the readiness gate).
	Drainer replica.Drainer
	// Memory keeps the guards' memory for any leader; nil keeps it in the process.
	Memory replica.MemoryStore
	// Run, when set, runs the mode's own background work (informers, leader election,
	// canary rotation) until ctx ends; an error stops the healer.
	Run func(ctx context.Context) error
}

// Config is what the engine is handed: the configuration's sections and its outputs.
type Config struct {
	Checks     []check.Check
	Probe      config.Probe
	Heartbeat  config.Heartbeat
	Thresholds config.Thresholds
	Guards     config.Guards
	Audit      *audit.Log
	Metrics    *metrics.Metrics
	Server     *metrics.Server // may be nil
	Logger     *slog.Logger
	Now        func() time.Time
	SyncEvery  time.Duration // how often the discovered set is re-read (default 250ms)
}

// Engine runs the healer.
type Engine struct {
	cfg  Config
	mode Mode
	log  *slog.Logger
	now  func() time.Time

	det    *detect.Detector
	probes *probe.Pool
	reads  *hbreader.Pool
	guards *guards

	replicas  map[string]*replicaState
	order     []*replicaState // by name, as discovery lists them
	inState   map[api.State]int
	globalSet []string
	drainer   replica.Drainer

	// memoryState: whether the guards' memory is loaded for the current leadership.
	memoryState memoryState
	memoryCh    chan memoryLoad
	memoryOut   memoryWriter

	outcomes chan op
	// The batches taken from the views' mailboxes, handed back at the next take.
	probeBuf []probe.Result
	readBuf  []hbreader.Result
	// boosts are the replicas probed and read faster, in the order their boosts end
	// (mayBoost): how many are boosted is known without a pass over the fleet.
	boosts  []boost
	boosted int
}

// SkippedProbes counts probes not sent because of the qps cap or the in-flight bound.
func (e *Engine) SkippedProbes() uint64 {
	if e == nil {
		return 0
	}
	return e.probes.Skipped.Load()
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
	probes, err := probe.NewPool(cfg.Probe, cfg.Checks, mode.Freshness)
	if err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	return &Engine{
		cfg: cfg, mode: mode, log: cfg.Logger, now: cfg.Now,
		probes:   probes,
		reads:    hbreader.NewPool(cfg.Heartbeat),
		det:      detect.New(cfg.Thresholds, probes.Checks(), cfg.Guards.WarmUp.D()),
		guards:   newGuards(cfg.Guards),
		replicas: map[string]*replicaState{},
		inState:  map[api.State]int{},
		drainer:  mode.Drainer,
		outcomes: make(chan op, 1),
		memoryCh: make(chan memoryLoad, 1),
	}, nil
}

type nopNotifier struct{}

func (nopNotifier) Notify(replica.Target, api.Reason, string) {}
func (nopNotifier) NotifyHealer(api.Reason, string)           {}

// minEvalGap bounds how often the detector judges the replicas: results arriving closer
// together are taken and judged together (it costs at most this much detection latency).
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

	e.cfg.Audit.Info(audit.EventStart, "healer started", map[string]any{
		"mode": e.mode.Name, "dryRun": e.cfg.Guards.DryRun, "checks": checkNames(e.probes.Checks()),
	})
	e.sync(ctx)

	syncTicker := time.NewTicker(e.cfg.SyncEvery)
	defer syncTicker.Stop()
	// A steady evaluation also judges replicas whose results stopped coming.
	evalTicker := time.NewTicker(max(e.cfg.Probe.Interval.D(), 10*time.Millisecond))
	defer evalTicker.Stop()
	evalTimer := time.NewTimer(time.Hour)
	evalTimer.Stop()
	// The views' results are taken and judged together, at most every minEvalGap: a result
	// that arrives sooner after the last judgment waits in its mailbox, and the engine stops
	// listening to the mailboxes until then. A fleet's results then cost the engine a
	// wake-up per judgment, not one per result (at 1,000 replicas, 20,000 stream lines and
	// 1,000 probe batches a second), and the probes and readers never wait for it.
	probeReady, readReady := e.probes.Results.Ready(), e.reads.Results.Ready()
	var lastEval time.Time
	evaluate := func() {
		e.probeBuf = e.probes.Results.Take(e.probeBuf)
		for i := range e.probeBuf {
			e.observeProbe(&e.probeBuf[i])
		}
		e.readBuf = e.reads.Results.Take(e.readBuf)
		for i := range e.readBuf {
			e.observeHeartbeat(&e.readBuf[i])
		}
		lastEval = e.now()
		e.evaluate(ctx, lastEval)
	}
	soon := func() {
		if since := e.now().Sub(lastEval); since >= minEvalGap {
			evaluate()
			return
		}
		if probeReady != nil {
			evalTimer.Reset(minEvalGap - e.now().Sub(lastEval))
			probeReady, readReady = nil, nil
		}
	}
	for {
		select {
		case <-ctx.Done():
			e.cfg.Audit.Info(audit.EventStop, "healer stopping", nil)
			return nil
		case err := <-errc:
			return err
		case <-probeReady:
			soon()
		case <-readReady:
			soon()
		case <-evalTimer.C:
			probeReady, readReady = e.probes.Results.Ready(), e.reads.Results.Ready()
			evaluate()
		case <-evalTicker.C:
			evaluate()
		case <-syncTicker.C:
			e.sync(ctx)
		case o := <-e.outcomes:
			e.finish(ctx, o)
		case l := <-e.memoryCh:
			e.memoryLoaded(l)
		}
	}
}

func checkNames(cs []check.Check) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.String()
	}
	return out
}

func (e *Engine) observeProbe(r *probe.Result) {
	if rs := e.replicas[r.Replica]; rs != nil {
		rs.metrics.probe(e.cfg.Metrics, r)
	}
	e.det.ObserveProbe(*r)
}

func (e *Engine) observeHeartbeat(r *hbreader.Result) {
	if rs := e.replicas[r.Replica]; rs != nil {
		rs.metrics.heartbeat(e.cfg.Metrics, r)
	}
	e.det.ObserveHeartbeat(*r)
}

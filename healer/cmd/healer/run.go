package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/spf13/pflag"

	"github.com/dnspulse/dnspulse/healer/audit"
	"github.com/dnspulse/dnspulse/healer/internal/config"
	"github.com/dnspulse/dnspulse/healer/internal/engine"
	"github.com/dnspulse/dnspulse/healer/internal/kube"
	"github.com/dnspulse/dnspulse/healer/internal/metrics"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
	"github.com/dnspulse/dnspulse/healer/internal/static"
	"github.com/dnspulse/dnspulse/healer/version"
)

// run is the whole command: parse, validate, build the mode and the engine, run until ctx
// ends. It returns the exit code: 0 after a clean shutdown, 2 for bad flags, 1 otherwise.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, _, err := config.Parse(args, stderr)
	switch {
	case errors.Is(err, pflag.ErrHelp):
		return 0
	case errors.Is(err, config.ErrFlags):
		return 2 // pflag has said why, with the usage
	}
	if cfg != nil && cfg.Version {
		fmt.Fprintf(stdout, "healer %s\n", version.Version)
		return 0
	}
	if verr := cfg.Validate(); verr != nil {
		err = errors.Join(err, verr)
	}
	if err != nil {
		fmt.Fprintf(stderr, "healer: invalid configuration:\n%v\n", err)
		return 2
	}

	logger := slog.New(slog.NewTextHandler(stderr, nil)).With("version", version.Version)
	auditLog, err := audit.Open(cfg.AuditLog)
	if err != nil {
		logger.Error("cannot open the audit log", "err", err)
		return 1
	}
	defer auditLog.Close()

	var mode engine.Mode
	if cfg.IsStatic() {
		mode = staticMode(cfg)
	} else {
		mode, err = kubernetesMode(ctx, cfg, auditLog, logger)
		if err != nil {
			logger.Error("kubernetes mode", "err", err)
			return 1
		}
	}

	// eng is set before its Run starts the metrics server, the only reader.
	var eng *engine.Engine
	m := metrics.New(func() float64 { return float64(eng.SkippedProbes()) })
	var srv *metrics.Server
	if cfg.MetricsAddr != "" {
		srv, err = metrics.Listen(cfg.MetricsAddr, m)
		if err != nil {
			logger.Error("cannot listen", "flag", "--metrics-addr", "err", err)
			return 1
		}
	}
	eng, err = engine.New(engine.Config{
		Checks: cfg.CheckList, Probe: cfg.Probe, Heartbeat: cfg.Heartbeat, Thresholds: cfg.Thresholds, Guards: cfg.Guards,
		Audit: auditLog, Metrics: m, Server: srv, Logger: logger,
	}, mode)
	if err != nil {
		logger.Error("engine", "err", err)
		return 1
	}
	if cfg.PprofAddr != "" {
		if err := listenPprof(ctx, cfg.PprofAddr, logger); err != nil {
			logger.Error("cannot listen", "flag", "--pprof-addr", "err", err)
			return 1
		}
	}
	logger.Info("healer starting", "mode", mode.Name, "dryRun", cfg.Guards.DryRun, "metrics", cfg.MetricsAddr)
	if err := eng.Run(ctx); err != nil {
		logger.Error("healer stopped", "err", err)
		return 1
	}
	return 0
}

func staticMode(cfg *config.Config) engine.Mode {
	var remediator replica.Remediator = static.None{}
	if e := static.NewExec(cfg.Static.RemediateExec, cfg.Static.RemediateTimeout.D()); e != nil {
		remediator = e
	}
	return engine.Mode{
		Name:       "static",
		Discovery:  static.NewDiscovery(cfg.StaticTargets),
		Remediator: remediator,
		Notifier:   static.Notifier{},
	}
}

// kubernetesMode builds the default mode: replicas are the CoreDNS pods, remediation is
// the Eviction API, the canary checks freshness, and only the leader acts.
func kubernetesMode(ctx context.Context, cfg *config.Config, auditLog *audit.Log, logger *slog.Logger) (engine.Mode, error) {
	m, err := kube.New(ctx, cfg.Kubernetes, kube.Options{
		PulsePort: cfg.Heartbeat.Port,
		Audit:     func(event audit.Event, fields map[string]any) { auditLog.Info(event, "", fields) },
		Logger:    logger,
	})
	if err != nil {
		return engine.Mode{}, err
	}
	return engine.Mode{
		Name:       "kubernetes",
		Discovery:  m.Discovery(),
		Remediator: m.Remediator(),
		Notifier:   m.Notifier(),
		Freshness:  m.Freshness(),
		Leader:     m,
		Drainer:    m.Drainer(),
		Memory:     m.Memory(),
		Run:        m.Run,
	}, nil
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/spf13/pflag"

	"github.com/dnspulse/dnspulse/healer/pkg/audit"
	"github.com/dnspulse/dnspulse/healer/pkg/engine"
	"github.com/dnspulse/dnspulse/healer/pkg/metrics"
	"github.com/dnspulse/dnspulse/healer/pkg/options"
	"github.com/dnspulse/dnspulse/healer/pkg/probe"
	"github.com/dnspulse/dnspulse/healer/pkg/pulsereader"
	"github.com/dnspulse/dnspulse/healer/pkg/replica"
	"github.com/dnspulse/dnspulse/healer/pkg/static"
	"github.com/dnspulse/dnspulse/healer/version"
)

// run is the whole command: parse, validate, build the mode and the engine, run until ctx
// ends. It returns the exit code: 0 after a clean shutdown, 2 for bad flags, 1 otherwise.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	opts := options.New()
	fs := pflag.NewFlagSet("healer", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	opts.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		return 2
	}
	if opts.Version {
		fmt.Fprintf(stdout, "healer %s\n", version.Version)
		return 0
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "healer: unexpected arguments %q\n", fs.Args())
		return 2
	}
	err := opts.Complete(fs)
	if verr := opts.Validate(); verr != nil {
		err = errors.Join(err, verr)
	}
	if err != nil {
		fmt.Fprintf(stderr, "healer: invalid configuration:\n%v\n", err)
		return 2
	}

	logger := slog.New(slog.NewTextHandler(stderr, nil)).With("version", version.Version)
	auditLog, err := audit.Open(opts.AuditLog)
	if err != nil {
		logger.Error("cannot open the audit log", "err", err)
		return 1
	}
	defer auditLog.Close()

	var mode engine.Mode
	if opts.Static() {
		mode = staticMode(opts)
	} else {
		mode, err = kubernetesMode(ctx, opts, auditLog, logger)
		if err != nil {
			logger.Error("kubernetes mode", "err", err)
			return 1
		}
	}

	// eng is set before its Run starts the metrics server, the only reader.
	var eng *engine.Engine
	m := metrics.New(func() float64 { return float64(eng.SkippedProbes()) })
	var srv *metrics.Server
	if opts.MetricsAddr != "" {
		srv, err = metrics.Listen(opts.MetricsAddr, m)
		if err != nil {
			logger.Error("cannot listen", "flag", "--metrics-addr", "err", err)
			return 1
		}
	}
	eng, err = engine.New(engine.Config{
		Probe: probe.Config{
			Checks: opts.CheckSpecs, Interval: opts.ProbeInterval, Timeout: opts.ProbeTimeout,
			MinTimeout: opts.ProbeMinTimeout, MaxQPS: float64(opts.MaxProbeQPS),
		},
		Pulse: pulsereader.Config{
			Interval: opts.PulseInterval, Timeout: opts.PulseTimeout, MinTimeout: opts.PulseMinTimeout,
		},
		Detect: opts.Thresholds,
		Guards: engine.GuardConfig{
			MinAvailable: opts.MinAvailable, MaxDegraded: opts.MaxDegraded,
			Cooldown: opts.Cooldown, GlobalCooldown: opts.GlobalCooldown,
			RetryBackoff: opts.RetryBackoff, RetryBackoffMax: opts.RetryBackoffMax,
			ActAfter: opts.RemediateAfter,
			WarmUp:   opts.WarmUp,
		},
		DryRun:  opts.DryRun,
		Audit:   auditLog,
		Metrics: m,
		Server:  srv,
		Logger:  logger,
	}, mode)
	if err != nil {
		logger.Error("engine", "err", err)
		return 1
	}
	logger.Info("healer starting", "mode", mode.Name, "dryRun", opts.DryRun, "metrics", opts.MetricsAddr)
	if err := eng.Run(ctx); err != nil {
		logger.Error("healer stopped", "err", err)
		return 1
	}
	return 0
}

func staticMode(opts *options.Options) engine.Mode {
	var remediator replica.Remediator = static.None{}
	if e := static.NewExec(opts.RemediateExec, opts.RemediateTimeout); e != nil {
		remediator = e
	}
	return engine.Mode{
		Name:       "static",
		Discovery:  static.NewDiscovery(opts.StaticTargets),
		Remediator: remediator,
		Notifier:   static.Notifier{},
	}
}

package main

import (
	"context"
	"log/slog"

	"github.com/dnspulse/dnspulse/healer/pkg/audit"
	"github.com/dnspulse/dnspulse/healer/pkg/engine"
	"github.com/dnspulse/dnspulse/healer/pkg/kube"
	"github.com/dnspulse/dnspulse/healer/pkg/options"
)

// kubernetesMode builds the default mode: replicas are the CoreDNS pods, remediation is
// the Eviction API, the canary checks freshness, and only the leader acts.
func kubernetesMode(ctx context.Context, opts *options.Options, auditLog *audit.Log, logger *slog.Logger) (engine.Mode, error) {
	m, err := kube.New(ctx, kube.Config{
		Kubeconfig:           opts.Kubeconfig,
		Namespace:            opts.Namespace,
		Selector:             opts.Selector,
		Service:              opts.Service,
		PulsePort:            opts.PulsePort,
		Canary:               opts.Canary,
		CanaryNamespace:      opts.CanaryNamespace,
		CanaryService:        opts.CanaryService,
		CanaryInterval:       opts.CanaryInterval,
		CanaryMaxLag:         opts.CanaryMaxLag,
		ReadinessGate:        opts.ReadinessGate,
		AllowDelete:          opts.AllowDelete,
		LeaderElect:          opts.LeaderElect,
		LeaderElectNamespace: opts.LeaderElectNamespace,
		LeaderElectLease:     opts.LeaderElectLease,
		Audit: func(event string, fields map[string]any) {
			auditLog.Event(event, "", fields)
		},
		Logger: logger,
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
		Run:        m.Run,
	}, nil
}

package kube

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/dnspulse/dnspulse/healer/api"
	"github.com/dnspulse/dnspulse/healer/audit"
	"github.com/dnspulse/dnspulse/healer/internal/config"
)

// leadership says whether this healer leads now; the elector sets it, the parts that act
// (remediator, gate opener, canary) read it right before acting.
type leadership struct{ v atomic.Bool }

// IsLeader implements engine.LeaderGate.
func (l *leadership) IsLeader() bool { return l.v.Load() }

func (l *leadership) set(v bool) bool { return l.v.Swap(v) }

// elector campaigns for the leader Lease until its context ends. While leading, the
// leadership is set and the canary rotates; on losing the lease both stop and the
// campaign starts again.
type elector struct {
	client   kubernetes.Interface
	cfg      config.LeaderElection
	identity string
	leader   *leadership
	canary   *canary // nil: no canary to rotate
	log      *slog.Logger
	audit    AuditFunc
}

func (e *elector) run(ctx context.Context) error {
	ns, name := e.cfg.Namespace, e.cfg.Lease
	ref := ns + "/" + name
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, ns, name,
		e.client.CoreV1(), e.client.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: e.identity})
	if err != nil {
		return fmt.Errorf("leader election lock lease %s: %w", ref, err)
	}
	e.log.Info("leader election: campaigning", "lease", ref, "identity", e.identity)
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   e.cfg.LeaseDuration.D(),
			RenewDeadline:   e.cfg.RenewDeadline.D(),
			RetryPeriod:     e.cfg.RetryPeriod.D(),
			ReleaseOnCancel: true,
			Name:            api.ReportingController,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(lctx context.Context) {
					e.leader.set(true)
					e.log.Info("leader election: leading", "lease", ref, "identity", e.identity)
					e.audit(audit.EventLeader, map[string]any{"identity": e.identity, "leader": true, "lease": ref})
					if e.canary != nil {
						e.canary.rotate(lctx)
					}
				},
				OnStoppedLeading: func() {
					// client-go calls this whenever Run returns, led or not.
					if !e.leader.set(false) {
						return
					}
					e.log.Info("leader election: stopped leading", "lease", ref, "identity", e.identity)
					e.audit(audit.EventLeader, map[string]any{"identity": e.identity, "leader": false, "lease": ref})
				},
				OnNewLeader: func(id string) {
					if id != e.identity {
						e.log.Info("leader election: another healer leads", "lease", ref, "leader", id)
					}
				},
			},
		})
		if err != nil {
			return fmt.Errorf("leader election on lease %s: %w", ref, err)
		}
		le.Run(ctx)
	}
	return nil
}

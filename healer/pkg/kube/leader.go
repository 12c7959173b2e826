package kube

import (
	"context"
	"fmt"
	"time"

	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// Default leader election timings: those of kube-controller-manager.
const (
	leaseDuration = 15 * time.Second
	renewDeadline = 10 * time.Second
	retryPeriod   = 2 * time.Second
)

// runLeaderElection campaigns for the Lease until ctx ends. While leading, IsLeader is true
// and the canary rotates; on losing the lease both stop and the campaign starts again.
func (m *Mode) runLeaderElection(ctx context.Context) error {
	ns, name := m.cfg.LeaderElectNamespace, m.cfg.LeaderElectLease
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, ns, name,
		m.client.CoreV1(), m.client.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: m.identity})
	if err != nil {
		return fmt.Errorf("leader election lock lease %s/%s: %w", ns, name, err)
	}
	m.log.Info("leader election: campaigning", "lease", ns+"/"+name, "identity", m.identity)
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   m.cfg.LeaseDuration,
			RenewDeadline:   m.cfg.RenewDeadline,
			RetryPeriod:     m.cfg.RetryPeriod,
			ReleaseOnCancel: true,
			Name:            ReportingController,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(lctx context.Context) {
					m.leader.Store(true)
					m.log.Info("leader election: leading", "lease", ns+"/"+name, "identity", m.identity)
					m.audit("leader", map[string]any{"identity": m.identity, "leader": true, "lease": ns + "/" + name})
					if m.canary != nil {
						m.canary.rotate(lctx)
					}
				},
				OnStoppedLeading: func() {
					// client-go calls this whenever Run returns, led or not.
					if !m.leader.Swap(false) {
						return
					}
					m.log.Info("leader election: stopped leading", "lease", ns+"/"+name, "identity", m.identity)
					m.audit("leader", map[string]any{"identity": m.identity, "leader": false, "lease": ns + "/" + name})
				},
				OnNewLeader: func(id string) {
					if id != m.identity {
						m.log.Info("leader election: another healer leads", "lease", ns+"/"+name, "leader", id)
					}
				},
			},
		})
		if err != nil {
			return fmt.Errorf("leader election on lease %s/%s: %w", ns, name, err)
		}
		le.Run(ctx)
	}
	return nil
}

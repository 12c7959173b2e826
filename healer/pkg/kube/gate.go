package kube

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// gateResync retries pods whose initial condition could not be set.
const gateResync = 30 * time.Second

// openGates sets dnspulse.io/serving=True on pods that declare the readiness gate and have
// no such condition yet: a pod with a readiness gate is not Ready until someone sets its
// condition, and with --readiness-gate that someone is the healer (the leader). It never
// touches a condition that is already there, so a pod drained for eviction stays drained.
//
// The price of the gate: while no healer leads, new CoreDNS pods that declare it do not
// become Ready. Declare the gate only together with --readiness-gate.
func (m *Mode) openGates(ctx context.Context) {
	t := m.clock.NewTicker(gateResync)
	defer t.Stop()
	warned := map[types.UID]bool{}
	// opened remembers the resourceVersion each pod had when its gate was opened: until the
	// informer shows a newer one, the cache cannot show the condition yet.
	opened := map[types.UID]string{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.discovery.changed:
		case <-t.C():
		}
		for _, p := range m.discovery.cachedPods() {
			if !declaresGate(p) || hasCondition(p, ConditionServing) || p.DeletionTimestamp != nil {
				continue
			}
			if !m.cfg.ReadinessGate {
				if !warned[p.UID] {
					warned[p.UID] = true
					m.log.Warn("pod declares the readiness gate but --readiness-gate is off: it will not become Ready",
						"pod", p.Namespace+"/"+p.Name, "gate", ConditionServing)
				}
				continue
			}
			if !m.IsLeader() {
				continue
			}
			if rv, ok := opened[p.UID]; ok && rv == p.ResourceVersion {
				continue
			}
			err := patchServing(ctx, m, p, corev1.ConditionTrue, "DNSPulseWatching", "dnspulse: the healer watches this replica")
			if err != nil {
				m.log.Warn("opening the readiness gate", "pod", p.Namespace+"/"+p.Name, "err", err)
				continue
			}
			opened[p.UID] = p.ResourceVersion
			m.log.Info("readiness gate opened", "pod", p.Namespace+"/"+p.Name, "condition", ConditionServing)
		}
	}
}

func declaresGate(p *corev1.Pod) bool {
	for _, g := range p.Spec.ReadinessGates {
		if g.ConditionType == ConditionServing {
			return true
		}
	}
	return false
}

func hasCondition(p *corev1.Pod, t corev1.PodConditionType) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == t {
			return true
		}
	}
	return false
}

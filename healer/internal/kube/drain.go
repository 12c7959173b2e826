package kube

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	"github.com/dnspulse/dnspulse/healer/api"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
)

// The condition's reasons: the healer's drain, and the opening of a gate.
const (
	reasonDrained    = "DNSReplicaDegraded"
	reasonUndrained  = "DNSReplicaRecovered"
	reasonReopened   = "DrainAbandoned"
	reasonGateOpened = "DNSPulseWatching"
)

// drainSet holds the pods this healer drained and still means to evict, with when.
type drainSet struct {
	mu sync.Mutex
	m  map[types.UID]time.Time
}

func newDrainSet() *drainSet { return &drainSet{m: map[types.UID]time.Time{}} }

func (s *drainSet) add(uid types.UID, at time.Time) {
	s.mu.Lock()
	s.m[uid] = at
	s.mu.Unlock()
}

func (s *drainSet) forget(uid types.UID) {
	s.mu.Lock()
	delete(s.m, uid)
	s.mu.Unlock()
}

func (s *drainSet) has(uid types.UID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.m[uid]
	return ok
}

// CanEvict implements replica.Drainer: a server-side dry run of the eviction (dryRun=All):
// the apiserver checks everything, the PodDisruptionBudget included, and stores nothing.
func (r *remediator) CanEvict(ctx context.Context, t replica.Target) (bool, string) {
	pod := r.pods.get(t.Name)
	if pod == nil {
		return false, fmt.Sprintf("pod %s/%s is not in the cache", r.namespace, t.Name)
	}
	err := r.evict(ctx, pod, true)
	switch {
	case err == nil:
		return true, "server-side dry run: the eviction would be allowed"
	case apierrors.IsTooManyRequests(err):
		return false, fmt.Sprintf("server-side dry run: a PodDisruptionBudget blocks it now (%v)", err)
	default:
		return false, fmt.Sprintf("server-side dry run failed: %v", err)
	}
}

// Drain implements replica.Drainer: the readiness-gate condition False, so that the Service
// drops the pod at once, while the eviction waits for its proof (G1). Nothing is drained
// that the eviction would not be allowed to replace.
func (r *remediator) Drain(ctx context.Context, t replica.Target, reasons []string) replica.Outcome {
	out := r.drain(ctx, t, reasons)
	r.log.Info("drain", "pod", r.namespace+"/"+t.Name, "result", out.Result, "message", out.Message)
	return out
}

func (r *remediator) drain(ctx context.Context, t replica.Target, reasons []string) replica.Outcome {
	if !r.readinessGate {
		return replica.Outcome{Action: api.ActionDrain, Result: api.ResultRefused, Message: "--readiness-gate is off: nothing to drain with"}
	}
	if !r.leader.IsLeader() {
		return r.notLeader()
	}
	pod, refusal := r.recheckCached(t)
	if refusal != nil {
		refusal.Action = api.ActionDrain
		return *refusal
	}
	if !declaresGate(pod) {
		return replica.Outcome{Action: api.ActionDrain, Result: api.ResultRefused,
			Message: fmt.Sprintf("pod %s/%s does not declare the readiness gate %s", pod.Namespace, pod.Name, api.ConditionServing)}
	}
	admitted, admitWhy := r.admit(ctx, t, pod.UID)
	if !admitted {
		msg := "not drained, not evicted: " + admitWhy
		r.notifier.event(pod, api.ReasonEvictionBlocked, msg)
		return replica.Outcome{Action: api.ActionDrain, Result: api.ResultBlocked, Message: msg}
	}
	if !r.leader.IsLeader() {
		return r.notLeader()
	}
	why := strings.Join(reasons, "; ")
	r.drains.add(pod.UID, time.Now())
	if err := r.gate.set(ctx, pod, corev1.ConditionFalse, reasonDrained, "dnspulse: "+why); err != nil {
		r.drains.forget(pod.UID)
		msg := fmt.Sprintf("setting condition %s=False on pod %s/%s failed: %v", api.ConditionServing, pod.Namespace, pod.Name, err)
		r.notifier.event(pod, api.ReasonReadinessGateFailed, msg)
		return replica.Outcome{Action: api.ActionDrain, Result: api.ResultError, Message: msg}
	}
	r.notifier.event(pod, api.ReasonReadinessGateSet,
		fmt.Sprintf("dnspulse set %s=False so that traffic leaves now; eviction once the fault is confirmed: %s", api.ConditionServing, why))
	return replica.Outcome{Action: api.ActionDrain, Result: api.ResultSuccess,
		Message: fmt.Sprintf("condition %s=False set on pod %s/%s (the eviction admitted: %s)", api.ConditionServing, pod.Namespace, pod.Name, admitWhy)}
}

// Undrain implements replica.Drainer: the condition back to True, the replica serving again
// (it recovered before its eviction, or the evidence was not enough to evict).
func (r *remediator) Undrain(ctx context.Context, t replica.Target, why string) replica.Outcome {
	pod := r.pods.get(t.Name)
	if pod == nil {
		return replica.Outcome{Action: api.ActionUndrain, Result: api.ResultRefused, Message: fmt.Sprintf("pod %s/%s is gone", r.namespace, t.Name)}
	}
	r.drains.forget(pod.UID)
	if !r.leader.IsLeader() {
		return r.notLeader() // the leader's gate opener reopens it
	}
	if err := r.gate.set(ctx, pod, corev1.ConditionTrue, reasonUndrained, "dnspulse: "+why); err != nil {
		return replica.Outcome{Action: api.ActionUndrain, Result: api.ResultError,
			Message: fmt.Sprintf("restoring condition %s=True on pod %s/%s failed: %v (the gate opener retries)", api.ConditionServing, pod.Namespace, pod.Name, err)}
	}
	r.notifier.event(pod, api.ReasonReadinessGateRestored, fmt.Sprintf("dnspulse set %s=True: %s", api.ConditionServing, why))
	return replica.Outcome{Action: api.ActionUndrain, Result: api.ResultSuccess, Message: fmt.Sprintf("condition %s=True restored on pod %s/%s: %s", api.ConditionServing, pod.Namespace, pod.Name, why)}
}

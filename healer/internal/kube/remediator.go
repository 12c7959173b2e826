package kube

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/dnspulse/dnspulse/healer/api"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
)

// evictAttempts and evictRetryGap: a 429 that carries a Retry-After is the apiserver saying
// "not now" rather than the budget saying "no": the pod changed between its read and its
// delete (the kubelet writing its status, the readiness gate just set), or the budget is
// still being processed. Such a 429 is tried again at once, a few times, before it is
// reported blocked. A 429 without Retry-After is the budget's answer (it needs N healthy
// pods and has M) and is reported at the first refusal.
const (
	evictAttempts = 3
	evictRetryGap = 200 * time.Millisecond
)

// remediator evicts one pod at a time. The engine applies the mode-independent guards;
// this applies what only Kubernetes knows: leadership (G11, re-checked here), that the pod
// is still the one the engine judged, ownership, and the PodDisruptionBudget (through the
// Eviction API).
type remediator struct {
	client        kubernetes.Interface
	pods          *podLister
	namespace     string
	leader        *leadership
	leaseRef      string // the leader Lease, for messages
	identity      string
	readinessGate bool
	allowDelete   bool
	gate          *gatePatcher
	notifier      *notifier
	replacements  *replacements
	// baseCtx outlives single remediations: replacement watches run on it.
	baseCtx context.Context
	log     *slog.Logger
	// drains are the pods this healer drained and still means to evict: the gate opener
	// leaves them alone, and reopens any other gate left False.
	drains *drainSet
	// ahead is the eviction's dry run run ahead of a drain (Anticipate).
	ahead anticipation
}

func (r *remediator) Remediate(ctx context.Context, t replica.Target, reasons []string, dryRun bool) replica.Outcome {
	out := r.remediate(ctx, t, reasons, dryRun)
	r.log.Info("remediation", "pod", r.namespace+"/"+t.Name, "action", out.Action, "result", out.Result,
		"dryRun", dryRun, "message", out.Message, "retryAfter", out.RetryAfter)
	return out
}

func (r *remediator) remediate(ctx context.Context, t replica.Target, reasons []string, dryRun bool) replica.Outcome {
	ref := r.namespace + "/" + t.Name
	if !r.leader.IsLeader() {
		return r.notLeader()
	}
	pod, refusal := r.recheck(ctx, t)
	if refusal != nil {
		return *refusal
	}
	owner := metav1.GetControllerOf(pod)
	why := strings.Join(reasons, "; ")
	if dryRun {
		steps := "evict"
		if r.readinessGate {
			steps = "set condition " + api.ConditionServing + "=False, then evict"
		}
		return replica.Outcome{Action: api.ActionEvict, Result: api.ResultDryRun,
			Message: fmt.Sprintf("would %s pod %s (uid %s, controlled by %s %s): %s; %s",
				steps, ref, pod.UID, owner.Kind, owner.Name, why, r.serverDryRun(ctx, pod))}
	}

	var notes []string
	gateSet := false
	if r.readinessGate && declaresGate(pod) && !conditionIs(pod, api.ConditionServing, corev1.ConditionFalse) {
		// Nothing is drained that cannot be evicted: ask the apiserver first (PDB included).
		if ok, why := r.CanEvict(ctx, t); !ok {
			msg := "not drained, not evicted: " + why
			r.notifier.event(pod, api.ReasonEvictionBlocked, msg)
			return replica.Outcome{Action: api.ActionEvict, Result: api.ResultBlocked, Message: msg}
		}
		if !r.leader.IsLeader() {
			return r.notLeader()
		}
		if err := r.gate.set(ctx, pod, corev1.ConditionFalse, reasonDrained, "dnspulse: "+why); err != nil {
			// Draining first is a courtesy; the eviction still ends the pod gracefully.
			notes = append(notes, fmt.Sprintf("setting condition %s=False on pod %s failed: %v", api.ConditionServing, ref, err))
			r.notifier.event(pod, api.ReasonReadinessGateFailed, notes[len(notes)-1])
		} else {
			gateSet = true
			notes = append(notes, fmt.Sprintf("condition %s=False set", api.ConditionServing))
			r.notifier.event(pod, api.ReasonReadinessGateSet,
				fmt.Sprintf("dnspulse set %s=False so that traffic leaves before eviction: %s", api.ConditionServing, why))
		}
	}

	existing := r.pods.ownedBy(owner.UID)
	if !r.leader.IsLeader() { // leadership is re-checked right before every mutating call
		out := r.notLeader()
		if gateSet {
			out.Message += r.restoreGate(ctx, pod, "no longer the leader")
		}
		return out
	}
	out := r.evictAndReport(ctx, pod, owner, existing, notes, why, gateSet)
	if out.Result == api.ResultSuccess {
		r.drains.forget(pod.UID)
	}
	if out.Result != api.ResultSuccess && (gateSet || conditionIs(pod, api.ConditionServing, corev1.ConditionFalse)) {
		// The pod stays: it must not stay drained because of an eviction that did not happen.
		// The next attempt drains it again.
		out.Message += r.restoreGate(ctx, pod, "eviction "+string(out.Result))
	}
	return out
}

// restoreGate sets the condition back to True (the pod is not evicted) and says how it went.
func (r *remediator) restoreGate(ctx context.Context, pod *corev1.Pod, why string) string {
	r.drains.forget(pod.UID)
	if err := r.gate.set(ctx, pod, corev1.ConditionTrue, "EvictionNotDone", "dnspulse: "+why+"; serving again until the next attempt"); err != nil {
		return fmt.Sprintf("; restoring condition %s=True failed: %v (the gate opener retries)", api.ConditionServing, err)
	}
	return fmt.Sprintf("; condition %s=True restored", api.ConditionServing)
}

func (r *remediator) notLeader() replica.Outcome {
	return replica.Outcome{Action: api.ActionNone, Result: api.ResultRefused,
		Message: fmt.Sprintf("not the leader (identity %s): only the leader of lease %s acts", r.identity, r.leaseRef)}
}

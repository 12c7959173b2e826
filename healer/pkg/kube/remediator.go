package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"

	"github.com/dnspulse/dnspulse/healer/pkg/replica"
)

const (
	// blockedBackoffBase and blockedBackoffMax bound the wait after a PDB refusal that
	// carries no Retry-After.
	blockedBackoffBase = 10 * time.Second
	blockedBackoffMax  = 5 * time.Minute
	// replacementTimeout is how long the replacement of an evicted pod is watched.
	replacementTimeout = 10 * time.Minute
)

// remediator evicts one pod at a time. The engine applies the mode-independent guards;
// this applies what only Kubernetes knows: leadership, that the pod is still the one the
// engine judged, ownership, and the PodDisruptionBudget (through the Eviction API).
type remediator struct {
	m *Mode

	mu      sync.Mutex
	blocked map[types.UID]int // consecutive PDB refusals per pod, for exponential backoff
}

func newRemediator(m *Mode) *remediator {
	return &remediator{m: m, blocked: map[types.UID]int{}}
}

func (r *remediator) Remediate(ctx context.Context, t replica.Target, reasons []string, dryRun bool) replica.Outcome {
	out := r.remediate(ctx, t, reasons, dryRun)
	r.m.log.Info("remediation", "pod", r.m.cfg.Namespace+"/"+t.Name, "action", out.Action, "result", out.Result,
		"dryRun", dryRun, "message", out.Message, "retryAfter", out.RetryAfter)
	return out
}

func (r *remediator) remediate(ctx context.Context, t replica.Target, reasons []string, dryRun bool) replica.Outcome {
	ns := r.m.cfg.Namespace
	ref := ns + "/" + t.Name
	if !r.m.IsLeader() {
		return replica.Outcome{Action: "none", Result: "refused",
			Message: fmt.Sprintf("not the leader (identity %s): only the leader of lease %s/%s acts", r.m.identity, r.m.cfg.LeaderElectNamespace, r.m.cfg.LeaderElectLease)}
	}
	pod, refusal := r.recheck(ctx, t)
	if refusal != nil {
		return *refusal
	}
	owner := metav1.GetControllerOf(pod)
	why := strings.Join(reasons, "; ")
	if dryRun {
		steps := "evict"
		if r.m.cfg.ReadinessGate {
			steps = "set condition " + ConditionServing + "=False, then evict"
		}
		return replica.Outcome{Action: "evict", Result: "dry-run",
			Message: fmt.Sprintf("would %s pod %s (uid %s, controlled by %s %s): %s; %s",
				steps, ref, pod.UID, owner.Kind, owner.Name, why, r.serverDryRun(ctx, pod))}
	}

	var notes []string
	gateSet := false
	if r.m.cfg.ReadinessGate {
		if err := r.setServing(ctx, pod, corev1.ConditionFalse, "DNSReplicaDegraded", "dnspulse: "+why); err != nil {
			// Draining first is a courtesy; the eviction still ends the pod gracefully.
			notes = append(notes, fmt.Sprintf("setting condition %s=False on pod %s failed: %v", ConditionServing, ref, err))
			r.m.notifier.event(pod, corev1.EventTypeWarning, "ReadinessGateFailed", "Drain", notes[len(notes)-1])
		} else {
			gateSet = true
			notes = append(notes, fmt.Sprintf("condition %s=False set", ConditionServing))
			r.m.notifier.event(pod, corev1.EventTypeNormal, "ReadinessGateSet", "Drain",
				fmt.Sprintf("dnspulse set %s=False so that traffic leaves before eviction: %s", ConditionServing, why))
		}
	}

	existing := r.m.discovery.ownedPods(owner.UID)
	out := r.evictAndReport(ctx, pod, owner, existing, notes, why)
	if gateSet && out.Result != "success" {
		// The pod stays: it must not stay drained because of an eviction that did not happen.
		// The next attempt drains it again.
		if err := r.setServing(ctx, pod, corev1.ConditionTrue, "EvictionNotDone", "dnspulse: eviction "+out.Result+"; serving again until the next attempt"); err != nil {
			out.Message += fmt.Sprintf("; restoring condition %s=True failed: %v", ConditionServing, err)
		} else {
			out.Message += fmt.Sprintf("; condition %s=True restored", ConditionServing)
		}
	}
	return out
}

func (r *remediator) evictAndReport(ctx context.Context, pod *corev1.Pod, owner *metav1.OwnerReference, existing map[types.UID]bool, notes []string, why string) replica.Outcome {
	ref := pod.Namespace + "/" + pod.Name
	err := r.evict(ctx, pod, false)
	switch {
	case err == nil:
		r.resetBackoff(pod.UID)
		r.m.discovery.watchReplacement(r.m.baseCtx, pod, owner, existing)
		msg := joinNotes(append(notes, fmt.Sprintf("evicted pod %s (uid %s) through the Eviction API; watching for a Ready replacement from %s %s", ref, pod.UID, owner.Kind, owner.Name)))
		r.m.notifier.event(pod, corev1.EventTypeNormal, "Evicted", "Evict", "dnspulse evicted this degraded DNS replica: "+why)
		return replica.Outcome{Action: "evict", Result: "success", Message: msg}

	case apierrors.IsTooManyRequests(err):
		wait := r.backoff(pod.UID, err)
		msg := joinNotes(append(notes, fmt.Sprintf("eviction of pod %s refused by a PodDisruptionBudget (429): %v; retry in %v", ref, err, wait)))
		r.m.notifier.event(pod, corev1.EventTypeWarning, "EvictionBlocked", "Evict", msg)
		return replica.Outcome{Action: "evict", Result: "blocked", Message: msg, RetryAfter: wait}

	case apierrors.IsNotFound(err) || apierrors.IsMethodNotSupported(err):
		return r.evictionUnavailable(ctx, pod, notes, err, why)

	case apierrors.IsConflict(err):
		msg := joinNotes(append(notes, fmt.Sprintf("pod %s changed before the eviction (uid precondition %s failed): %v", ref, pod.UID, err)))
		return replica.Outcome{Action: "evict", Result: "refused", Message: msg}

	default:
		msg := joinNotes(append(notes, fmt.Sprintf("evicting pod %s: %v", ref, err)))
		r.m.notifier.event(pod, corev1.EventTypeWarning, "EvictionFailed", "Evict", msg)
		return replica.Outcome{Action: "evict", Result: "error", Message: msg}
	}
}

// recheck re-reads the pod from the API: between the verdict and now it may have gone,
// been replaced under the same name, or started terminating.
func (r *remediator) recheck(ctx context.Context, t replica.Target) (*corev1.Pod, *replica.Outcome) {
	ns := r.m.cfg.Namespace
	ref := ns + "/" + t.Name
	refuse := func(format string, args ...any) (*corev1.Pod, *replica.Outcome) {
		return nil, &replica.Outcome{Action: "none", Result: "refused", Message: fmt.Sprintf(format, args...)}
	}
	pod, err := r.m.client.CoreV1().Pods(ns).Get(ctx, t.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return refuse("pod %s is gone", ref)
	}
	if err != nil {
		return nil, &replica.Outcome{Action: "none", Result: "error", Message: fmt.Sprintf("reading pod %s: %v", ref, err)}
	}
	if cached := r.m.discovery.pod(t.Name); cached != nil {
		if cached.UID != pod.UID {
			return refuse("pod %s was replaced (judged uid %s, now uid %s)", ref, cached.UID, pod.UID)
		}
		if cached.Status.Phase != pod.Status.Phase {
			return refuse("pod %s changed phase from %s to %s since it was judged", ref, cached.Status.Phase, pod.Status.Phase)
		}
	}
	if host, _, err := net.SplitHostPort(t.DNSAddr); err == nil && host != pod.Status.PodIP {
		return refuse("pod %s now has IP %q, not the judged %s", ref, pod.Status.PodIP, host)
	}
	if pod.DeletionTimestamp != nil {
		return refuse("pod %s is already terminating", ref)
	}
	if pod.Status.Phase != corev1.PodRunning {
		return refuse("pod %s is %s, not Running", ref, pod.Status.Phase)
	}
	if ok, why := remediable(pod); !ok {
		return refuse("pod %s: %s", ref, why)
	}
	return pod, nil
}

// setServing sets the readiness gate condition. The uid in the patch is a precondition:
// the apiserver refuses the patch if the pod was replaced meanwhile.
func (r *remediator) setServing(ctx context.Context, pod *corev1.Pod, status corev1.ConditionStatus, reason, message string) error {
	return patchServing(ctx, r.m, pod, status, reason, message)
}

func patchServing(ctx context.Context, m *Mode, pod *corev1.Pod, status corev1.ConditionStatus, reason, message string) error {
	patch := map[string]any{
		"metadata": map[string]any{"uid": pod.UID},
		"status": map[string]any{
			"conditions": []corev1.PodCondition{{
				Type:               ConditionServing,
				Status:             status,
				Reason:             reason,
				Message:            truncate(message, 1000),
				LastTransitionTime: metav1.NewTime(m.clock.Now()),
			}},
		},
	}
	data, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	_, err = m.client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.StrategicMergePatchType, data, metav1.PatchOptions{}, "status")
	if err != nil {
		return fmt.Errorf("patching pods/status of %s/%s (condition %s=%s): %w", pod.Namespace, pod.Name, ConditionServing, status, err)
	}
	return nil
}

// serverDryRun asks the apiserver whether the eviction would pass (PDB included) without
// evicting anything (dryRun=All), so a dry run tells what a real run would meet.
func (r *remediator) serverDryRun(ctx context.Context, pod *corev1.Pod) string {
	err := r.evict(ctx, pod, true)
	switch {
	case err == nil:
		return "server-side dry run: the eviction would be allowed"
	case apierrors.IsTooManyRequests(err):
		return fmt.Sprintf("server-side dry run: a PodDisruptionBudget would block it now (%v)", err)
	default:
		return fmt.Sprintf("server-side dry run failed: %v", err)
	}
}

// evict posts an Eviction without client-go's retry loop: the typed Evict goes through a
// request whose default MaxRetries (10) silently waits out Retry-After answers, a PDB
// refusal included, for up to ~100 s. A refusal must come back at once so the engine can
// back off, tell the operator, and keep the remediator free.
func (r *remediator) evict(ctx context.Context, pod *corev1.Pod, dryRun bool) error {
	ev := &policyv1.Eviction{
		ObjectMeta:    metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace},
		DeleteOptions: &metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &pod.UID}},
	}
	if dryRun {
		ev.DeleteOptions.DryRun = []string{metav1.DryRunAll}
	}
	if rc, ok := r.m.client.PolicyV1().RESTClient().(*rest.RESTClient); ok && rc != nil {
		return rc.Post().
			AbsPath("/api/v1").
			Namespace(pod.Namespace).
			Resource("pods").
			Name(pod.Name).
			SubResource("eviction").
			Body(ev).
			MaxRetries(0).
			Do(ctx).
			Error()
	}
	// Fake clientsets have no REST client; their Evict has no retry loop either.
	return r.m.client.PolicyV1().Evictions(pod.Namespace).Evict(ctx, ev)
}

// evictionUnavailable handles a 404/405 from the eviction subresource. A 404 may also mean
// the pod vanished, so the pod is looked up again before anything is deleted.
func (r *remediator) evictionUnavailable(ctx context.Context, pod *corev1.Pod, notes []string, evictErr error, why string) replica.Outcome {
	ref := pod.Namespace + "/" + pod.Name
	cur, err := r.m.client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) || (err == nil && cur.UID != pod.UID) {
		return replica.Outcome{Action: "evict", Result: "refused", Message: joinNotes(append(notes, fmt.Sprintf("pod %s went away during the eviction", ref)))}
	}
	if !r.m.cfg.AllowDelete {
		msg := joinNotes(append(notes, fmt.Sprintf("the Eviction API is not available for pod %s (%v) and --allow-delete is off: not deleting", ref, evictErr)))
		r.m.notifier.event(pod, corev1.EventTypeWarning, "EvictionUnavailable", "Evict", msg)
		return replica.Outcome{Action: "evict", Result: "refused", Message: msg}
	}
	existing := r.m.discovery.ownedPods(metav1.GetControllerOf(pod).UID)
	err = r.m.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &pod.UID}})
	if err != nil {
		msg := joinNotes(append(notes, fmt.Sprintf("the Eviction API is not available for pod %s (%v); delete failed: %v", ref, evictErr, err)))
		r.m.notifier.event(pod, corev1.EventTypeWarning, "DeleteFailed", "Delete", msg)
		return replica.Outcome{Action: "delete", Result: "error", Message: msg}
	}
	owner := metav1.GetControllerOf(pod)
	r.m.discovery.watchReplacement(r.m.baseCtx, pod, owner, existing)
	msg := joinNotes(append(notes, fmt.Sprintf("the Eviction API is not available (%v); deleted pod %s (uid %s) as --allow-delete permits; watching for a Ready replacement from %s %s", evictErr, ref, pod.UID, owner.Kind, owner.Name)))
	r.m.notifier.event(pod, corev1.EventTypeNormal, "Deleted", "Delete", "dnspulse deleted this degraded DNS replica (Eviction API unavailable): "+why)
	return replica.Outcome{Action: "delete", Result: "success", Message: msg}
}

// backoff is the wait after a PDB refusal: the server's suggestion when it gives one,
// else exponential per pod.
func (r *remediator) backoff(uid types.UID, err error) time.Duration {
	r.mu.Lock()
	n := r.blocked[uid]
	r.blocked[uid] = n + 1
	r.mu.Unlock()
	if s, ok := apierrors.SuggestsClientDelay(err); ok && s > 0 {
		return time.Duration(s) * time.Second
	}
	d := blockedBackoffBase
	for i := 0; i < n && d < blockedBackoffMax; i++ {
		d *= 2
	}
	return min(d, blockedBackoffMax)
}

func (r *remediator) resetBackoff(uid types.UID) {
	r.mu.Lock()
	delete(r.blocked, uid)
	r.mu.Unlock()
}

func joinNotes(notes []string) string { return strings.Join(notes, "; ") }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

package kube

// The eviction: the pod re-read before it, the Eviction call, its retries, and what its
// errors mean.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"

	"github.com/dnspulse/dnspulse/healer/api"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
)

func (r *remediator) evictAndReport(ctx context.Context, pod *corev1.Pod, owner *metav1.OwnerReference, existing map[types.UID]bool, notes []string, why string, drainedNow bool) replica.Outcome {
	ref := pod.Namespace + "/" + pod.Name
	err := r.evict(ctx, pod, false)
	attempts := 1
	for ; attempts < evictAttempts && ctx.Err() == nil; attempts++ {
		transient := transient429(err)
		// The budget's "no" right after this healer drained the pod is its own drain seen
		// half-way: the pod read as Ready while the disruption controller already counted it
		// out. Once the pod reads NotReady the apiserver takes the unhealthy pod's path
		// (unhealthyPodEvictionPolicy), which the dry run before the drain approved.
		racedDrain := !transient && drainedNow && apierrors.IsTooManyRequests(err) && r.awaitNotReady(ctx, pod)
		if !transient && !racedDrain {
			break
		}
		notes = append(notes, fmt.Sprintf("attempt %d: %s", attempts, statusDetail(err)))
		if transient {
			timer := time.NewTimer(evictRetryGap)
			select {
			case <-ctx.Done():
			case <-timer.C:
			}
			timer.Stop()
		}
		if !r.leader.IsLeader() {
			return r.notLeader()
		}
		err = r.evict(ctx, pod, false)
	}
	switch {
	case err == nil:
		r.replacements.watch(r.baseCtx, pod, owner, existing)
		msg := joinNotes(append(notes, fmt.Sprintf("evicted pod %s (uid %s) through the Eviction API; watching for a Ready replacement from %s %s", ref, pod.UID, owner.Kind, owner.Name)))
		r.notifier.event(pod, api.ReasonEvicted, "dnspulse evicted this degraded DNS replica: "+why)
		return replica.Outcome{Action: api.ActionEvict, Result: api.ResultSuccess, Message: msg}

	case apierrors.IsTooManyRequests(err):
		wait := retryAfter(err)
		msg := joinNotes(append(notes, fmt.Sprintf("eviction of pod %s refused (429, attempt %d): %s; the server asks for %v", ref, attempts, statusDetail(err), wait)))
		r.notifier.event(pod, api.ReasonEvictionBlocked, msg)
		return replica.Outcome{Action: api.ActionEvict, Result: api.ResultBlocked, Message: msg, RetryAfter: wait}

	case apierrors.IsNotFound(err) || apierrors.IsMethodNotSupported(err):
		return r.evictionUnavailable(ctx, pod, notes, err, why)

	case apierrors.IsConflict(err):
		msg := joinNotes(append(notes, fmt.Sprintf("pod %s changed before the eviction (uid precondition %s failed): %v", ref, pod.UID, err)))
		return replica.Outcome{Action: api.ActionEvict, Result: api.ResultRefused, Message: msg}

	default:
		msg := joinNotes(append(notes, fmt.Sprintf("evicting pod %s: %v", ref, err)))
		r.notifier.event(pod, api.ReasonEvictionFailed, msg)
		return replica.Outcome{Action: api.ActionEvict, Result: api.ResultError, Message: msg}
	}
}

// drainSettle bounds the wait for a drained pod to read NotReady (the kubelet recomputes
// Ready from the readiness gate within a second or so).
const drainSettle = 3 * time.Second

// awaitNotReady re-reads pod until it is NotReady (true) or gone, changed, or drainSettle
// passed (false).
func (r *remediator) awaitNotReady(ctx context.Context, pod *corev1.Pod) bool {
	notReady := false
	_ = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, drainSettle, true, func(ctx context.Context) (bool, error) {
		p, err := r.client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			return true, nil // gone: nothing left to evict
		case err != nil:
			return false, nil // an API blip: read again
		case p.UID != pod.UID || p.DeletionTimestamp != nil:
			return true, nil // replaced, or terminating already
		}
		notReady = !podReady(p)
		return notReady, nil
	})
	return notReady
}

// recheck re-reads the pod from the API: between the judgment and now it may have gone,
// been replaced under the same name, or started terminating.
func (r *remediator) recheck(ctx context.Context, t replica.Target) (*corev1.Pod, *replica.Outcome) {
	ref := r.namespace + "/" + t.Name
	pod, err := r.client.CoreV1().Pods(r.namespace).Get(ctx, t.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return refuse("pod %s is gone", ref)
	}
	if err != nil {
		return nil, &replica.Outcome{Action: api.ActionNone, Result: api.ResultError, Message: fmt.Sprintf("reading pod %s: %v", ref, err)}
	}
	return r.vet(pod, r.pods.get(t.Name), t)
}

// recheckCached is recheck from the informer's cache, for a drain: a reversible step whose
// two calls carry their own proof that the pod is still the one judged (the eviction's dry
// run and the condition patch both have the pod's UID as a precondition), so that the
// drain does not wait for one more round trip to the apiserver.
func (r *remediator) recheckCached(t replica.Target) (*corev1.Pod, *replica.Outcome) {
	pod := r.pods.get(t.Name)
	if pod == nil {
		return refuse("pod %s/%s is gone", r.namespace, t.Name)
	}
	return r.vet(pod, nil, t)
}

func refuse(format string, args ...any) (*corev1.Pod, *replica.Outcome) {
	return nil, &replica.Outcome{Action: api.ActionNone, Result: api.ResultRefused, Message: fmt.Sprintf(format, args...)}
}

// vet refuses a pod that is not the one judged (cached: the informer's copy, when pod was
// read from the API), or that may not be acted on now.
func (r *remediator) vet(pod, cached *corev1.Pod, t replica.Target) (*corev1.Pod, *replica.Outcome) {
	ref := r.namespace + "/" + t.Name
	if cached != nil {
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
	if rc, ok := r.client.PolicyV1().RESTClient().(*rest.RESTClient); ok && rc != nil {
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
	return r.client.PolicyV1().Evictions(pod.Namespace).Evict(ctx, ev)
}

// evictionUnavailable handles a 404/405 from the eviction subresource. A 404 may also mean
// the pod vanished, so the pod is looked up again before anything is deleted.
func (r *remediator) evictionUnavailable(ctx context.Context, pod *corev1.Pod, notes []string, evictErr error, why string) replica.Outcome {
	ref := pod.Namespace + "/" + pod.Name
	cur, err := r.client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) || (err == nil && cur.UID != pod.UID) {
		return replica.Outcome{Action: api.ActionEvict, Result: api.ResultRefused, Message: joinNotes(append(notes, fmt.Sprintf("pod %s went away during the eviction", ref)))}
	}
	if !r.allowDelete {
		msg := joinNotes(append(notes, fmt.Sprintf("the Eviction API is not available for pod %s (%v) and --allow-delete is off: not deleting", ref, evictErr)))
		r.notifier.event(pod, api.ReasonEvictionUnavailable, msg)
		return replica.Outcome{Action: api.ActionEvict, Result: api.ResultRefused, Message: msg}
	}
	owner := metav1.GetControllerOf(pod)
	existing := r.pods.ownedBy(owner.UID)
	err = r.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &pod.UID}})
	if err != nil {
		msg := joinNotes(append(notes, fmt.Sprintf("the Eviction API is not available for pod %s (%v); delete failed: %v", ref, evictErr, err)))
		r.notifier.event(pod, api.ReasonDeleteFailed, msg)
		return replica.Outcome{Action: api.ActionDelete, Result: api.ResultError, Message: msg}
	}
	r.replacements.watch(r.baseCtx, pod, owner, existing)
	msg := joinNotes(append(notes, fmt.Sprintf("the Eviction API is not available (%v); deleted pod %s (uid %s) as --allow-delete permits; watching for a Ready replacement from %s %s", evictErr, ref, pod.UID, owner.Kind, owner.Name)))
	r.notifier.event(pod, api.ReasonDeleted, "dnspulse deleted this degraded DNS replica (Eviction API unavailable): "+why)
	return replica.Outcome{Action: api.ActionDelete, Result: api.ResultSuccess, Message: msg}
}

// retryAfter is the wait the server asks for with a refusal (Retry-After), 0 when none:
// the engine waits the longer of it and --retry-backoff.
func retryAfter(err error) time.Duration {
	if s, ok := apierrors.SuggestsClientDelay(err); ok && s > 0 {
		return time.Duration(s) * time.Second
	}
	return 0
}

// transient429 is a 429 the server asks to be retried (see evictAttempts).
func transient429(err error) bool {
	return apierrors.IsTooManyRequests(err) && retryAfter(err) > 0
}

// statusDetail is an API error with the causes the server gave (which PodDisruptionBudget,
// why), which err.Error() leaves out.
func statusDetail(err error) string {
	var st apierrors.APIStatus
	if !errors.As(err, &st) {
		return err.Error()
	}
	s := st.Status()
	out := s.Message
	if s.Details != nil {
		for _, c := range s.Details.Causes {
			out += fmt.Sprintf(" [%s: %s]", c.Type, c.Message)
		}
	}
	return out
}

func joinNotes(notes []string) string { return strings.Join(notes, "; ") }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

package kube

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"

	"github.com/dnspulse/dnspulse/healer/pkg/replica"
)

// notifier records Kubernetes Events (events.k8s.io/v1) on the pods, so that
// `kubectl describe pod` and `kubectl get events` show what the healer saw and did.
type notifier struct {
	recorder  events.EventRecorder
	namespace string
	discovery *discovery
}

// Notify records a verdict or action on the target's pod.
func (n *notifier) Notify(t replica.Target, eventType, reason, message string) {
	pod := n.discovery.pod(t.Name)
	if pod == nil {
		// Gone from the cache: an Event on the name still tells the story.
		pod = &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: t.Name, Namespace: n.namespace}}
	}
	n.event(pod, eventType, reason, actionFor(reason), message)
}

func (n *notifier) event(pod *corev1.Pod, eventType, reason, action, message string) {
	if n.recorder == nil {
		return
	}
	if eventType != corev1.EventTypeNormal && eventType != corev1.EventTypeWarning {
		eventType = corev1.EventTypeWarning
	}
	// events.k8s.io/v1 limits the note to 1 kB.
	n.recorder.Eventf(pod, nil, eventType, reason, action, "%s", truncate(message, 1000))
}

// actionFor names the Event's action (required by events.k8s.io/v1) for the engine's reasons.
func actionFor(reason string) string {
	switch reason {
	case "Evicted", "EvictionBlocked", "EvictionFailed", "EvictionUnavailable":
		return "Evict"
	case "Deleted", "DeleteFailed":
		return "Delete"
	case "ReadinessGateSet", "ReadinessGateFailed":
		return "Drain"
	case "ReplacementReady", "ReplacementNotReady":
		return "Replace"
	default:
		return "Detect"
	}
}

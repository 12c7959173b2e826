package kube

import (
	"log/slog"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"

	"github.com/dnspulse/dnspulse/healer/api"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
)

// notifier records Kubernetes Events (events.k8s.io/v1) on the pods, so that
// `kubectl describe pod` and `kubectl get events` show what the healer saw and did.
type notifier struct {
	recorder  events.EventRecorder
	namespace string
	pods      *podLister
	// self is the healer's own pod ($POD_NAME in $POD_NAMESPACE, from the downward API);
	// nil when unknown: NotifyHealer then only logs.
	self *corev1.Pod
	log  *slog.Logger
}

// NotifyHealer records an event about the healer's configuration on its own pod.
func (n *notifier) NotifyHealer(reason api.Reason, message string) {
	if n.self == nil {
		n.log.Warn("healer event (no $POD_NAME/$POD_NAMESPACE to record it on)", "reason", reason, "message", message)
		return
	}
	n.event(n.self, reason, message)
}

// Notify records a state or an action on the target's pod.
func (n *notifier) Notify(t replica.Target, reason api.Reason, message string) {
	pod := n.pods.get(t.Name)
	if pod == nil {
		// Gone from the cache: an Event on the name still tells the story.
		pod = &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: t.Name, Namespace: n.namespace}}
	}
	n.event(pod, reason, message)
}

func (n *notifier) event(pod *corev1.Pod, reason api.Reason, message string) {
	if n.recorder == nil {
		return
	}
	// events.k8s.io/v1 limits the note to 1 kB.
	n.recorder.Eventf(pod, nil, reason.Type(), string(reason), reason.Action(), "%s", truncate(message, 1000))
}
